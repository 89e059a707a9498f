"""Gradual magnitude pruning (Zhu & Gupta 2017) as in the paper's official JaxPruner Dopamine baseline.

Faithful to the project's decision 1 (`shared/spec/paper.md`):
- prunable tensors: every parameter with ndim > 1 (all conv and linear weights); biases never;
- per-layer targets from ERK (default) or uniform; per-layer magnitude top-k (or one global top-k);
- cubic schedule on gradient steps, masks updated every `update_freq` steps inside [start, end], inclusive:
      progress = clip(step + 1 - start, 0, end - start) / (end - start);  s = s_F * (1 - (1 - progress)^3)
  and at the end step too, so the masks always reach s_F (JaxPruner skips the end when it is not a multiple of
  update_freq; the paper's 500k / 2M / 1,000 are unaffected);
- keep count per layer max(1, round(n * (1 - s))) with round-half-to-even; ties kept by lower flat index;
- gradients are not masked and Adam moments are untouched ("faithful"); weights are re-masked after every
  optimizer step (fused into `MaskedAdam`, which calls `kernels.masked_adam_`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

import kernels
from kernels.reference import check_adam_hyperparameters


@dataclass
class PruningConfig:
    final_sparsity: float = 0.0
    """Final sparsity s_F of the prunable weights; 0 trains the dense network (the paper prunes to 0.95)."""
    distribution: Literal["erk", "uniform"] = "erk"
    """How s_F is spread over layers: Erdos-Renyi-Kernel (official code) or the same sparsity everywhere."""
    scope: Literal["layer", "global"] = "layer"
    """Top-k per layer (official code) or one global magnitude threshold over all prunable weights."""
    start_fraction: float = 0.2
    """Pruning starts at this fraction of the run's nominal gradient steps, total_steps x replay_ratio (JaxPruner's
    500k at 40M frames)."""
    end_fraction: float = 0.8
    """Pruning ends (final sparsity reached) at this fraction of the nominal gradient steps (JaxPruner's 2M at 40M
    frames), or at the run's last gradient step if its min_replay warm-up leaves fewer."""
    start_step: int | None = None
    """Explicit start gradient step; overrides start_fraction."""
    end_step: int | None = None
    """Explicit end gradient step; overrides end_fraction (and is kept even beyond the run's last step)."""
    update_freq: int = 1000
    """Masks are recomputed every this many gradient steps inside [start, end], and at the end step (JaxPruner
    gin: 1,000)."""
    mask_gradients: bool = False
    """Multiply gradients by the mask before Adam (not in the official code)."""
    moments: Literal["faithful", "reset", "frozen"] = "faithful"
    """Adam moments of pruned weights: updated (official), zeroed, or left unchanged."""
    method: Literal["gmp", "rigl"] = "gmp"
    """How the network reaches final_sparsity: gradual magnitude pruning (the paper's method), or RigL's dynamic
    sparse training at that sparsity from step 0 (Evci et al. 2020, Fig. 22; options under --rigl.*)."""
    fixed_mask: str | None = None
    """RUN_DIR of a finished GMP run (same game, agent and network; final_sparsity, distribution and scope set to
    its): train with its final masks fixed from step 0, starting from its initial weights (the lottery ticket of
    Fig. 13)."""

    def __post_init__(self):
        if not (0.0 <= self.final_sparsity < 1.0):
            raise ValueError(f"final_sparsity must be in [0, 1), got {self.final_sparsity}")
        if self.update_freq < 1:
            raise ValueError(f"update_freq must be >= 1, got {self.update_freq}")
        if not (0.0 <= self.start_fraction <= self.end_fraction <= 1.0):
            raise ValueError(f"need 0 <= start_fraction <= end_fraction <= 1, got {self.start_fraction}, "
                             f"{self.end_fraction}")
        if self.moments not in kernels.MOMENTS_MODES:
            raise ValueError(f"moments must be one of {kernels.MOMENTS_MODES}, got {self.moments!r}")
        if self.method not in ("gmp", "rigl"):
            raise ValueError(f"pruning.method must be 'gmp' or 'rigl', got {self.method!r}")
        if self.method == "rigl" and self.final_sparsity == 0:
            raise ValueError("--pruning.method rigl trains at --pruning.final-sparsity, which is 0: set it (e.g. 0.95)")
        if self.fixed_mask is not None and (self.method != "gmp" or self.final_sparsity == 0):
            raise ValueError("--pruning.fixed-mask takes the masks of a GMP run: use it with --pruning.method gmp and "
                             "that run's --pruning.final-sparsity")

    def window(self, nominal_grad_steps: int, run_grad_steps: int | None = None) -> tuple[int, int]:
        """(start, end) in gradient steps: the fractions of `nominal_grad_steps` = total_steps x replay_ratio, so
        40M frames at replay ratio 0.25 give JaxPruner's 500k / 2M. If the run takes only `run_grad_steps`
        (its min_replay warm-up does not learn) and a derived end lies beyond its last step, the window ends at
        that last step instead, so the run still reaches the final sparsity."""
        start = self.start_step if self.start_step is not None else round(self.start_fraction * nominal_grad_steps)
        end = self.end_step if self.end_step is not None else round(self.end_fraction * nominal_grad_steps)
        if self.end_step is None and run_grad_steps is not None and end > run_grad_steps - 1:
            end = max(start, run_grad_steps - 1)
        if start < 0 or start > end:
            raise ValueError(f"pruning window needs 0 <= start <= end, got start={start}, end={end}")
        return start, end

    def window_warnings(self, nominal_grad_steps: int, run_grad_steps: int) -> list[str]:
        """What a user should know before a run whose window `window(nominal, run)` is short or out of reach."""
        if self.final_sparsity == 0:
            return []
        start, end = self.window(nominal_grad_steps, run_grad_steps)
        nominal_end = self.window(nominal_grad_steps)[1]
        notes = []
        if start > run_grad_steps - 1:
            notes.append(f"the run takes {run_grad_steps:,} gradient steps and its pruning window starts at step "
                         f"{start:,}: it never prunes (raise --total-steps or lower --agent.min-replay)")
        elif end < nominal_end:
            notes.append(f"the run takes {run_grad_steps:,} gradient steps after its min_replay warm-up, fewer than "
                         f"its pruning window's end {nominal_end:,} ({self.end_fraction:g} of total_steps x "
                         f"replay_ratio): the window ends at the last step, {end:,}, with no training at the final "
                         f"sparsity afterwards")
        elif end > run_grad_steps - 1:
            reached = gmp_sparsity(run_grad_steps - 1, self.final_sparsity, start, end)
            notes.append(f"--pruning.end-step {end:,} lies beyond the run's {run_grad_steps:,} gradient steps: its "
                         f"schedule stops near sparsity {reached:.3f}, not {self.final_sparsity:g}")
        updates = count_mask_updates(start, end, self.update_freq)
        if updates < 10 and start <= run_grad_steps - 1:
            notes.append(f"the pruning window [{start:,}, {end:,}] holds {updates} mask update(s) (every "
                         f"{self.update_freq:,} gradient steps and at its end): the sparsity rises in {updates} "
                         f"jump(s), not along the cubic (lower --pruning.update-freq)")
        return notes


# ---------------------------------------------------------------------------------------------------------
# Schedule and layer-wise targets
# ---------------------------------------------------------------------------------------------------------
def gmp_sparsity(step: int, final_sparsity: float, start: int, end: int) -> float:
    """Sparsity at gradient step `step` (JaxPruner PolynomialSchedule, power 3, note the +1)."""
    if start > end:
        raise ValueError(f"gmp_sparsity needs start <= end, got start={start}, end={end}")
    if end == start:
        progress = 1.0 if step + 1 - start > 0 else 0.0
    else:
        progress = min(max(step + 1 - start, 0), end - start) / (end - start)
    return final_sparsity * (1.0 - (1.0 - progress) ** 3)


def is_mask_update(step: int, start: int, end: int, update_freq: int) -> bool:
    """JaxPruner's update steps (multiples of update_freq inside [start, end]) plus the end step itself."""
    return start <= step <= end and (step % update_freq == 0 or step == end)


def count_mask_updates(start: int, end: int, update_freq: int) -> int:
    """How many steps of [start, end] are mask updates."""
    first = -(-start // update_freq) * update_freq
    multiples = (end - first) // update_freq + 1 if first <= end else 0
    return multiples + (end % update_freq != 0)


def last_mask_update(steps_done: int, start: int, end: int, update_freq: int) -> int | None:
    """The last mask update among the gradient steps 0 .. steps_done - 1, or None before the first one."""
    step = min(steps_done - 1, end)
    if step < start:
        return None
    if step == end:
        return end
    step = step // update_freq * update_freq
    return step if step >= start else None


def _check_sparsity(sparsity: float) -> None:
    if not (0.0 <= sparsity < 1.0):
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")


def uniform_sparsities(shapes: Sequence[Sequence[int]], sparsity: float) -> list[float]:
    _check_sparsity(sparsity)
    return [float(sparsity)] * len(shapes)


def erk_sparsities(shapes: Sequence[Sequence[int]], sparsity: float) -> list[float]:
    """Erdos-Renyi-Kernel per-layer sparsities, the algorithm of JaxPruner's `get_sparsities_erdos_renyi`.

    Density of layer l is eps * sum(shape_l) / prod(shape_l), with eps chosen so the kept weights match
    sum_l (n_l - floor(s * n_l)). Layers whose density would exceed 1 are made dense (largest ratio first)
    and eps is recomputed.
    """
    _check_sparsity(sparsity)
    if sparsity == 0.0:
        return [0.0] * len(shapes)
    sizes = [int(np.prod(s)) for s in shapes]
    raw = [float(np.sum(s)) / n for s, n in zip(shapes, sizes)]
    dense: set[int] = set()
    while True:
        rhs, divisor = 0.0, 0.0
        for i, n in enumerate(sizes):
            n_zeros = int(np.floor(n * sparsity))
            if i in dense:
                rhs -= n_zeros  # as in JaxPruner
            else:
                rhs += n - n_zeros
                divisor += raw[i] * n
        if divisor == 0:
            raise ValueError(f"ERK cannot reach sparsity {sparsity} for shapes {list(shapes)}")
        eps = rhs / divisor
        max_raw = max(raw[i] for i in range(len(sizes)) if i not in dense)
        if max_raw * eps <= 1:
            break
        dense.update(i for i in range(len(sizes)) if i not in dense and raw[i] == max_raw)
    return [0.0 if i in dense else 1.0 - eps * raw[i] for i in range(len(sizes))]


def keep_count(numel: int, sparsity: float) -> int:
    """Weights a layer keeps at `sparsity`: all at 0, else max(1, round-half-even(n * (1 - s)))."""
    if not 0.0 <= sparsity <= 1.0:  # -0.1 kept 110 of 100 weights, 1.5 kept 1, NaN was a bare round() error
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    if sparsity == 0.0:
        return numel
    return max(1, round(numel * (1.0 - sparsity)))


def prunable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.dim() > 1]


# ---------------------------------------------------------------------------------------------------------
# The pruner: masks are buffers, allocated once and updated in place (CUDA-graph friendly)
# ---------------------------------------------------------------------------------------------------------
class Pruner(nn.Module):
    """Holds one bool mask per prunable weight of `model` and updates them on the GMP schedule."""

    replaces_optimizer_step = False  # True for RigL, whose mask updates take the place of that step's update

    def __init__(self, model: nn.Module, cfg: PruningConfig, start: int, end: int):
        super().__init__()
        if start < 0 or start > end:
            raise ValueError(f"pruning window needs 0 <= start <= end, got start={start}, end={end}")
        self.cfg, self.start, self.end = cfg, start, end
        named = prunable_parameters(model)
        if not named:
            raise ValueError("model has no prunable (ndim > 1) parameters")
        self.layer_names = [name for name, _ in named]
        self.weights = [p for _, p in named]
        shapes = [tuple(p.shape) for p in self.weights]
        targets_fn = erk_sparsities if cfg.distribution == "erk" else uniform_sparsities
        self.targets = targets_fn(shapes, cfg.final_sparsity)
        for i, p in enumerate(self.weights):
            self.register_buffer(f"mask{i}", torch.ones_like(p, dtype=torch.bool))
        sizes = [w.numel() for w in self.weights]
        counts = [sum(sizes)] if cfg.scope == "global" else sizes  # one global top-k, or one per layer
        self.register_buffer("keep_counts", torch.tensor(counts, dtype=torch.long), persistent=False)
        self._all_params = list(model.parameters())
        self._views: list[torch.Tensor] | None = None  # see _selection_inputs
        self._flat: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def masks(self) -> list[torch.Tensor]:
        return [getattr(self, f"mask{i}") for i in range(len(self.weights))]

    def mask_for(self) -> dict[nn.Parameter, torch.Tensor]:
        return dict(zip(self.weights, self.masks))

    def is_update_step(self, step: int) -> bool:
        return is_mask_update(step, self.start, self.end, self.cfg.update_freq)

    def layer_sparsities(self, step: int) -> list[float]:
        return [gmp_sparsity(step, t, self.start, self.end) for t in self.targets]

    @torch.no_grad()
    def update_masks(self, step: int) -> None:
        """New masks from the magnitudes of the current (already masked) weights at the schedule's sparsity."""
        self.set_keep_counts(step)
        self.select_masks()

    def keep_counts_at(self, step: int) -> list[int]:
        """The schedule's keep counts at a mask update at `step`: one per layer, or one for global scope."""
        if self.cfg.scope == "global":
            s = gmp_sparsity(step, self.cfg.final_sparsity, self.start, self.end)
            return [keep_count(sum(w.numel() for w in self.weights), s)]
        return [keep_count(w.numel(), s) for w, s in zip(self.weights, self.layer_sparsities(step))]

    def set_keep_counts(self, step: int) -> None:
        """Write the schedule's keep counts at `step` into the device buffer `select_masks` reads (in place, so
        a captured CUDA graph of `select_masks` follows the schedule)."""
        self.keep_counts.copy_(torch.tensor(self.keep_counts_at(step), dtype=torch.long), non_blocking=True)

    def scheduled_sparsity(self, steps_done: int) -> float:
        """Fraction of the prunable weights the masks zero after `steps_done` gradient steps on the schedule (what
        `sparsity_report()["sparsity/prunable"]` measures, at least: weights can also be zero by themselves)."""
        step = last_mask_update(steps_done, self.start, self.end, self.cfg.update_freq)
        prunable = sum(w.numel() for w in self.weights)
        kept = prunable if step is None else sum(self.keep_counts_at(step))
        return (prunable - kept) / prunable

    @torch.no_grad()
    def select_masks(self) -> None:
        """Masks from the current weights and `keep_counts`: device work only, no host synchronisation."""
        weights = self._selection_inputs()
        if self.cfg.scope == "global":
            flat, flat_mask = self._flat
            torch.cat([w.flatten() for w in weights], out=flat)
            kernels.topk_magnitude_masks([flat], self.keep_counts, out=[flat_mask])
            for m, part in zip(self.masks, torch.split(flat_mask, [w.numel() for w in weights])):
                m.copy_(part.view_as(m))
            return
        kernels.topk_magnitude_masks(weights, self.keep_counts, out=self.masks)

    def _selection_inputs(self) -> list[torch.Tensor]:
        """Detached views of the weights (and the global scope's flat copy and mask), the same tensor objects at
        every call: the kernels keep each weight set's workspace, and with it the previous threshold that the
        next mask update starts from, by the identity of its tensors. New views at every call made every
        update of a training run take the cold path. Rebuilt if a weight's storage moved."""
        views = self._views
        if views is None or any(v.data_ptr() != w.data_ptr() for v, w in zip(views, self.weights)):
            views = self._views = [w.detach() for w in self.weights]
            if self.cfg.scope == "global":
                numel, like = sum(w.numel() for w in views), views[0]
                self._flat = (torch.empty(numel, dtype=like.dtype, device=like.device),
                              torch.empty(numel, dtype=torch.bool, device=like.device))
        return views

    @torch.no_grad()
    def apply_masks(self) -> None:
        for w, m in zip(self.weights, self.masks):
            w.mul_(m)

    @torch.no_grad()
    def sparsity_report(self) -> dict[str, float]:
        """Measured sparsity (fraction of exact zeros): per layer, over prunable weights, and over all params.

        `sparsity/total` counts biases in the denominator, like JaxPruner's TotalSparsity.
        """
        zeros = [int((w == 0).sum()) for w in self.weights]
        report = {f"sparsity/{name}": z / w.numel() for name, z, w in zip(self.layer_names, zeros, self.weights)}
        prunable = sum(w.numel() for w in self.weights)
        report["sparsity/prunable"] = sum(zeros) / prunable
        total = sum(p.numel() for p in self._all_params)
        other_zeros = sum(int((p == 0).sum()) for p in self._all_params if p.dim() <= 1)
        report["sparsity/total"] = (sum(zeros) + other_zeros) / total
        return report


# ---------------------------------------------------------------------------------------------------------
# The optimizer: Adam fused with re-masking
# ---------------------------------------------------------------------------------------------------------
class MaskedAdam(torch.optim.Optimizer):
    """`torch.optim.Adam` semantics, then `param *= mask`, in one call of `kernels.masked_adam_`.

    `masks` maps a parameter to its mask (a live buffer, read at every step); unmapped parameters are plain
    Adam. The step counter is a tensor on the parameters' device, so the update is graph-capturable.
    `weight_decay` is torch.optim.Adam's coupled L2 (g + wd * p enters the moments).
    """

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 masks: dict[nn.Parameter, torch.Tensor] | None = None, moments: str = "faithful",
                 mask_gradients: bool = False, weight_decay: float = 0.0):
        if not (0 < lr < math.inf and 0 < eps < math.inf):
            raise ValueError(f"MaskedAdam needs lr > 0 and eps > 0, finite, got lr={lr}, eps={eps}")
        # What every step would refuse, refused here (as torch.optim.Adam does) rather than at the first step.
        check_adam_hyperparameters(lr, *betas, eps, weight_decay)
        if moments not in kernels.MOMENTS_MODES:
            raise ValueError(f"MaskedAdam: moments must be one of {kernels.MOMENTS_MODES}, got {moments!r}")
        # capturable=True tells Optimizer.load_state_dict to put a loaded step count on the parameters' device
        # (it keeps it on the CPU otherwise), so a resumed run's update stays on the device and capturable.
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, capturable=True))
        self.masks = masks or {}
        self.moments, self.mask_gradients = moments, mask_gradients
        # A host copy of each parameter's step count (read once from a loaded state), so that parameters whose
        # counts differ (one got its first gradient later) are updated with their own bias correction without
        # reading the device counters at every step. One call per distinct count; in training, one call.
        self._steps_taken: dict[torch.Tensor, int] = {}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._steps_taken.clear()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            cohorts: dict[int, list[torch.Tensor]] = {}
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    self._steps_taken[p] = 0
                elif p not in self._steps_taken:  # a loaded state: read its count once
                    self._steps_taken[p] = int(state["step"])
                self._steps_taken[p] += 1
                cohorts.setdefault(self._steps_taken[p], []).append(p)
            torch._foreach_add_([self.state[p]["step"] for p in params], 1.0)
            beta1, beta2 = group["betas"]
            for members in cohorts.values():
                masks = [self.masks.get(p) for p in members]
                grads = [p.grad if m is None or not self.mask_gradients else p.grad * m
                         for p, m in zip(members, masks)]
                kernels.masked_adam_(members, grads, [self.state[p]["exp_avg"] for p in members],
                                     [self.state[p]["exp_avg_sq"] for p in members], masks,
                                     step=self.state[members[0]]["step"], lr=group["lr"], beta1=beta1, beta2=beta2,
                                     eps=group["eps"], weight_decay=group.get("weight_decay", 0.0),
                                     moments=self.moments)
        return loss


# ---------------------------------------------------------------------------------------------------------
# The lottery ticket (Fig. 13): a finished run's final masks on its initial weights, fixed for the whole run
# ---------------------------------------------------------------------------------------------------------
class FixedMask(Pruner):
    """Masks given at the start and never updated. `masks=None` leaves all-ones placeholders for a checkpoint's
    masks to be loaded into."""

    def __init__(self, model: nn.Module, cfg: PruningConfig, masks: Sequence[torch.Tensor] | None):
        super().__init__(model, cfg, 0, 0)
        if masks is not None:
            if [tuple(m.shape) for m in masks] != [tuple(w.shape) for w in self.weights]:
                raise ValueError("the fixed masks do not fit this network's prunable weights")
            for buf, m in zip(self.masks, masks):
                buf.copy_(m)
            self.apply_masks()

    def is_update_step(self, step: int) -> bool:
        return False

    def layer_sparsities(self, step: int) -> list[float]:
        return [1.0 - int(m.sum()) / m.numel() for m in self.masks]

    def scheduled_sparsity(self, steps_done: int) -> float:
        """Constant: the fixed masks' sparsity over the prunable weights, from step 0."""
        return 1.0 - sum(int(m.sum()) for m in self.masks) / sum(m.numel() for m in self.masks)


# The masks' own description too: a run whose config said uniform (or global) kept another run's ERK masks, and one
# of a RigL run's masks was no lottery ticket of GMP.
LOTTERY_MUST_MATCH = ("env.game", "agent.name", "network", "pruning.final_sparsity", "pruning.method",
                      "pruning.distribution", "pruning.scope")


def load_lottery_ticket(run_dir, config: dict) -> tuple[dict, list[torch.Tensor]]:
    """(initial state_dict, final masks) of the finished pruned run in `run_dir`, checked against `config` (this
    run's config dict): the same game, agent, network, final sparsity, method and layer allocation."""
    import json
    from pathlib import Path

    from agents.checkpoint import latest_checkpoint, load_checkpoint

    run_dir = Path(run_dir)
    where = f"--pruning.fixed-mask {run_dir}"
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        source = json.loads((run_dir / "config.json").read_text())["config"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{where}: not a finished run directory (summary.json / config.json: {e})") from e
    if summary.get("finished") is not True:
        raise ValueError(f"{where}: the run has not finished, so its masks are not final")
    # Its masks would fix this run below the sparsity it names, unflagged (its own schedule is those masks).
    for flag in ("below_target_sparsity", "schedule_short_of_target"):
        if summary.get(flag) is True:
            raise ValueError(f"{where}: that run's masks fell short of its target sparsity "
                             f"{summary.get('target_sparsity')} ({flag} in its summary.json)")
    for key in LOTTERY_MUST_MATCH:
        a, b = source, config
        for part in key.split("."):
            a, b = a.get(part) if isinstance(a, dict) else None, b.get(part) if isinstance(b, dict) else None
        if a != b:
            raise ValueError(f"{where}: {key} is {a!r} in that run but {b!r} here")
    if not (run_dir / "initial_weights.pt").is_file():
        raise ValueError(f"{where}: the run has no initial_weights.pt (written by every run since it exists)")
    initial = torch.load(run_dir / "initial_weights.pt", map_location="cpu", weights_only=True)
    state = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    pruner = state.get("pruner") or {}
    masks = [pruner[f"mask{i}"] for i in range(sum(k.startswith("mask") for k in pruner))]
    if not masks:
        raise ValueError(f"{where}: the run has no masks (a dense run?)")
    return initial, masks
