"""Plain-PyTorch reference of every public op in `kernels`.

It has three jobs: the test oracle for the Triton kernels, the baseline of the bench suite, and the CPU
fallback the agents use when there is no GPU. It is written for clarity, not speed.

Ops
- `topk_magnitude_masks_ref(weights, keep_counts)`: per tensor, exactly `keep_counts[i]` True entries at
  the largest |w|. Ties are broken by flat index (lower index kept), so the count is always exact.
  NaN rule: |NaN| ranks above +Inf (the order of the IEEE bit patterns of |w|, which the Triton radix
  select also uses), so a NaN weight is kept first and the mask still has exactly k True entries.
- `masked_adam_ref_(params, grads, exp_avgs, exp_avg_sqs, masks, step=..., ...)`: one step of
  `torch.optim.Adam` (bias-corrected, same operation order, coupled `weight_decay`: g + wd * p before the
  moments, like optax's add_decayed_weights then adam), then `param *= mask`. `moments` chooses
  what happens to the Adam moments of pruned weights (mask == 0):
    "faithful": updated like every other weight (JaxPruner: the optimizer never sees the mask);
    "reset":    set to zero after the update;
    "frozen":   left exactly as they were before the step (and the weight stays zero).
  A mask of None means "no mask" (biases and other unprunable tensors).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

import torch

from kernels._utils import check_no_aliasing

MOMENTS_MODES = ("faithful", "reset", "frozen")


def check_count_dtype(keep_counts: torch.Tensor) -> None:
    """Keep counts in a tensor must be integers (a float tensor's 2.5 would become 2); host or device."""
    if keep_counts.dtype.is_floating_point or keep_counts.dtype.is_complex or keep_counts.dtype == torch.bool:
        raise TypeError(f"keep_counts must be an integer tensor, got {keep_counts.dtype}")


def _check_keep_counts(weights: Sequence[torch.Tensor], keep_counts) -> list[int]:
    if isinstance(keep_counts, torch.Tensor):
        check_count_dtype(keep_counts)
        if keep_counts.dim() != 1:  # a 0-d tensor's tolist() is a bare int
            raise ValueError(f"keep_counts must be one count per weight tensor (1-D); got a tensor of shape "
                             f"{tuple(keep_counts.shape)}")
        counts = keep_counts.tolist()
    elif isinstance(keep_counts, Iterable) and not isinstance(keep_counts, Mapping | str | bytes):
        counts = list(keep_counts)
    else:  # an int was "'int' object is not iterable", a dict a KeyError
        raise TypeError(f"keep_counts must be a list or 1-D tensor of one count per weight tensor; got "
                        f"{type(keep_counts).__name__}")
    if len(counts) != len(weights):
        raise ValueError(f"got {len(weights)} weight tensors but {len(counts)} keep counts")
    for i, (w, k) in enumerate(zip(weights, counts)):
        if isinstance(k, bool | float | complex) or not isinstance(k, numbers.Integral):  # 2.5 would become 2
            raise TypeError(f"keep_counts[{i}] = {k!r} ({type(k).__name__}); keep counts must be integers (round "
                            "them first, e.g. agents.pruning.keep_count)")
        if not (0 <= int(k) <= w.numel()):
            raise ValueError(f"keep_counts[{i}] = {k} is outside [0, {w.numel()}] for a tensor of shape "
                             f"{tuple(w.shape)}")
        if w.is_complex() or not w.is_floating_point():
            raise TypeError(f"weights[{i}] has dtype {w.dtype}; magnitude pruning needs a real floating tensor")
    return [int(k) for k in counts]


def check_mask_outputs(weights: Sequence[torch.Tensor], out, exp_avgs, exp_avg_sqs) -> None:
    """The optional in-place outputs of the mask ops: as many as the weights, each of its weight's shape and
    device, bool masks and float32 moments (the Triton launcher adds its own layout checks)."""
    if (exp_avgs is None) != (exp_avg_sqs is None):
        raise ValueError("give both exp_avgs and exp_avg_sqs, or neither")
    for name, seq, dtype in (("out", out, torch.bool), ("exp_avgs", exp_avgs, torch.float32),
                             ("exp_avg_sqs", exp_avg_sqs, torch.float32)):
        if seq is None:
            continue
        seq = list(seq)
        if len(seq) != len(weights):
            raise ValueError(f"got {len(weights)} weights but {len(seq)} {'out masks' if name == 'out' else name}")
        for i, (t, w) in enumerate(zip(seq, weights)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}[{i}] must be a tensor, got {type(t).__name__}")
            if t.dtype != dtype:
                raise TypeError(f"{name}[{i}] has dtype {t.dtype}; expected {dtype}")
            if t.shape != w.shape:
                raise ValueError(f"{name}[{i}] has shape {tuple(t.shape)}, weights[{i}] has {tuple(w.shape)}")
            if t.device != w.device:
                raise ValueError(f"{name}[{i}] is on {t.device}, weights[{i}] on {w.device}")


@torch.no_grad()
def topk_magnitude_masks_ref(weights: Sequence[torch.Tensor], keep_counts, *, out=None, zero_pruned: bool = False,
                             exp_avgs=None, exp_avg_sqs=None) -> list[torch.Tensor]:
    """Boolean masks (same shapes as `weights`) keeping the `keep_counts[i]` largest |w| of each tensor.

    Optional, all in place: `out` masks to write into (returned); `zero_pruned` sets pruned weights to 0;
    `exp_avgs` / `exp_avg_sqs` (Adam moments) are set to 0 at pruned entries (the "reset" option).
    """
    counts = _check_keep_counts(weights, keep_counts)
    check_mask_outputs(weights, out, exp_avgs, exp_avg_sqs)
    check_mask_aliasing(weights, out, exp_avgs, exp_avg_sqs, zero_pruned)
    masks = []
    for w, k in zip(weights, counts):
        score = w.detach().abs().flatten().float()
        # A stable descending sort keeps equal scores in index order, so the first k are exactly the
        # largest k with lower flat index winning ties. torch.sort puts NaN above +Inf when descending.
        order = torch.sort(score, descending=True, stable=True).indices
        flat = torch.zeros(score.numel(), dtype=torch.bool, device=w.device)
        flat[order[:k]] = True
        masks.append(flat.view(w.shape))
    if out is not None:
        for o, mask in zip(out, masks, strict=True):
            o.copy_(mask)
        masks = list(out)
    for i, mask in enumerate(masks):
        for t in ([weights[i]] if zero_pruned else []) + [seq[i] for seq in (exp_avgs, exp_avg_sqs) if seq]:
            t.masked_fill_(~mask, 0)
    return masks


def check_adam_inputs(params, grads, exp_avgs, exp_avg_sqs, masks, moments: str) -> None:
    """Shape, dtype and device checks shared by the reference and the Triton launcher."""
    n = len(params)
    for name, seq in (("grads", grads), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs), ("masks", masks)):
        if len(seq) != n:
            raise ValueError(f"masked_adam_: got {n} params but {len(seq)} {name}")
    if moments not in MOMENTS_MODES:
        raise ValueError(f"masked_adam_: moments={moments!r}; expected one of {MOMENTS_MODES}")
    for i, (p, g, m, v, mask) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, masks)):
        if p.dtype != torch.float32 or m.dtype != torch.float32 or v.dtype != torch.float32:
            raise TypeError(f"masked_adam_: params and moments must be float32 (tensor {i}: param {p.dtype}, "
                            f"exp_avg {m.dtype}, exp_avg_sq {v.dtype})")
        if g.dtype not in (torch.float32, torch.bfloat16):
            raise TypeError(f"masked_adam_: grads[{i}] has dtype {g.dtype}; expected float32 or bfloat16")
        if mask is not None and mask.dtype not in (torch.bool, torch.uint8):
            raise TypeError(f"masked_adam_: masks[{i}] has dtype {mask.dtype}; expected bool (or uint8 0/1)")
        for name, t in (("grad", g), ("exp_avg", m), ("exp_avg_sq", v), ("mask", mask)):
            if t is None:
                continue
            if t.shape != p.shape:
                raise ValueError(f"masked_adam_: {name} of tensor {i} has shape {tuple(t.shape)}, "
                                 f"param has {tuple(p.shape)}")
            if t.device != p.device:
                raise ValueError(f"masked_adam_: {name} of tensor {i} is on {t.device}, param on {p.device}")


def check_mask_aliasing(weights, out, exp_avgs, exp_avg_sqs, zero_pruned: bool, keep_counts=None) -> None:
    """What a mask selection writes (`out`, the moments, the weights with `zero_pruned`) must not overlap any
    other tensor of the call. Shared by the reference and the Triton launcher."""
    check_no_aliasing([(f"{name}[{i}]", t, written) for name, seq, written in (
        ("weights", weights, zero_pruned), ("out", out or [], True), ("exp_avgs", exp_avgs or [], True),
        ("exp_avg_sqs", exp_avg_sqs or [], True)) for i, t in enumerate(seq)] + [("keep_counts", keep_counts, False)])


def check_adam_hyperparameters(lr, beta1, beta2, eps, weight_decay) -> None:
    """The ranges torch.optim.Adam accepts (a negative lr would ascend the loss; beta = 1 divides by zero in the
    bias correction), and finite values. Checked by every backend."""
    for name, value, low, high in (("lr", lr, 0.0, math.inf), ("beta1", beta1, 0.0, 1.0),
                                   ("beta2", beta2, 0.0, 1.0), ("eps", eps, 0.0, math.inf),
                                   ("weight_decay", weight_decay, 0.0, math.inf)):
        if not (math.isfinite(value) and low <= value < high):
            bounds = f"[{low:g}, {high:g})" if high < math.inf else f">= {low:g} and finite"
            raise ValueError(f"masked_adam_: {name} = {value!r}; expected {bounds}")


def check_adam_aliasing(params, grads, exp_avgs, exp_avg_sqs, masks) -> None:
    """The tensors an update writes (params, moments) must not overlap any other tensor of the call."""
    written = [(f"{name}[{i}]", t, True) for name, seq in (
        ("params", params), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)) for i, t in enumerate(seq)]
    read = [(f"{name}[{i}]", t, False) for name, seq in (("grads", grads), ("masks", masks)) for i, t in enumerate(seq)]
    check_no_aliasing(written + read)


def as_keep(mask: torch.Tensor) -> torch.Tensor:
    """A mask as bool: any nonzero uint8 keeps, as in the Triton kernels (multiplying by a uint8 2 doubled)."""
    return mask if mask.dtype == torch.bool else mask != 0


def adam_step(step) -> float:
    """The 1-based step count (an int, a whole float, or a one-element tensor, read on the host) as a float,
    checked as every backend takes it: a whole number in [1, 2**32), the range of the Triton kernel's integer
    powers (a step of 1.5 was truncated to 1 there and used as 1.5 here; NaN made NaN weights here)."""
    if isinstance(step, torch.Tensor):
        if step.numel() != 1:
            raise ValueError(f"masked_adam_: step must be an int or a one-element tensor; got shape "
                             f"{tuple(step.shape)}")
        value = step.item()
    else:
        value = step
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            1 <= value < 2**32 and float(value).is_integer()):
        raise ValueError(f"masked_adam_: step must be a whole number in [1, 2**32) (1-based, after increment); "
                         f"got {step!r}")
    return float(value)


@torch.no_grad()
def masked_adam_ref_(params, grads, exp_avgs, exp_avg_sqs, masks, *, step, lr: float, beta1: float = 0.9,
                     beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                     moments: str = "faithful") -> None:
    """In-place Adam step with `torch.optim.Adam` semantics, followed by `param *= mask`.

    `step` is the 1-based step count *after* this update (as in torch.optim.Adam), an int or a 0-d tensor.
    """
    check_adam_inputs(params, grads, exp_avgs, exp_avg_sqs, masks, moments)
    check_adam_hyperparameters(lr, beta1, beta2, eps, weight_decay)
    check_adam_aliasing(params, grads, exp_avgs, exp_avg_sqs, masks)
    step = adam_step(step)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    step_size = lr / bias_correction1
    for p, g, m, v, mask in zip(params, grads, exp_avgs, exp_avg_sqs, masks):
        g = g.float()
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)  # torch.optim.Adam(weight_decay=...): coupled L2
        if mask is not None:
            mask = as_keep(mask)
        if mask is not None and moments == "frozen":
            old_m, old_v = m.clone(), v.clone()
        # Same operation order as torch.optim.Adam's single-tensor path.
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)
        p.addcdiv_(m, denom, value=-step_size)
        if mask is None:
            continue
        p.mul_(mask)
        if moments == "reset":
            m.mul_(mask)
            v.mul_(mask)
        elif moments == "frozen":
            m.copy_(torch.where(mask, m, old_m))
            v.copy_(torch.where(mask, v, old_v))
