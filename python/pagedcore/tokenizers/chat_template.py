"""Chat templates: render a conversation with the model's jinja2 template, as HF transformers does
(sandboxed environment, trim_blocks / lstrip_blocks, `raise_exception`, `tojson`)."""

from __future__ import annotations

import json
from functools import lru_cache

Message = dict  # {"role": ..., "content": str or OpenAI content parts [{"type": "text", "text": ...}]}


class TemplateError(ValueError):
    """Raised by a template's raise_exception(), or for a malformed conversation."""


def message_text(content) -> str:
    """A message's content as the text a text-only model's template takes: a string as it is, OpenAI
    content parts joined with newlines (text parts only), as vLLM renders them."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind in ("image_url", "image", "input_image"):
                raise TemplateError("images are not supported: pagedcore serves text-only models")
            elif kind in ("input_audio", "audio_url", "video_url"):
                raise TemplateError(f"{kind} content is not supported: pagedcore serves text-only models")
            else:
                raise TemplateError(f'a content part must be {{"type": "text", "text": str}}, got {part!r}')
        return "\n".join(texts)
    raise TemplateError(f"message content must be a string or a list of content parts, got {type(content).__name__}")


def render_chat(template: str, messages: list[Message], *, add_generation_prompt: bool = True,
                continue_final_message: bool = False, bos_token: str | None = None, eos_token: str | None = None,
                template_kwargs: dict | None = None) -> str:
    """continue_final_message: end the text inside the last message (no end-of-turn after it), so
    generation continues it (as transformers / vLLM do); it excludes add_generation_prompt.
    template_kwargs: extra variables for the template (vLLM's chat_template_kwargs)."""
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in messages):
        raise TemplateError('messages must be a list of {"role": str, "content": ...} dicts, at least one')
    if continue_final_message and add_generation_prompt:
        raise TemplateError("continue_final_message=True continues the last message: it needs "
                            "add_generation_prompt=False")
    messages = [{**m, "content": message_text(m["content"])} for m in messages]
    extra = dict(template_kwargs or {})
    reserved = {"messages", "add_generation_prompt", "bos_token", "eos_token"} & extra.keys()
    if reserved:
        raise TemplateError(f"chat_template_kwargs may not set {', '.join(sorted(reserved))}")
    text = _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token=bos_token or "", eos_token=eos_token or "", **extra)
    if continue_final_message:
        final = messages[-1]["content"]
        cut = text.rfind(final.strip()) if final.strip() else -1
        if cut < 0:
            raise TemplateError("continue_final_message: the template did not render the last message's content")
        text = text[:cut + len(final.strip())]
    return text


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    return env.from_string(template)
