"""Launch plans shared by the multi-tensor kernels in `kernels.topk_mask` and `kernels.masked_adam`.

Both kernels treat a list of tensors as one launch over "segments" (one segment per tensor). A kernel
program handles BLOCK consecutive elements of one segment and finds its tensors through small device
tables:

- a *pointer table*: int64 `data_ptr()` of each tensor (0 for a missing tensor, e.g. a None mask). The
  kernel loads the address and casts it to a typed pointer, so any number of tensors costs one launch
  and no concatenation copy.
- a *block plan*: int32 rows `block_seg[nb] | block_start[nb] | seg_first_block[ns] | seg_num_blocks[ns]
  | seg_numel[ns]`, which maps program ids to (segment, offset) and segments to their block ranges.

Cheap calls. Everything a launch needs besides per-call scalars (the validation of every tensor, alias
checks, the device tables, workspaces) is a *launch plan*, built once and cached in a `PlanCache` keyed by
the identity of every tensor of the call and checked against their `data_ptr()`s. A tensor's shape, dtype
and strides are checked when its plan is built; the plan is dropped as soon as any of its tensors is
garbage collected (a weakref callback), so a live tensor at the same address is the same tensor. What the
key can't see: in-place metadata changes of a live tensor that keep its address (`t.t_()`, `t.resize_()` to
a smaller size, `t.set_()` on the same storage); don't do those to a tensor between calls. (Reading the
shape, dtype and strides of every tensor on every call would cost ~0.3 us per tensor, ~45 us for a
network's ~150 Adam tensors.) New gradient tensors at every step (autograd after `zero_grad(set_to_none=True)`)
miss that cache: masked Adam keeps a second one keyed by all but the gradients, and then checks and tables
only the gradients (`Spans` checks them against the written tensors).

CUDA graphs. A graph replays the kernels with the device addresses of their tables as recorded. So:
- every device buffer of a plan used while a capture is under way is *held for the graph*: by the innermost
  `graph_tables()` context (which the graph's owner keeps next to the graph; on an exception inside it, e.g.
  a failed capture, it lets go at once), or, outside any such context, for the rest of the process. The
  plan cache may evict the plan; the buffers stay alive;
- a plan first built inside a capture is never cached, nor are the tables it had to make: those were
  written by fill kernels the graph recorded (a host-to-device copy of pageable memory can't be captured),
  which have run only if the graph replays. They are used for that call and held for the graph. Tables
  are cached by value (addresses, sizes), so such a plan reuses every table a warm-up call made.
"""

from __future__ import annotations

import bisect
import contextlib
import weakref
from collections import OrderedDict
from collections.abc import Sequence

import torch

# Offsets are int32 inside the kernels (cheaper address math); tensors beyond this are rejected.
MAX_NUMEL = 2**31 - 1

# Entries a table may have to be built inside a CUDA-graph capture (one fill kernel each): pointer tables
# (one entry per tensor) fit; block plans (size-keyed, so made by a warm-up call) never need to.
MAX_CAPTURED_ENTRIES = 256


# --- device tables -------------------------------------------------------------------------------------------


def capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


# Device tables by value (pointer tables by the addresses they hold, block plans by tensor sizes), shared by
# all plans: a plan first built inside a capture (e.g. for a temporary allocated in the graph) still finds
# the tables warm-up calls made, and only the new ones are written by fill kernels. A table a plan uses stays
# alive with the plan; eviction here only forgets it.
_TABLES_SIZE = 1024
_tables: OrderedDict[tuple, torch.Tensor] = OrderedDict()


def device_table(key: tuple, values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The cached 1-D device tensor for `key`, else one holding `values()`: a host-to-device copy, or fill
    kernels inside a capture (then not cached: it holds its values only once the graph replays)."""
    key = (str(device), dtype, *key)
    table = _tables.get(key)
    if table is not None:
        _tables.move_to_end(key)
        return table
    host = torch.tensor(list(values()), dtype=dtype)
    if capturing(device):
        if host.numel() > MAX_CAPTURED_ENTRIES:
            raise RuntimeError(f"a {host.numel()}-entry kernel table was first needed inside a CUDA-graph capture; "
                               "run the op once before capturing (tables are cached by tensor sizes and addresses)")
        return filled_on_device(host, device)
    if device.type == "cuda":  # a copy from pageable memory would wait for the GPU: stage it in pinned memory
        host = host.pin_memory()  # (the caching host allocator keeps the block until the copy is done)
    table = _tables[key] = host.to(device, non_blocking=True)
    if len(_tables) > _TABLES_SIZE:
        _tables.popitem(last=False)
    return table


def filled_on_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A device copy of 1-D `host` written by one fill kernel per entry, with no host-to-device copy: a graph
    capture records the kernels with the values as arguments, so every replay writes them again."""
    table = torch.empty(host.shape, dtype=host.dtype, device=device)
    for i, value in enumerate(host.tolist()):
        table[i].fill_(value)
    return table


def pointer_table(tensors: Sequence[torch.Tensor | None], device: torch.device) -> torch.Tensor:
    """int64 device table of the tensors' data pointers (0 for None)."""
    ptrs = tuple(0 if t is None else t.data_ptr() for t in tensors)
    return device_table(("pointers", *ptrs), lambda: ptrs, torch.int64, device)


def int_table(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """int64 device table of `values` (e.g. keep counts given on the host)."""
    values = tuple(int(v) for v in values)
    return device_table(("ints", *values), lambda: values, torch.int64, device)


def block_plan_values(numels: Sequence[int], block: int) -> tuple[list[int], int]:
    """(rows of the block plan as one flat list, number of blocks); see the module docstring."""
    blocks_per_seg = [-(-int(n) // block) for n in numels]
    seg, start, first = [], [], []
    for s, nb in enumerate(blocks_per_seg):
        first.append(len(seg))
        seg += [s] * nb
        start += [i * block for i in range(nb)]
    return seg + start + first + blocks_per_seg + [int(n) for n in numels], len(seg)


def block_plan(numels: Sequence[int], block: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """(plan, num_blocks): the int32 block plan on the device, cached by the sizes."""
    numels = tuple(int(n) for n in numels)
    n_blocks = sum(-(-n // block) for n in numels)
    return device_table(("plan", block, *numels), lambda: block_plan_values(numels, block)[0], torch.int32,
                        device), n_blocks


# --- validation ------------------------------------------------------------------------------------------------


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


def check_no_aliasing(named: Sequence[tuple[str, torch.Tensor | None, bool]]) -> None:
    """Raise if a tensor the kernel writes overlaps in memory with any other tensor of the call.

    `named`: (name, tensor, written) triples. Read-only tensors may share memory with each other. A tensor's
    span runs from its first element to its last by its strides (a strided view's whole extent, so views that
    interleave within one storage count as overlapping).
    """
    spans = sorted((*_span(t), name, written) for name, t, written in named if t is not None and t.numel() > 0)
    # Sweep in address order, remembering the span reaching furthest so far and the furthest written one.
    reach = reach_written = None
    for lo, hi, name, written in spans:
        for prev in (reach_written, reach if written else None):
            if prev is not None and lo < prev[0]:
                writer = name if written else prev[1]
                raise ValueError(f"{name} overlaps {prev[1]} in memory; the kernel writes {writer} in place, so "
                                 "every tensor it writes must have memory of its own")
        if reach is None or hi > reach[0]:
            reach = (hi, name)
        if written and (reach_written is None or hi > reach_written[0]):
            reach_written = (hi, name)


def _span(t: torch.Tensor) -> tuple[int, int]:
    """(first byte, one past the last) of a non-empty tensor's memory, by its strides."""
    if t.is_contiguous():  # (every tensor of the Triton path: the cheap case)
        elements = t.numel()
    else:
        elements = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + elements * t.element_size()


class Spans:
    """The memory spans of the tensors a kernel writes (already checked not to overlap one another), for checking
    later inputs it only reads against them in ~1 us per tensor (`check_no_aliasing` sorts everything again)."""

    def __init__(self, written: Sequence[tuple[str, torch.Tensor | None, bool]]):
        spans = sorted((*_span(t), name) for name, t, _ in written if t is not None and t.numel() > 0)
        # Disjoint and sorted by start, so the ends are sorted too: the one span that can reach past a read's
        # start is the last one that starts before the read ends.
        self._starts = [lo for lo, _, _ in spans]
        self._spans = spans

    def check_reads(self, named: Sequence[tuple[str, torch.Tensor | None]]) -> None:
        """Raise as `check_no_aliasing` would if a read tensor overlaps a written one."""
        for name, t in named:
            if t is None or t.numel() == 0:
                continue
            lo, hi = _span(t)
            i = bisect.bisect_left(self._starts, hi) - 1
            if i >= 0 and self._spans[i][1] > lo:
                writer = self._spans[i][2]
                raise ValueError(f"{name} overlaps {writer} in memory; the kernel writes {writer} in place, so "
                                 "every tensor it writes must have memory of its own")


def all_aligned(tensors: Sequence[torch.Tensor | None], alignment: int = 16) -> bool:
    """Whether every tensor's data pointer is a multiple of `alignment` bytes (vectorised loads are safe)."""
    return all(t.data_ptr() % alignment == 0 for t in tensors if t is not None)


def persistent_programs(device: torch.device, per_sm: int, interpreter_programs: int) -> int:
    """Programs of a persistent grid-stride kernel: `per_sm` per SM of a CUDA device; under the interpreter a
    few, so that the tests walk the grid-stride loop."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count * per_sm
    return interpreter_programs


def device_guard(device: torch.device):
    """A context that makes `device` current for the launches (Triton launches on the current device)."""
    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return _NO_GUARD


_NO_GUARD = contextlib.nullcontext()  # reusable; one per call cost ~0.2 us


def triton_dtype(dtype: torch.dtype):
    import triton.language as tl

    return {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dtype]


# --- plan cache and graph ownership ------------------------------------------------------------------------------


class GraphTables:
    """Device buffers a captured CUDA graph reads. Keep this object as long as the graph (see `graph_tables`)."""

    def __init__(self):
        self._buffers: dict[int, torch.Tensor] = {}

    def hold(self, buffers: Sequence[torch.Tensor]) -> None:
        for b in buffers:
            self._buffers[id(b)] = b

    def release(self) -> None:
        """Let the buffers go (call when the graph is deleted, or let this object be collected)."""
        self._buffers.clear()

    def __len__(self) -> int:
        return len(self._buffers)


_graph_owners: list[GraphTables] = []
# Buffers used by captures outside any `graph_tables()` context: nobody can tell when their graph dies.
_held_for_process = GraphTables()


@contextlib.contextmanager
def graph_tables():
    """Hold the kernels' device buffers used by a CUDA-graph capture in this block; yields a `GraphTables`.

        with kernels.graph_tables() as tables, torch.cuda.graph(graph):
            kernels.masked_adam_(...)
        keep = (graph, tables)  # the graph's owner keeps both

    If the block raises (a failed capture), the buffers are let go at once.
    """
    owner = GraphTables()
    _graph_owners.append(owner)
    try:
        yield owner
    except BaseException:
        owner.release()
        raise
    finally:
        _graph_owners.remove(owner)


def hold_for_capture(buffers: Sequence[torch.Tensor]) -> None:
    """Called by launchers, while a capture is under way, with every device buffer the launches read."""
    (_graph_owners[-1] if _graph_owners else _held_for_process).hold(buffers)


class PlanCache:
    """Launch plans keyed by the identities of a call's tensors and checked against their addresses.

    A plan is any object with a `buffers` attribute (its device tensors); `put` gives it `ptrs`. It is
    dropped when any tensor it was built for is garbage collected, or when more than `size` newer plans were
    inserted (oldest first: a hit does not reorder, which would hash the long key a second time).
    """

    def __init__(self, size: int):
        self.size = size
        self._plans: dict[tuple, object] = {}

    def get(self, key: tuple, ptrs: tuple):
        plan = self._plans.get(key)
        return plan if plan is not None and plan.ptrs == ptrs else None

    def put(self, key: tuple, ptrs: tuple, plan, tensors: Sequence[torch.Tensor | None]) -> None:
        def drop(_ref, key=key, plan=plan):
            if self._plans.get(key) is plan:
                del self._plans[key]

        plan.ptrs = ptrs
        # The weakrefs live in the plan: their callbacks fire only while the plan is alive.
        plan.tensor_refs = [weakref.ref(t, drop) for t in tensors if t is not None]
        self._plans.pop(key, None)  # a stale plan (same tensors, new addresses) goes to the back
        self._plans[key] = plan
        while len(self._plans) > self.size:
            del self._plans[next(iter(self._plans))]

    def clear(self) -> None:
        self._plans.clear()

    def __len__(self) -> int:
        return len(self._plans)


def plan_for(cache: PlanCache, key: tuple, ptrs: tuple, tensors, device: torch.device, build):
    """The cached plan for `key` at addresses `ptrs`, or a new one from `build()`; holds its buffers for a
    graph being captured (a plan first built inside a capture is not cached, see the module docstring)."""
    plan = cache.get(key, ptrs)
    if capturing(device):
        if plan is None:
            plan = build()
            plan.ptrs = ptrs
        hold_for_capture(plan.buffers)
    elif plan is None:
        plan = build()
        cache.put(key, ptrs, plan, tensors)
    return plan
