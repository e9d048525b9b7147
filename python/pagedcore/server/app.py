"""The FastAPI app: routes, API-key auth, the body-size limit, and OpenAI-shaped errors.

Every error leaves as {"error": {"message", "type", "param", "code"}}. Input problems are 4xx:
400 (bad JSON, bad field, unknown model, prompt too long), 401 (key), 404/405 (route), 413 (body),
429 (queue full). 503 means the engine is down; 500 is kept for bugs, never for user input.
"""

from __future__ import annotations

import hmac
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pagedcore import __version__
from pagedcore.engine.engine import LLMEngine
from pagedcore.server.async_engine import AsyncEngine
from pagedcore.server.errors import APIError
from pagedcore.server.tools import resolve_tool_parser
from pagedcore.server.handlers import OpenAIHandlers
from pagedcore.server.metrics import ServerMetrics
from pagedcore.tokenizers.tokenizer import Tokenizer

logger = logging.getLogger("pagedcore.server")


@dataclass
class ServerConfig:
    model_name: str  # what /v1/models lists and requests must name (or leave out)
    api_key: str | None = None  # when set, every route but /health needs "Authorization: Bearer <key>"
    max_body_bytes: int = 4 << 20  # larger bodies get 413
    max_queued_requests: int = 1024  # beyond max_num_seqs running; more get 429
    stall_timeout_s: float = 60.0  # /health turns 503 when the engine loop has not ticked for this long
    tool_call_parser: str = "auto"  # tool_choice "auto": the model family's parser (tools.PARSER_OF_MODEL_TYPE),
                                    # a parser's name, or "none"


class BodyTooLarge(Exception):
    """Raised from the middleware's receive() when a (chunked) body passes the limit mid-read."""


def _body_too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than this server's limit of {limit} bytes",
                    code="body_too_large")


class _LimitsAndAuth:
    """Pure ASGI middleware: checks the API key before routing and caps the request body size
    (by Content-Length, and by counting the bytes actually received for chunked bodies)."""

    def __init__(self, app, config: ServerConfig):
        self.app = app
        self.key = config.api_key.encode() if config.api_key else None
        self.max_body_bytes = config.max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])  # raw lower-case byte names -> byte values
        if self.key is not None and scope["path"] not in ("/health", "/ping") and not self._authorized(headers):
            error = APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                             type="authentication_error", code="invalid_api_key")
            return await error.response()(scope, receive, send)
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await APIError(400, "Content-Length must be a non-negative integer").response()(
                    scope, receive, send)
            if int(length) > self.max_body_bytes:
                return await _body_too_large(self.max_body_bytes).response()(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge()
            return message

        return await self.app(scope, limited_receive, send)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        value = headers.get(b"authorization", b"")
        scheme, _, token = value.partition(b" ")
        # compare_digest takes as long for any wrong key of a given length (the key's length may leak).
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)


def build_app(engine: LLMEngine, tokenizer: Tokenizer | None, max_model_len: int, config: ServerConfig) -> FastAPI:
    """One app serving one engine. The engine thread starts with the app and stops after it drained."""
    metrics = ServerMetrics()
    max_in_flight = engine.scheduler.config.max_num_seqs + config.max_queued_requests
    async_engine = AsyncEngine(engine, max_in_flight=max_in_flight, metrics=metrics,
                               stall_timeout_s=config.stall_timeout_s)
    metrics.bind_stats(lambda: async_engine.stats)
    model_type = getattr(getattr(engine.runner.model, "config", None), "model_type", None)
    handlers = OpenAIHandlers(async_engine, tokenizer, config.model_name, max_model_len,
                              on_rejected=lambda reason: metrics.rejected_requests.labels(reason=reason).inc(),
                              tool_parser=resolve_tool_parser(config.tool_call_parser, model_type))
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async_engine.start()
        try:
            yield
        finally:
            async_engine.shutdown()

    app = FastAPI(title="pagedcore", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.async_engine = async_engine
    app.state.metrics = metrics
    app.add_middleware(_LimitsAndAuth, config=config)

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> Response:
        return error.response()

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, error: BodyTooLarge) -> Response:
        return _body_too_large(config.max_body_bytes).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        return APIError(error.status_code, str(error.detail), code="not_found" if error.status_code == 404
                        else None, headers=getattr(error, "headers", None)).response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> Response:
        logger.exception("unhandled error in %s %s", request.method, request.url.path)
        return APIError(500, f"internal error: {type(error).__name__}", type="server_error",
                        code="internal_error").response()

    @app.get("/health")
    async def health() -> Response:
        if async_engine.is_healthy():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable", "error": async_engine.error}, status_code=503)

    card = {"id": config.model_name, "object": "model", "created": created, "owned_by": "pagedcore",
            "max_model_len": max_model_len}

    @app.get("/v1/models")
    async def models() -> Response:
        return JSONResponse({"object": "list", "data": [card]})

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Response:
        if model_id != config.model_name:
            raise APIError(404, f"model {model_id!r} is not served here; the served model is {config.model_name!r}",
                           param="model", code="model_not_found")
        return JSONResponse(card)

    @app.get("/ping")
    async def ping() -> Response:  # vLLM's liveness route: /health's answer
        return await health()

    @app.get("/version")
    async def version() -> Response:
        return JSONResponse({"version": __version__})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/v1/completions", handlers.completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", handlers.chat, methods=["POST"])
    app.add_api_route("/tokenize", handlers.tokenize, methods=["POST"])
    app.add_api_route("/detokenize", handlers.detokenize, methods=["POST"])
    return app
