"""Public ops of prunerl. Each dispatches between a Triton kernel and the plain-PyTorch reference.

- `topk_magnitude_masks(weights, keep_counts)`: per-tensor magnitude top-k masks (pruning masks).
- `masked_adam_(params, grads, exp_avgs, exp_avg_sqs, masks, *, step, lr, beta1, beta2, eps, weight_decay,
  moments)`: fused Adam step followed by re-masking.
- `graph_tables()`: hold the kernels' device tables that a CUDA-graph capture uses (keep the returned
  object next to the graph).

Dispatch (`backend_for`): tensors on CUDA use Triton; on the CPU, masked Adam uses PyTorch's fused Adam then
re-masking (`kernels.fused_cpu`) and the masks come from the reference; anything else uses the reference in
`kernels.reference`. The environment variable `PRUNERL_KERNELS=triton|fused|torch` forces one path
(`torch` is the reference everywhere; on a CPU, `triton` runs the kernels under `TRITON_INTERPRET=1`, which
must be set before `kernels` is first imported).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

import torch

from kernels._utils import GraphTables, graph_tables
from kernels.fused_cpu import masked_adam_fused_
from kernels.reference import MOMENTS_MODES, masked_adam_ref_, topk_magnitude_masks_ref

__all__ = ["topk_magnitude_masks", "masked_adam_", "backend_for", "graph_tables", "GraphTables", "MOMENTS_MODES"]

_BACKENDS = ("auto", "triton", "fused", "torch")


def backend_for(device: torch.device) -> str:
    """'triton', 'fused' or 'torch' (the reference): what the public ops use for tensors on `device`."""
    choice = os.environ.get("PRUNERL_KERNELS", "auto").strip().lower() or "auto"
    if choice not in _BACKENDS:
        raise ValueError(f"PRUNERL_KERNELS={choice!r}; expected one of {_BACKENDS}")
    if choice == "auto":
        return {"cuda": "triton", "cpu": "fused"}.get(torch.device(device).type, "torch")
    return choice


def topk_magnitude_masks(weights: Sequence[torch.Tensor], keep_counts, *, out=None, zero_pruned: bool = False,
                         exp_avgs=None, exp_avg_sqs=None) -> list[torch.Tensor]:
    """For each tensor, a bool mask with exactly `keep_counts[i]` True entries at the largest |w|.

    Ties are broken by lower flat index; a keep count of 0 gives an all-False mask. See
    `kernels.reference` for the NaN rule. Optional, in place: `out` masks to write into (returned),
    `zero_pruned` zeroes the pruned weights, `exp_avgs` / `exp_avg_sqs` get zeroed at pruned entries.
    The Triton path (CUDA) needs contiguous tensors of one dtype and raises otherwise; the CPU paths accept
    any layout. No backend writes into an output that overlaps another tensor of the call (strided views
    that interleave within one storage count as overlapping). A repeated call on the same tensor objects
    starts from the previous threshold (pass the same list of tensors, not new views, at every call).
    """
    kwargs = dict(out=out, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs)
    if not (type(weights) in _LISTS and type(out) in _PLAIN and type(exp_avgs) in _PLAIN
            and type(exp_avg_sqs) in _PLAIN):
        _refuse_bare_tensors(weights=weights, **kwargs)
        _refuse_none(weights=weights)
    if len(weights) == 0:
        return []
    try:
        if backend_for(weights[0].device) == "triton":
            triton_op = _triton_module("topk_mask").topk_magnitude_masks_triton
            return triton_op(weights, keep_counts, zero_pruned=zero_pruned, **kwargs)
        return topk_magnitude_masks_ref(weights, keep_counts, zero_pruned=zero_pruned, **kwargs)
    except (TypeError, AttributeError):
        _name_non_tensors(weights=weights, **kwargs)
        raise


def masked_adam_(params, grads, exp_avgs, exp_avg_sqs, masks, *, step, lr: float, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0, moments: str = "faithful",
                 pruned_are_zero: bool = False) -> None:
    """In-place Adam (torch.optim.Adam semantics, bias-corrected) on every tensor, then `param *= mask`.

    `masks[i]` may be None for tensors that are never pruned; a uint8 mask keeps where it is nonzero. `step` is
    the 1-based step count after this update: an int, or a 0-d tensor on the parameters' device (CUDA-graph
    capturable on the Triton path, which reads it on the device and so cannot check it: it must hold an integer
    >= 1, else the update is wrong, e.g. NaN at 0). `weight_decay` is coupled L2 as in torch.optim.Adam (g + wd
    * p enters the moments). `pruned_are_zero=True` promises that pruned weights are already exactly 0, which
    lets the Triton kernel skip them: the result is the same when the promise holds; when it does not, the
    Triton path leaves the skipped pruned weights as they were (unmasked) where the CPU paths, which ignore the
    flag, zero them. The Triton path needs contiguous tensors, one gradient dtype per call.
    """
    if not (type(params) in _LISTS and type(grads) in _LISTS and type(exp_avgs) in _LISTS
            and type(exp_avg_sqs) in _LISTS and type(masks) in _LISTS):
        _refuse_bare_tensors(params=params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs, masks=masks)
        _refuse_none(params=params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs, masks=masks)
    if len(params) == 0:
        return
    try:
        backend = backend_for(params[0].device)
        if backend == "triton":
            triton_op = _triton_module("masked_adam").masked_adam_triton_
            return triton_op(params, grads, exp_avgs, exp_avg_sqs, masks, step=step, lr=lr, beta1=beta1, beta2=beta2,
                             eps=eps, weight_decay=weight_decay, moments=moments, pruned_are_zero=pruned_are_zero)
        adam = masked_adam_fused_ if backend == "fused" else masked_adam_ref_
        return adam(params, grads, exp_avgs, exp_avg_sqs, masks, step=step, lr=lr, beta1=beta1, beta2=beta2,
                    eps=eps, weight_decay=weight_decay, moments=moments)
    except (TypeError, AttributeError):
        _name_non_tensors(params=params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs, masks=masks,
                          may_be_none=("masks",))
        raise


def _triton_module(name: str):
    """`kernels.<name>`, imported on first use (only then is `TRITON_INTERPRET` read); an import statement
    on every call cost ~2 us of a call's host time, a look in sys.modules costs ~0.1."""
    module = sys.modules.get(f"kernels.{name}")
    return module if module is not None else importlib.import_module(f"kernels.{name}")


# --- misuse with a clear message ---------------------------------------------------------------------------------
# The happy path pays a type lookup per list argument (~0.2 us a call; isinstance(x, torch.Tensor) costs ~130 ns
# each): the entries are examined only once a call has failed with a TypeError or AttributeError (a None inside a
# list fails deep in a backend, far from its cause).
_LISTS = (list, tuple)
_PLAIN = (*_LISTS, type(None))  # (optional lists)


def _refuse_bare_tensors(**lists) -> None:
    """A tensor where a list of tensors is expected would be iterated row by row: per-row masks, not one."""
    for name, seq in lists.items():
        if isinstance(seq, torch.Tensor):
            raise TypeError(f"{name} must be a list of tensors, got a tensor of shape {tuple(seq.shape)} (iterating "
                            "it would give its rows); for one tensor, pass a list of one")


def _refuse_none(**lists) -> None:
    """Lists that are required (a None list was "'NoneType' object is not iterable", deep in a backend)."""
    for name, seq in lists.items():
        if seq is None:
            hint = " (for no masks, pass [None] * len(params): plain Adam)" if name == "masks" else ""
            raise TypeError(f"{name} must be a list of tensors, got None{hint}")


def _name_non_tensors(may_be_none: tuple[str, ...] = (), **lists) -> None:
    """Raise a TypeError naming the first entry of the lists that is not a tensor (None allowed in `may_be_none`
    and for a list that is None); return if there is none (the caller re-raises its own error)."""
    for name, seq in lists.items():
        if seq is None:
            continue
        for i, t in enumerate(seq):
            if not isinstance(t, torch.Tensor) and not (t is None and name in may_be_none):
                raise TypeError(f"{name}[{i}] must be a tensor, got {type(t).__name__}") from None
