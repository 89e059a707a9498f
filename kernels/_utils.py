"""Launch helpers shared by the multi-tensor kernels in `kernels.topk_mask` and `kernels.masked_adam`.

Both kernels treat a list of tensors as one launch over "segments" (one segment per tensor). A kernel
program handles BLOCK consecutive elements of one segment and finds its tensors through small device
tables:

- a *pointer table*: int64 `data_ptr()` of each tensor (0 for a missing tensor, e.g. a None mask). The
  kernel loads the address and casts it to a typed pointer, so any number of tensors costs one launch
  and no concatenation copy.
- a *block plan*: int32 rows `block_seg[nb] | block_start[nb] | seg_first_block[ns] | seg_num_blocks[ns]
  | seg_numel[ns]`, which maps program ids to (segment, offset) and segments to their block ranges.

Both tables depend only on host-known facts (addresses, shapes), so they are built on the host and cached
on the device, keyed by those facts. A warm call therefore does no host-to-device copy, and a CUDA graph
captured after one warm-up call replays with the cached tables. A table first needed during a capture (the
tensors were allocated inside it, so their addresses are new) is written by per-entry fill kernels that the
graph records, since a host-to-device copy of pageable memory can't be captured; addresses inside a graph's
pool are the same at every replay, so the recorded values stay right. The caches are bounded (LRU); a table a
captured graph still uses is only freed if more than `_CACHE_SIZE` other tensor lists were seen since.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

# Big enough that an agent (one list of params, grads, moments, masks, plus a few temporaries) never
# evicts a table its CUDA graph uses; small enough that a caller allocating fresh outputs each call can
# not grow device memory without bound (each entry is a few hundred bytes).
_CACHE_SIZE = 1024

# Offsets are int32 inside the kernels (cheaper address math); tensors beyond this are rejected.
MAX_NUMEL = 2**31 - 1

_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()


def _cached(key: tuple, build) -> torch.Tensor:
    table = _cache.get(key)
    if table is None:
        table = build()
        _cache[key] = table
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(key)
    return table


# Entries a table may have to be built inside a CUDA-graph capture (one fill kernel each): pointer tables
# (one entry per tensor) fit; block plans (shape-keyed, so warmed up before any capture) never need to.
MAX_CAPTURED_ENTRIES = 256


def _host_to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_current_stream_capturing():
        return host.to(device)
    if host.numel() > MAX_CAPTURED_ENTRIES:
        raise RuntimeError(f"a {host.numel()}-entry kernel table was first needed inside a CUDA-graph capture; "
                           "run the op once before capturing (tables are cached by tensor shapes and addresses)")
    return filled_on_device(host, device)


def filled_on_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A device copy of 1-D `host` written by one fill kernel per entry, with no host-to-device copy: a graph
    capture records the kernels with the values as arguments, so every replay writes them again."""
    table = torch.empty(host.shape, dtype=host.dtype, device=device)
    for i, value in enumerate(host.tolist()):
        table[i].fill_(value)
    return table


def device_ints(values: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A cached 1-D device tensor holding `values`."""
    values = tuple(int(v) for v in values)
    return _cached(("ints", str(device), dtype, values),
                   lambda: _host_to_device(torch.tensor(values, dtype=dtype), device))


def pointer_table(tensors: Sequence[torch.Tensor | None], device: torch.device) -> torch.Tensor:
    """int64 device table of the tensors' data pointers (0 for None)."""
    return device_ints([0 if t is None else t.data_ptr() for t in tensors], torch.int64, device)


def block_plan(numels: Sequence[int], block: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """(plan, num_blocks); see the module docstring for the row layout of `plan`."""
    numels = tuple(int(n) for n in numels)

    def build() -> torch.Tensor:
        blocks_per_seg = [-(-n // block) for n in numels]
        seg = torch.repeat_interleave(torch.arange(len(numels)), torch.tensor(blocks_per_seg, dtype=torch.long))
        first = torch.tensor([0] + blocks_per_seg[:-1], dtype=torch.long).cumsum(0)
        start = (torch.arange(seg.numel()) - first[seg]) * block
        rows = [seg, start, first, torch.tensor(blocks_per_seg), torch.tensor(numels)]
        return _host_to_device(torch.cat([r.to(torch.int32) for r in rows]), device)

    plan = _cached(("plan", str(device), block, numels), build)
    return plan, (plan.numel() - 3 * len(numels)) // 2


def check_tensor(t: torch.Tensor, what: str, device: torch.device, dtypes: tuple[torch.dtype, ...]) -> None:
    """Clear errors for the things the kernels can't handle: wrong device, dtype, layout or size."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a tensor, got {type(t).__name__}")
    if t.device != device:
        raise ValueError(f"{what} is on {t.device}, expected {device} (all tensors of one call share a device)")
    if t.dtype not in dtypes:
        raise TypeError(f"{what} has dtype {t.dtype}; the Triton kernel supports {', '.join(map(str, dtypes))}")
    if not t.is_contiguous():
        raise ValueError(f"{what} is not contiguous (shape {tuple(t.shape)}, stride {t.stride()}); the kernel "
                         "addresses flat row-major memory and writes in place, so pass a contiguous tensor")
    if t.numel() > MAX_NUMEL:
        raise ValueError(f"{what} has {t.numel()} elements; the kernel supports at most {MAX_NUMEL}")


def triton_dtype(dtype: torch.dtype):
    import triton.language as tl

    return {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dtype]
