"""RigL (Evci et al. 2020): dynamic sparse training at a fixed sparsity, the baseline of the paper's Fig. 22.

`--pruning.method rigl` replaces gradual magnitude pruning with RigL at `--pruning.final-sparsity`. The defaults
are those of Graesser et al.'s (2022) DQN configs (`rigl/rl/sparsetrain_configs/dqn_atari_rigl*.gin`), the
published RigL setup for Atari:
- per-layer sparsities from ERK (`--pruning.distribution`), the same as GMP's final ones; random initial masks
  with exactly `keep_count(n, s)` connections per layer (`init_masks.mask_init_method = 'erdos_renyi_kernel'`);
- `sparse_init`: the initial weights redrawn for the sparse topology (`fixed_sparse_init = True`, RigL's
  `unit_scaled_init` with 'fanavg_uniform'): U(-a, a), a = sqrt(3 / max(1, (fan_in + fan_out) / 2)), with the
  fans counted over the active connections of the two units a weight connects;
- masks updated every 5,000 gradient steps from step 0 to 80% of the run (2M of 2.5M at 40M frames), window
  inclusive; the drop fraction decays from 0.3 with a cosine, 0.3 * (1 + cos(pi * t / end)) / 2.

An update at step t, per layer with n active connections (Evci et al.'s Algorithm 1 and `SparseRigLOptimizer`):
- k = floor(n * drop_fraction(t)) connections are dropped: those of smallest |w| among the active ones;
- k are grown: those of largest |gradient| among the connections not kept (a just dropped one may come back,
  keeping its weight), where the gradient is the dense gradient of this step's loss at the masked weights;
- grown connections start at zero with zeroed Adam moments; dropped weights are zeroed;
- the update takes the place of that step's optimizer update (RigL's Algorithm 1: mask update *or* SGD step).
Both selections are `kernels.topk_magnitude_masks` (ties by lower flat index); RigL's code adds N(0, 1e-5) noise
to the drop scores, which is left out here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

import kernels
from agents.pruning import Pruner, PruningConfig, keep_count

TINY = torch.finfo(torch.float32).tiny  # ranks every candidate above the excluded entries, which score 0


@dataclass
class RigLConfig:
    update_freq: int = 5000
    """RigL (--pruning.method rigl): gradient steps between mask updates (Graesser et al.'s DQN config: 5,000)."""
    drop_fraction: float = 0.3
    """RigL: fraction of each layer's active connections dropped and regrown at the first update; it decays to 0
    with a cosine over the update window (Graesser et al.: 0.3, cosine)."""
    end_fraction: float = 0.8
    """RigL: masks are updated from gradient step 0 to this fraction of the run's nominal gradient steps (2M of
    2.5M at 40M frames, as in Graesser et al.)."""
    sparse_init: bool = True
    """RigL: redraw the initial weights for the sparse topology, Xavier-uniform with each unit's active fan-in and
    fan-out (Graesser et al.'s fixed_sparse_init); off: the network's own initialisation, masked."""

    def __post_init__(self):
        if self.update_freq < 1:
            raise ValueError(f"rigl.update_freq must be >= 1, got {self.update_freq}")
        if not 0.0 <= self.drop_fraction <= 1.0:
            raise ValueError(f"rigl.drop_fraction must be in [0, 1], got {self.drop_fraction}")
        if not 0.0 <= self.end_fraction <= 1.0:
            raise ValueError(f"rigl.end_fraction must be in [0, 1], got {self.end_fraction}")


def cosine_drop_fraction(step: int, initial: float, end: int) -> float:
    """RigL's 'cosine' anneal (TF cosine_decay from step 0): initial * (1 + cos(pi * min(step, end) / end)) / 2."""
    if end <= 0:
        return 0.0
    return initial * 0.5 * (1.0 + math.cos(math.pi * min(step, end) / end))


@torch.no_grad()
def sparse_init_(weight: torch.Tensor, mask: torch.Tensor) -> None:
    """RigL's unit_scaled_init ('fanavg_uniform'), in place: active weights ~ U(-a, a) with a = sqrt(3 / max(1,
    (fan_in + fan_out) / 2)), where fan_in counts the active weights into the weight's output unit and fan_out
    those out of its input unit (kernel taps included); inactive weights are 0."""
    m = mask.float()
    per_pair = m.sum(dim=tuple(range(2, m.dim()))) if m.dim() > 2 else m  # [out, in]
    fan_in, fan_out = per_pair.sum(1), per_pair.sum(0)
    scale = 1.0 / ((fan_in[:, None] + fan_out[None, :]) / 2).clamp(min=1.0)
    limit = torch.sqrt(3.0 * scale).view(*scale.shape, *([1] * (m.dim() - 2)))
    weight.copy_((torch.rand_like(weight) * 2 - 1) * limit * m)


class RigL(Pruner):
    """A `Pruner` whose masks keep a fixed number of connections per layer and move by drop and grow (see the
    module docstring). The trainer calls `set_keep_counts(step)` then `select_masks()` on update steps, after the
    backward pass, and skips that step's optimizer update."""

    replaces_optimizer_step = True

    def __init__(self, model: nn.Module, cfg: PruningConfig, rigl: RigLConfig, end: int):
        if cfg.scope != "layer":
            raise ValueError("RigL keeps a fixed sparsity per layer: it needs --pruning.scope layer")
        super().__init__(model, cfg, 0, end)
        self.rigl = rigl
        self.optimizer: torch.optim.Optimizer | None = None  # the trainer's, for the moments of grown weights
        self.active = [keep_count(w.numel(), s) for w, s in zip(self.weights, self.targets)]
        self.register_buffer("grow_counts", torch.zeros(len(self.weights), dtype=torch.long), persistent=False)
        with torch.no_grad():  # random masks with exact counts: the top-k of uniform random scores
            counts = torch.tensor(self.active, dtype=torch.long, device=self.keep_counts.device)
            kernels.topk_magnitude_masks([torch.rand_like(w) for w in self.weights], counts, out=self.masks)
            for w, m in zip(self.weights, self.masks):
                if rigl.sparse_init:
                    sparse_init_(w, m)
                else:
                    w.mul_(m)

    def is_update_step(self, step: int) -> bool:
        return step % self.rigl.update_freq == 0 and 0 <= step <= self.end

    def layer_sparsities(self, step: int) -> list[float]:
        """Constant: the sparsity each layer's fixed number of connections gives."""
        return [1.0 - k / w.numel() for k, w in zip(self.active, self.weights)]

    def scheduled_sparsity(self, steps_done: int) -> float:
        """Constant: the fixed connections' sparsity over the prunable weights, from step 0."""
        return 1.0 - sum(self.active) / sum(w.numel() for w in self.weights)

    def drop_counts(self, step: int) -> list[int]:
        """Connections dropped (and grown) per layer at an update at `step`."""
        fraction = cosine_drop_fraction(step, self.rigl.drop_fraction, self.end)
        return [math.floor(n * fraction) for n in self.active]

    def set_keep_counts(self, step: int) -> None:
        """Write this update's counts into the device buffers `select_masks` reads: kept, then grown."""
        drops = self.drop_counts(step)
        self.keep_counts.copy_(torch.tensor([n - d for n, d in zip(self.active, drops)]), non_blocking=True)
        self.grow_counts.copy_(torch.tensor(drops), non_blocking=True)

    @torch.no_grad()
    def select_masks(self) -> None:
        """Drop the smallest active weights, grow where the gradient is largest among the rest; device work only."""
        masks = self.masks
        drop_scores = [torch.where(m, w.detach().abs().clamp_min(TINY), 0.0) for w, m in zip(self.weights, masks)]
        kept = kernels.topk_magnitude_masks(drop_scores, self.keep_counts)
        grads = [w.grad if w.grad is not None else torch.zeros_like(w) for w in self.weights]
        grow_scores = [torch.where(k, 0.0, g.abs().float().clamp_min(TINY)) for k, g in zip(kept, grads)]
        grown = kernels.topk_magnitude_masks(grow_scores, self.grow_counts)
        for w, m, k, g in zip(self.weights, masks, kept, grown):
            new = g & ~m  # grown where nothing was: starts at zero with fresh moments
            state = self.optimizer.state.get(w) if self.optimizer is not None else None
            if state:
                state["exp_avg"].masked_fill_(new, 0)
                state["exp_avg_sq"].masked_fill_(new, 0)
            m.copy_(k | g)
            w.mul_(m)
