"""Torch-tensor wrappers of the pagedcore kernels (CPU and CUDA, dispatched on the tensors' device).

Each function checks dtypes, devices, shapes and strides once, with messages a user can act on,
then hands data pointers, strides and the current CUDA stream to ``pagedcore._core``. The native
module never links torch.

KV cache layout, per layer, K and V separate: ``[num_blocks, num_kv_heads, block_size, head_dim]``,
contiguous. One KV head's block is one contiguous run of ``block_size * head_dim`` elements, so
decode streams long contiguous runs; block ``b`` of every head is one contiguous span, which is
what ``copy_blocks`` / ``swap_blocks`` move. A ``[num_layers, 2, num_blocks, ...]`` tensor works:
pass ``cache[layer, 0]`` and ``cache[layer, 1]``.

On CUDA the 16-byte chunks inside each row are kept in a permuted order (chunk ``c`` of a row at
offset ``r`` of its block sits at ``c ^ (r % 8)`` within each complete group of 8), so that the
decode kernel can copy whole blocks to shared memory and still read them without bank conflicts.
FP8 caches (float8_e4m3fn, 16 values per chunk) permute theirs at head sizes that are multiples
of 64: complete groups of 8 as above, a trailing group of 4 by ``(r // 2) % 4``.
``write_kv_cache`` and the kernels handle it; to read or fill a CUDA cache by hand, go through
``kv_cache_to_logical`` / ``kv_cache_from_logical``. CPU caches are in plain order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pagedcore import _core

__all__ = [
    "AttentionPlan",
    "add_rms_norm",
    "attention_plan",
    "copy_blocks",
    "kv_cache_from_logical",
    "kv_cache_to_logical",
    "paged_attention",
    "paged_attention_workspace",
    "paged_attention_workspace_bytes",
    "qk_norm_rope",
    "recommended_num_splits",
    "silu_and_mul",
    "decode_attention_path",
    "swap_blocks",
    "write_kv_cache",
]

_DTYPES = {
    torch.float32: _core.DType.float32,
    torch.float16: _core.DType.float16,
    torch.bfloat16: _core.DType.bfloat16,
    torch.float8_e4m3fn: _core.DType.float8_e4m3fn,  # KV caches only (an FP8 cache, with scales)
}
_TORCH_DTYPES = {native: dtype for dtype, native in _DTYPES.items()}
# What each device's kernels take: the native table (pagedcore/supported.h) is the one source.
CUDA_DTYPES = tuple(_TORCH_DTYPES[d] for d in _core.SUPPORTED_CUDA_DTYPES)  # what the kernels take, by device
CPU_DTYPES = tuple(_TORCH_DTYPES[d] for d in _core.SUPPORTED_CPU_DTYPES)


def _stream(device: torch.device) -> int | None:
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        raise ValueError(f"pagedcore kernels run on CPU or CUDA tensors, got device {device}")
    if not _core.built_with_cuda():
        raise RuntimeError("pagedcore was built without CUDA; rebuild with nvcc on PATH to use CUDA tensors")
    return torch.cuda.current_stream(device).cuda_stream


def _check_same_device(named: dict[str, torch.Tensor]) -> torch.device:
    devices = {name: t.device for name, t in named.items()}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        raise ValueError(f"all tensors must be on one device, got {devices}")
    return first


def _check_dtype(name: str, t: torch.Tensor | torch.dtype, device: torch.device) -> None:
    dtype = t if isinstance(t, torch.dtype) else t.dtype
    allowed = CUDA_DTYPES if device.type == "cuda" else CPU_DTYPES
    if dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise TypeError(f"{name} has dtype {dtype}; supported on {device.type}: {names}")


def _check_int32(name: str, t: torch.Tensor, ndim: int) -> None:
    if t.dtype != torch.int32 or t.dim() != ndim:
        raise TypeError(f"{name} must be an int32 tensor with {ndim} dims, got {t.dtype} with shape {tuple(t.shape)}")
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dim")


def _check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[int, int, int, int]:
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            "k_cache and v_cache must both be [num_blocks, num_kv_heads, block_size, head_dim], got "
            f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("k_cache and v_cache must be contiguous")
    if k_cache.dtype != v_cache.dtype:
        raise TypeError(f"k_cache ({k_cache.dtype}) and v_cache ({v_cache.dtype}) must share a dtype")
    num_blocks, num_kv_heads, block_size, head_dim = k_cache.shape
    return num_blocks, num_kv_heads, block_size, head_dim


def _check_rows(name: str, t: torch.Tensor, num_heads: int, head_dim: int) -> None:
    if t.dim() != 3 or t.shape[1] != num_heads or t.shape[2] != head_dim:
        raise ValueError(f"{name} must be [num_tokens, {num_heads}, {head_dim}], got {tuple(t.shape)}")
    if t.stride(2) != 1:
        raise ValueError(f"{name} must be contiguous in its last dim (head_dim); got strides {t.stride()}")


def write_kv_cache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Scatter new keys/values into their cache slots.

    k, v: [num_tokens, num_kv_heads, head_dim] (views with strided tokens/heads allowed, e.g. slices
    of a fused qkv tensor); k_cache, v_cache: [num_blocks, num_kv_heads, block_size, head_dim];
    slot_mapping: int32 [num_tokens], slot = block_id * block_size + offset, -1 skips the token.
    CPU caches take any dtype; CUDA caches one the CUDA kernels read (``_core.SUPPORTED_CUDA_DTYPES``)
    or float8_e4m3fn.
    An FP8 cache (float8_e4m3fn) stores e4m3(x / scale), rounded to nearest even and
    saturated to +-448, with k_scale / v_scale the layer's scales (1 for any other cache).
    """
    device = _check_same_device({"k": k, "v": v, "k_cache": k_cache, "v_cache": v_cache, "slot_mapping": slot_mapping})
    num_blocks, num_kv_heads, block_size, head_dim = _check_cache(k_cache, v_cache)
    _check_rows("k", k, num_kv_heads, head_dim)
    _check_rows("v", v, num_kv_heads, head_dim)
    fp8_cache = k_cache.dtype == torch.float8_e4m3fn
    if v.dtype != k.dtype or (k.dtype != k_cache.dtype and not fp8_cache):
        raise TypeError(f"k ({k.dtype}) and v ({v.dtype}) must match the cache dtype {k_cache.dtype}")
    _check_int32("slot_mapping", slot_mapping, 1)
    if slot_mapping.shape[0] != k.shape[0] or v.shape[0] != k.shape[0]:
        raise ValueError(
            f"k ({k.shape[0]}), v ({v.shape[0]}) and slot_mapping ({slot_mapping.shape[0]}) need the same token count"
        )
    _core.write_kv_cache(
        _DTYPES[k.dtype], k.data_ptr(), k.stride(0), k.stride(1), v.data_ptr(), v.stride(0), v.stride(1),
        k_cache.data_ptr(), v_cache.data_ptr(), slot_mapping.data_ptr(), k.shape[0], num_kv_heads, head_dim,
        block_size, num_blocks, _stream(device), _DTYPES[k_cache.dtype], float(k_scale), float(v_scale),
    )


def recommended_num_splits(
    num_seqs: int, num_kv_heads: int, num_heads: int, head_dim: int, dtype: torch.dtype, max_context_len: int
) -> int:
    """Split-KV partitions that fill the current CUDA device for a decode batch of this shape; dtype:
    what the KV cache holds (the model's dtype or float8_e4m3fn: the FP8 kernels fit other CTA counts)."""
    return _core.cuda_recommended_num_splits(
        num_seqs, num_kv_heads, num_heads, head_dim, _DTYPES[dtype], max_context_len
    )


def decode_attention_path(dtype: torch.dtype, head_dim: int, block_size: int) -> str:
    """'hopper' (bulk copies, sm_90 code on a 9.0+ GPU) or 'ampere' (cp.async, every supported GPU):
    the kernel path CUDA decode attention of this shape takes on the current device.
    PAGEDCORE_KERNEL_PATH=ampere (read once per process) makes every launch take the Ampere path."""
    return _core.cuda_decode_attention_path(_DTYPES[dtype], head_dim, block_size)


def paged_attention_workspace_bytes(num_seqs: int, num_heads: int, head_dim: int, num_splits: int) -> int:
    """Bytes of the workspace paged_attention needs for num_splits > 1 (0 for one split)."""
    return _core.paged_attention_workspace_bytes(num_seqs, num_heads, head_dim, num_splits)


def paged_attention_workspace(
    num_seqs: int, num_heads: int, head_dim: int, num_splits: int, device: torch.device | str
) -> torch.Tensor:
    """A workspace for paged_attention with num_splits (allocate once to capture CUDA graphs).

    Zero-filled: its split counters must start at zero, and every call leaves them at zero. Use
    one workspace per stream."""
    nbytes = paged_attention_workspace_bytes(num_seqs, num_heads, head_dim, num_splits)
    return torch.zeros(max(nbytes, 16), dtype=torch.uint8, device=device)


def _chunk_positions(block_size: int, chunks: int, fp8: bool, device=None) -> torch.Tensor:
    """[block_size, chunks]: where logical 16-byte chunk c of row r of a block sits in a CUDA cache
    (pagedcore/kv_layout.h: kv_chunk_position, kv_fp8_chunk_position); its own inverse."""
    rows = torch.arange(block_size, device=device)[:, None]
    c = torch.arange(chunks, device=device)[None, :]
    full = chunks & ~7
    if not fp8:
        return torch.where(c < full, c ^ (rows & 7), c)
    if chunks % 4:
        return c.expand(block_size, chunks)
    return torch.where(c < full, c ^ (rows & 7), c ^ ((rows >> 1) & 3))


def _permute_kv_chunks(cache: torch.Tensor) -> torch.Tensor:
    """Copy of a [num_blocks, num_kv_heads, block_size, head_dim] cache with each row's 16-byte
    chunks permuted between plain and CUDA order (the permutation is its own inverse)."""
    if cache.dim() != 4:
        raise ValueError(f"a KV cache is [num_blocks, num_kv_heads, block_size, head_dim], got {tuple(cache.shape)}")
    num_blocks, num_kv_heads, block_size, head_dim = cache.shape
    vec = 16 // cache.element_size()
    if head_dim % vec:
        raise ValueError(f"head_dim {head_dim} is not a whole number of 16-byte chunks")
    chunks = head_dim // vec
    fp8 = cache.dtype == torch.float8_e4m3fn
    position = _chunk_positions(block_size, chunks, fp8, cache.device)
    index = position[None, None, :, :, None].expand(num_blocks, num_kv_heads, block_size, chunks, vec)
    data = cache.view(torch.uint8) if fp8 else cache  # (gather on the bytes)
    grouped = data.reshape(num_blocks, num_kv_heads, block_size, chunks, vec)
    permuted = torch.gather(grouped, 3, index).reshape(cache.shape)
    return permuted.view(cache.dtype) if fp8 else permuted


def kv_cache_to_logical(cache: torch.Tensor) -> torch.Tensor:
    """The cache's values in plain [num_blocks, num_kv_heads, block_size, head_dim] order: a
    reordered copy for a CUDA cache, the cache itself on CPU."""
    return _permute_kv_chunks(cache) if cache.is_cuda else cache


def kv_cache_from_logical(values: torch.Tensor) -> torch.Tensor:
    """A cache holding `values` (plain [num_blocks, num_kv_heads, block_size, head_dim] order) in the
    order the kernels of its device read: a reordered copy on CUDA, `values` itself on CPU."""
    return _permute_kv_chunks(values) if values.is_cuda else values


class AttentionPlan:
    """One step's paged attention (a native ``_core.AttentionPlan``): the step's block tables, lengths,
    split count and workspace, validated once; every layer then calls ``run`` with its own q, caches
    and out. Built by ``attention_plan``; holds the step's tensors, which must not change shape
    while it is used (their contents may: a CUDA graph replays a plan over refilled buffers)."""

    __slots__ = ("native", "device", "dtype", "cache_dtype", "scale", "num_heads", "q_shape", "cache_shape",
                 "stream_device", "_tensors")

    def __init__(self, native, device: torch.device, dtype: torch.dtype, cache_dtype: torch.dtype, scale: float,
                 q_shape: tuple[int, int, int], cache_shape: tuple[int, int, int, int],
                 tensors: tuple[torch.Tensor | None, ...]):
        self.native = native
        self.cache_dtype = cache_dtype
        self.scale = scale
        self.device = device
        self.dtype = dtype
        self.num_heads = q_shape[1]
        self.q_shape = q_shape
        self.cache_shape = cache_shape
        self.stream_device = device if device.type == "cuda" else None
        self._tensors = tensors  # kept alive: the native plan holds their addresses

    @property
    def num_splits(self) -> int:
        return self.native.num_splits

    def _check_rows(self, name: str, t: torch.Tensor) -> None:
        if t.shape != self.q_shape or t.dtype != self.dtype or t.device != self.device or t.stride(2) != 1:
            raise ValueError(
                f"{name} must be {self.dtype} [{', '.join(map(str, self.q_shape))}] on {self.device}, contiguous in its "
                f"last dim (the plan's step), got {t.dtype} {tuple(t.shape)} strides {t.stride()} on {t.device}"
            )

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
            out: torch.Tensor | None = None, k_scale: float = 1.0, v_scale: float = 1.0) -> torch.Tensor:
        """Attention of one layer: q [num_tokens, num_heads, head_dim] -> out (allocated when None);
        k_scale / v_scale: an FP8 cache's scales for this layer (1 for any other cache)."""
        self._check_rows("q", q)
        for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
            if (cache.shape != self.cache_shape or cache.dtype != self.cache_dtype or cache.device != self.device
                    or not cache.is_contiguous()):
                raise ValueError(
                    f"{name} must be a contiguous {self.cache_dtype} [{', '.join(map(str, self.cache_shape))}] cache "
                    f"on {self.device} (the plan's), got {cache.dtype} {tuple(cache.shape)} on {cache.device}"
                )
        if out is None:
            out = torch.empty(self.q_shape, dtype=self.dtype, device=self.device)
        else:
            self._check_rows("out", out)
        stream = None if self.stream_device is None else torch.cuda.current_stream(self.stream_device).cuda_stream
        self.native.run(q.data_ptr(), q.stride(0), q.stride(1), k_cache.data_ptr(), v_cache.data_ptr(),
                        out.data_ptr(), out.stride(0), out.stride(1), stream, float(k_scale), float(v_scale))
        return out


def attention_plan(
    k_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    *,
    num_tokens: int,
    num_heads: int,
    scale: float | None = None,
    max_query_len: int | None = None,
    max_context_len: int | None = None,
    num_splits: int | None = None,
    workspace: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> AttentionPlan:
    """The plan of one step's paged attention over caches shaped like k_cache (any layer's).

    block_tables: int32 [num_seqs, max_blocks]; context_lens: int32 [num_seqs], all tokens of each
    sequence including the new ones; query_start_loc: int32 [num_seqs + 1]; num_tokens query rows of
    num_heads heads. Query row j of a sequence with qlen rows sits at position context_len - qlen + j
    and attends to keys [0, position].

    Host-side hints (pass them to avoid a device sync and to capture CUDA graphs): max_query_len
    (1 = decode only), max_context_len (picks num_splits), num_splits (CUDA split-KV partitions; with
    num_splits > 1 pass a workspace from paged_attention_workspace). On CPU the plan checks every
    block id once. dtype: q's and out's (default: the cache's; an FP8 cache needs it).
    """
    device = _check_same_device(
        {"k_cache": k_cache, "block_tables": block_tables, "context_lens": context_lens,
         "query_start_loc": query_start_loc}
    )
    if k_cache.dim() != 4:
        raise ValueError(f"a KV cache is [num_blocks, num_kv_heads, block_size, head_dim], got {tuple(k_cache.shape)}")
    num_blocks, num_kv_heads, block_size, head_dim = k_cache.shape
    dtype = k_cache.dtype if dtype is None else dtype
    _check_dtype("q", dtype, device)
    if k_cache.dtype not in (dtype, torch.float8_e4m3fn):
        raise TypeError(f"the cache ({k_cache.dtype}) must hold q's dtype ({dtype}) or float8_e4m3fn")
    _check_int32("block_tables", block_tables, 2)
    _check_int32("context_lens", context_lens, 1)
    _check_int32("query_start_loc", query_start_loc, 1)
    num_seqs = context_lens.shape[0]
    if block_tables.shape[0] != num_seqs or query_start_loc.shape[0] != num_seqs + 1:
        raise ValueError(
            f"block_tables ({block_tables.shape[0]} rows), context_lens ({num_seqs}) and query_start_loc "
            f"({query_start_loc.shape[0]}, needs num_seqs + 1) disagree on the number of sequences"
        )
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max().item()) if num_seqs else 0
    cuda = device.type == "cuda"
    if cuda:
        _stream(device)  # refuses a build without CUDA
    splits, ws_ptr, ws_bytes = 1, 0, 0
    if cuda:
        if num_splits is None:
            if max_context_len is None:
                max_context_len = int(context_lens.max().item()) if num_seqs else 0
            num_splits = recommended_num_splits(num_seqs, num_kv_heads, num_heads, head_dim, k_cache.dtype,
                                                max_context_len)
        splits = num_splits
        if splits > 1:
            if workspace is None:
                workspace = paged_attention_workspace(num_seqs, num_heads, head_dim, splits, device)
            if workspace.device != device:
                raise ValueError("workspace must be on the cache's device")
            ws_ptr, ws_bytes = workspace.data_ptr(), workspace.numel() * workspace.element_size()
    native = _core.AttentionPlan(
        _DTYPES[dtype], num_seqs, num_tokens, num_heads, num_kv_heads, head_dim, block_size, num_blocks,
        block_tables.data_ptr(), block_tables.stride(0), block_tables.shape[1], context_lens.data_ptr(),
        query_start_loc.data_ptr(), float(scale), max_query_len, max_context_len or 0, splits, ws_ptr, ws_bytes,
        cuda, _DTYPES[k_cache.dtype],
    )
    return AttentionPlan(native, device, dtype, k_cache.dtype, float(scale), (num_tokens, num_heads, head_dim),
                         tuple(k_cache.shape), (block_tables, context_lens, query_start_loc, workspace))


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    *,
    scale: float | None = None,
    out: torch.Tensor | None = None,
    max_query_len: int | None = None,
    max_context_len: int | None = None,
    num_splits: int | None = None,
    workspace: torch.Tensor | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Attention of a mixed decode / prefill batch over the paged KV cache: one layer's call, a plan
    (attention_plan) made and run once. A model makes the plan once per step and runs it per layer.

    q: [num_tokens, num_heads, head_dim] (token/head strides free, last dim contiguous).
    k_cache, v_cache: [num_blocks, num_kv_heads, block_size, head_dim] holding every token's K/V,
    this step's included (call write_kv_cache first). The other arguments as attention_plan's.
    Returns out: [num_tokens, num_heads, head_dim] in q's dtype.
    """
    device = _check_same_device({"q": q, "k_cache": k_cache, "v_cache": v_cache})
    _check_cache(k_cache, v_cache)
    _check_dtype("q", q, device)
    head_dim = k_cache.shape[3]
    if q.dim() != 3 or q.shape[2] != head_dim:
        raise ValueError(f"q must be [num_tokens, num_heads, {head_dim}], got {tuple(q.shape)}")
    if q.stride(2) != 1:
        raise ValueError(f"q must be contiguous in its last dim; got strides {q.stride()}")
    if q.dtype != k_cache.dtype and k_cache.dtype != torch.float8_e4m3fn:
        raise TypeError(f"q ({q.dtype}) must match the cache dtype ({k_cache.dtype})")
    plan = attention_plan(k_cache, block_tables, context_lens, query_start_loc, num_tokens=q.shape[0],
                          num_heads=q.shape[1], scale=scale, max_query_len=max_query_len,
                          max_context_len=max_context_len, num_splits=num_splits, workspace=workspace, dtype=q.dtype)
    return plan.run(q, k_cache, v_cache, out, k_scale, v_scale)


def _pairs_tensor(pairs: torch.Tensor | Sequence[tuple[int, int]], device: torch.device) -> torch.Tensor:
    t = pairs if isinstance(pairs, torch.Tensor) else torch.tensor(list(pairs), dtype=torch.int32).reshape(-1, 2)
    if t.dtype != torch.int32 or t.dim() != 2 or t.shape[1] != 2:
        raise TypeError(f"pairs must be int32 [num_pairs, 2] (src, dst), got {t.dtype} {tuple(t.shape)}")
    return t.to(device).contiguous()


def _check_pair_ids(pairs: torch.Tensor, num_blocks: int) -> None:
    if pairs.numel() and (int(pairs.min()) < 0 or int(pairs.max()) >= num_blocks):
        raise IndexError(f"block ids in pairs must lie in [0, {num_blocks})")


def _block_bytes(caches: Sequence[torch.Tensor]) -> tuple[int, int]:
    first = caches[0]
    for c in caches:
        if c.shape != first.shape or c.dtype != first.dtype or c.device != first.device or not c.is_contiguous():
            raise ValueError("every cache must be contiguous with one shape, dtype and device")
    return first.shape[0], first[0].numel() * first.element_size()


def copy_blocks(caches: Sequence[torch.Tensor], pairs: torch.Tensor | Sequence[tuple[int, int]]) -> None:
    """Copy-on-write: copy block src into block dst in every cache array (K and V of every layer).

    caches: tensors [num_blocks, ...] (e.g. [k_cache_0, v_cache_0, k_cache_1, ...]);
    pairs: int32 [num_pairs, 2] or a list of (src, dst) block ids.
    """
    if not caches:
        return
    num_blocks, block_bytes = _block_bytes(caches)
    device = caches[0].device
    if not (isinstance(pairs, torch.Tensor) and pairs.is_cuda):
        _check_pair_ids(_pairs_tensor(pairs, torch.device("cpu")), num_blocks)
    pair_t = _pairs_tensor(pairs, device)
    if pair_t.shape[0] == 0:
        return
    ptrs = torch.tensor([c.data_ptr() for c in caches], dtype=torch.int64, device=device)
    _core.copy_blocks(ptrs.data_ptr(), len(caches), num_blocks, block_bytes, pair_t.data_ptr(), pair_t.shape[0],
                      _stream(device))


def swap_blocks(
    src_caches: Sequence[torch.Tensor],
    dst_caches: Sequence[torch.Tensor],
    pairs: torch.Tensor | Sequence[tuple[int, int]],
) -> None:
    """Swap out / in for preemption: copy block src of each src cache into block dst of the
    matching dst cache. One side is CUDA, the other CUDA or pinned CPU memory."""
    if len(src_caches) != len(dst_caches):
        raise ValueError("src_caches and dst_caches must have the same length")
    if not src_caches:
        return
    _, block_bytes = _block_bytes(src_caches)
    _, dst_block_bytes = _block_bytes(dst_caches)
    if block_bytes != dst_block_bytes or src_caches[0].dtype != dst_caches[0].dtype:
        raise ValueError("src and dst caches must have the same block shape and dtype")
    cuda_side = src_caches[0].device if src_caches[0].is_cuda else dst_caches[0].device
    if not cuda_side.type == "cuda":
        raise ValueError("swap_blocks moves blocks to or from a CUDA cache; both sides are on the CPU")
    for host in (src_caches[0], dst_caches[0]):
        if host.device.type == "cpu" and not host.is_pinned():
            raise ValueError("the CPU side of swap_blocks must be pinned memory (torch.empty(..., pin_memory=True))")
    pair_list = pairs.tolist() if isinstance(pairs, torch.Tensor) else [tuple(p) for p in pairs]
    num_src, num_dst = src_caches[0].shape[0], dst_caches[0].shape[0]
    for s, d in pair_list:
        if not (0 <= s < num_src and 0 <= d < num_dst):
            raise IndexError(f"swap_blocks pair ({s}, {d}) outside the caches ({num_src} and {num_dst} blocks)")
    _core.swap_blocks([c.data_ptr() for c in src_caches], [c.data_ptr() for c in dst_caches], block_bytes,
                      [(int(s), int(d)) for s, d in pair_list], _stream(cuda_side))


# ---- fused layer kernels (pagedcore/layer_kernels.h) ------------------------------------------------

def _check_rows_2d(name: str, t: torch.Tensor, width: int | None = None) -> None:
    if t.dim() != 2 or t.stride(1) != 1 or (width is not None and t.shape[1] != width):
        want = f"[num_tokens, {width}]" if width is not None else "[num_tokens, size]"
        raise ValueError(f"{name} must be {want} with a contiguous last dim, got shape {tuple(t.shape)} "
                         f"strides {t.stride()}")


def add_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm with the residual add fused in, in HF transformers' rounding order.

    x: [num_tokens, hidden] (row stride free, last dim contiguous); weight: [hidden]. With a
    residual ([num_tokens, hidden], contiguous): residual <- x + residual in place, and the sum is
    what gets normalized. Returns out = weight * rmsnorm(...) ([num_tokens, hidden], may be x itself).
    """
    named = {"x": x, "weight": weight} | ({"residual": residual} if residual is not None else {}) | (
        {"out": out} if out is not None else {})
    device = _check_same_device(named)
    _check_dtype("x", x, device)
    _check_rows_2d("x", x)
    num_tokens, hidden = x.shape
    for name, t in named.items():
        if t.dtype != x.dtype:
            raise TypeError(f"{name} ({t.dtype}) must have x's dtype ({x.dtype})")
    if weight.shape != (hidden,) or not weight.is_contiguous():
        raise ValueError(f"weight must be a contiguous [{hidden}] tensor, got {tuple(weight.shape)}")
    for name, t in (("residual", residual), ("out", out)):
        if t is not None and (t.shape != x.shape or not t.is_contiguous()):
            raise ValueError(f"{name} must be a contiguous tensor of x's shape {tuple(x.shape)}, got {tuple(t.shape)}")
    if residual is not None and residual.data_ptr() in (x.data_ptr(), (out if out is not None else x).data_ptr()):
        raise ValueError("residual must be its own tensor, not x or out")
    if out is None:
        out = torch.empty((num_tokens, hidden), dtype=x.dtype, device=device)
    _core.add_rms_norm(_DTYPES[x.dtype], x.data_ptr(), x.stride(0), residual.data_ptr() if residual is not None else 0,
                       weight.data_ptr(), out.data_ptr(), num_tokens, hidden, float(eps), _stream(device))
    return out


def sample_tokens(scores: torch.Tensor, inv_temperature: torch.Tensor, noise: torch.Tensor, vocab_size: int,
                  raw: torch.Tensor | None = None, allowed: torch.Tensor | None = None,
                  allowed_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused sampling pass: one read of each row chooses its token and computes its logprob.

    scores: float32 [rows, >= vocab_size] (last dim contiguous), what the choice reads (-inf: never);
    inv_temperature: float32 [rows], 0 = greedy (the first argmax of scores), else a Gumbel-max draw
    from softmax(scores * inv_temperature); noise: int64 [rows, 3] = (Philox key, salt, offset) per
    row: the noise of row r is a function of its triple and the vocabulary id only (pagedcore/philox.h);
    raw: the raw logits the logprob is taken under (default: scores); allowed: int32 [masks, >=
    ceil(vocab_size / 32)] packed token bitmasks (a grammar's, bit j of word w = id 32 w + j) with
    allowed_rows int32 [rows]: row r chooses only among allowed[allowed_rows[r]] (any id when < 0).
    -> (token ids int64 [rows], float32 [rows] raw[token] - logsumexp(raw[:vocab_size]))."""
    raw = scores if raw is None else raw
    named = {"scores": scores, "raw": raw, "inv_temperature": inv_temperature, "noise": noise}
    if (allowed is None) != (allowed_rows is None):
        raise ValueError("allowed and allowed_rows go together")
    if allowed is not None:
        named |= {"allowed": allowed, "allowed_rows": allowed_rows}
    device = _check_same_device(named)
    rows = scores.shape[0] if scores.dim() == 2 else -1
    for name, t in (("scores", scores), ("raw", raw)):
        if t.dtype != torch.float32 or t.dim() != 2 or t.shape[0] != rows or t.stride(1) != 1 or t.shape[1] < vocab_size:
            raise ValueError(f"{name} must be float32 [rows, >= {vocab_size}] with a contiguous last dim, got "
                             f"{t.dtype} {tuple(t.shape)} strides {t.stride()}")
    if inv_temperature.dtype != torch.float32 or tuple(inv_temperature.shape) != (rows,) or not inv_temperature.is_contiguous():
        raise ValueError(f"inv_temperature must be a contiguous float32 [{rows}] tensor")
    if noise.dtype != torch.int64 or tuple(noise.shape) != (rows, 3) or not noise.is_contiguous():
        raise ValueError(f"noise must be a contiguous int64 [{rows}, 3] tensor (key, salt, offset per row)")
    words = (vocab_size + 31) // 32
    if allowed is not None:
        if allowed.dtype != torch.int32 or allowed.dim() != 2 or allowed.shape[1] < words or allowed.stride(1) != 1:
            raise ValueError(f"allowed must be int32 [masks, >= {words}] with a contiguous last dim, got "
                             f"{allowed.dtype} {tuple(allowed.shape)}")
        if allowed_rows.dtype != torch.int32 or tuple(allowed_rows.shape) != (rows,) or not allowed_rows.is_contiguous():
            raise ValueError(f"allowed_rows must be a contiguous int32 [{rows}] tensor")
        if rows and allowed_rows.device.type == "cpu" and int(allowed_rows.max()) >= allowed.shape[0]:
            raise ValueError(f"allowed_rows names a mask past the {allowed.shape[0]} given")
    token_ids = torch.empty(rows, dtype=torch.int64, device=device)
    logprobs = torch.empty(rows, dtype=torch.float32, device=device)
    _core.sample_tokens(scores.data_ptr(), scores.stride(0), raw.data_ptr(), raw.stride(0), inv_temperature.data_ptr(),
                        noise.data_ptr(), 0 if allowed is None else allowed.data_ptr(),
                        0 if allowed is None else allowed.stride(0),
                        0 if allowed_rows is None else allowed_rows.data_ptr(), token_ids.data_ptr(),
                        logprobs.data_ptr(), rows, vocab_size, _stream(device))
    return token_ids, logprobs


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x: [num_tokens, 2 * intermediate] = [gate, up] (row stride free) -> silu(gate) * up
    [num_tokens, intermediate], rounded as ``F.silu(gate) * up`` rounds."""
    device = _check_same_device({"x": x} | ({"out": out} if out is not None else {}))
    _check_dtype("x", x, device)
    _check_rows_2d("x", x)
    num_tokens, width = x.shape
    if width % 2:
        raise ValueError(f"x's last dim must be 2 * intermediate_size (gate, then up), got {width}")
    if out is None:
        out = torch.empty((num_tokens, width // 2), dtype=x.dtype, device=device)
    elif out.shape != (num_tokens, width // 2) or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {x.dtype} [{num_tokens}, {width // 2}] tensor")
    _core.silu_and_mul(_DTYPES[x.dtype], x.data_ptr(), x.stride(0), out.data_ptr(), num_tokens, width // 2,
                       _stream(device))
    return out


def qk_norm_rope(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 q_norm_weight: torch.Tensor | None = None, k_norm_weight: torch.Tensor | None = None,
                 eps: float = 1e-6) -> None:
    """In place on q [num_tokens, num_heads, head_dim] and k [num_tokens, num_kv_heads, head_dim]
    (token / head strides free, e.g. views of a fused qkv projection): the optional per-head RMSNorm
    (Qwen3's q_norm / k_norm, weights [head_dim], both or neither), then the rotary embedding in the
    HF layout. positions: int32 [num_tokens]; cos, sin: float32 [max_position, >= head_dim / 2] with
    the angle of pair i at column i (a table of head_dim columns with both halves equal works).
    CPU checks positions against the table; CUDA trusts them (device data)."""
    named = {"positions": positions, "q": q, "k": k, "cos": cos, "sin": sin}
    if (q_norm_weight is None) != (k_norm_weight is None):
        raise ValueError("give both q_norm_weight and k_norm_weight (Qwen3's qk-norm) or neither")
    if q_norm_weight is not None:
        named |= {"q_norm_weight": q_norm_weight, "k_norm_weight": k_norm_weight}
    device = _check_same_device(named)
    _check_dtype("q", q, device)
    if q.dim() != 3 or k.dim() != 3 or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(f"q must be [num_tokens, num_heads, head_dim] and k [num_tokens, num_kv_heads, head_dim], "
                         f"got {tuple(q.shape)} and {tuple(k.shape)}")
    num_tokens, num_heads, head_dim = q.shape
    _check_rows("q", q, num_heads, head_dim)
    _check_rows("k", k, k.shape[1], head_dim)
    if k.dtype != q.dtype:
        raise TypeError(f"k ({k.dtype}) must have q's dtype ({q.dtype})")
    if positions.dtype != torch.int32 or positions.shape != (num_tokens,) or not positions.is_contiguous():
        raise TypeError(f"positions must be a contiguous int32 [{num_tokens}] tensor, got {positions.dtype} "
                        f"{tuple(positions.shape)}")
    for name, table in (("cos", cos), ("sin", sin)):
        if table.dtype != torch.float32 or table.dim() != 2 or table.stride(1) != 1 or table.shape != cos.shape:
            raise TypeError(f"{name} must be a float32 [max_position, >= head_dim / 2] table like cos, got "
                            f"{table.dtype} {tuple(table.shape)}")
    if cos.stride(0) != sin.stride(0):
        raise ValueError("cos and sin must have the same row stride")
    for name, w in (("q_norm_weight", q_norm_weight), ("k_norm_weight", k_norm_weight)):
        if w is not None and (w.shape != (head_dim,) or w.dtype != q.dtype or not w.is_contiguous()):
            raise ValueError(f"{name} must be a contiguous {q.dtype} [{head_dim}] tensor, got {w.dtype} {tuple(w.shape)}")
    _core.qk_norm_rope(
        _DTYPES[q.dtype], q.data_ptr(), q.stride(0), q.stride(1), k.data_ptr(), k.stride(0), k.stride(1),
        positions.data_ptr(), cos.data_ptr(), sin.data_ptr(), cos.stride(0), cos.shape[0],
        q_norm_weight.data_ptr() if q_norm_weight is not None else 0,
        k_norm_weight.data_ptr() if k_norm_weight is not None else 0,
        num_tokens, num_heads, k.shape[1], head_dim, float(eps), _stream(device))
