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

__all__ = [
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
