"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, with the HTTP status
each kind maps to. Handlers raise APIError; app.py turns it (and anything else) into a response."""

from __future__ import annotations

from pydantic import ValidationError
from starlette.responses import JSONResponse


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def from_validation_error(error: ValidationError) -> APIError:
    """The most telling problem pydantic found, with `param` the dotted path of the offending field:
    a field this server does not implement first, then a value's own limit (an empty stop string,
    a too-long list) over "not this type" mismatches of the other forms of a union."""
    problems = error.errors(include_url=False)
    if not problems:
        return bad_request("invalid request body")
    if problems[0]["type"] == "json_invalid":
        return bad_request(f"the body is not valid JSON: {problems[0]['msg']}", code="invalid_json")
    unsupported = [p for p in problems if p["type"] == "extra_forbidden"]
    if unsupported:
        param = ".".join(str(part) for part in unsupported[0]["loc"])
        return bad_request(f"{param} is not supported by this server", param=param, code="unsupported")
    specific = [p for p in problems if not p["type"].endswith("_type") and p["type"] != "literal_error"]
    first = (specific or problems)[0]
    # Union members appear in the location (prompt.str, prompt.list[constrained-int].3); keep the field path.
    path = [str(part) for part in first["loc"] if not _is_union_member(part)]
    param = ".".join(path) or None
    message = first["msg"].removeprefix("Value error, ")
    if len(path) < len(first["loc"]) and not specific:
        message = f"matches none of the accepted forms (for example: {message})"
    return bad_request(f"{param or 'body'}: {message}", param=param, code="invalid_value")


def _is_union_member(part: object) -> bool:
    """pydantic names union members by type: 'str', 'list[int]', 'constrained-str', 'TextPart'."""
    return isinstance(part, str) and (
        "[" in part or "-" in part or part in ("str", "int", "float", "bool", "list", "dict", "none")
        or part[:1].isupper())
