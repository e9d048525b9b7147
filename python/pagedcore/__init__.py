"""pagedcore: an LLM inference engine built on PagedAttention."""

from pagedcore._core import (
    SUPPORTED_BLOCK_SIZES,
    SUPPORTED_HEAD_SIZES,
    BlockPool,
    BlockTables,
    KVCacheShape,
    MemoryPlan,
    PoolStats,
    __version__,
    built_with_cuda,
    plan_kv_memory,
)

# The engine API imports torch; load it on first use so `import pagedcore` stays light.
_ENGINE_EXPORTS = {
    "LLM": "pagedcore.engine.llm",
    "SamplingParams": "pagedcore.engine.sampling_params",
    "StructuredOutputsParams": "pagedcore.engine.structured_outputs",
    "RequestOutput": "pagedcore.engine.outputs",
    "CompletionOutput": "pagedcore.engine.outputs",
}


def __getattr__(name: str):
    if name in _ENGINE_EXPORTS:
        import importlib

        return getattr(importlib.import_module(_ENGINE_EXPORTS[name]), name)
    raise AttributeError(f"module 'pagedcore' has no attribute {name!r}")


__all__ = [
    "LLM",
    "SamplingParams",
    "StructuredOutputsParams",
    "RequestOutput",
    "CompletionOutput",
    "SUPPORTED_BLOCK_SIZES",
    "SUPPORTED_HEAD_SIZES",
    "BlockPool",
    "BlockTables",
    "KVCacheShape",
    "MemoryPlan",
    "PoolStats",
    "__version__",
    "built_with_cuda",
    "plan_kv_memory",
]
