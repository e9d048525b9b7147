"""OpenAI-compatible HTTP server: `pagedcore serve`.

protocol.py (request models), async_engine.py (the engine thread + per-request async streams),
responses.py (OpenAI response / chunk shapes), handlers.py (completions and chat), metrics.py
(Prometheus), app.py (routes, auth, limits, errors), launcher.py (the `serve` command).
Imported lazily: `pagedcore generate` must not need fastapi.
"""

_EXPORTS = {"ServerConfig": "pagedcore.server.app", "build_app": "pagedcore.server.app"}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pagedcore.server' has no attribute {name!r}")


__all__ = list(_EXPORTS)
