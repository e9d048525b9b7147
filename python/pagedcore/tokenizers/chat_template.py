"""Chat templates: render a conversation with the model's jinja2 template, as HF transformers does
(sandboxed environment, trim_blocks / lstrip_blocks, `raise_exception`, `tojson`)."""

from __future__ import annotations

import json
from functools import lru_cache

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}


class TemplateError(ValueError):
    """Raised by a template's raise_exception(), or for a malformed conversation."""


def render_chat(template: str, messages: list[Message], *, add_generation_prompt: bool = True,
                bos_token: str | None = None, eos_token: str | None = None) -> str:
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise TemplateError('messages must be a list of {"role": str, "content": str} dicts')
    return _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token=bos_token or "", eos_token=eos_token or "")


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    return env.from_string(template)
