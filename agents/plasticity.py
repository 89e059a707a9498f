"""Plasticity baselines of the paper's section 5.1 (Fig. 12, App. G.5-G.7): ReDo and Reset.

Both act on the online network after an optimizer step, as the ReDo lab does (Dopamine
`labs/redo/weight_recyclers.py`, the paper's code for them). Steps count gradient updates; an event happens at
update index k when k > 0, k % period == 0 and k < end (the lab's `is_update_iter` and reset window).

ReDo (Sokar et al. 2023, `NeuronRecycler`): score every recyclable neuron on a fresh batch of replay states with
`agents.metrics.neuron_scores` (s_i = E|h_i| / mean_k E|h_k| of its post-ReLU activation; a conv neuron is a
channel); a neuron with s_i <= tau is dormant. Its incoming weights and bias are re-initialised, its outgoing
weights set to zero, and the Adam moments of all of them zeroed (the step count is kept).

Reset (Nikishin et al. 2022, the lab's `LayerReset`): re-initialise the last layer, the penultimate (hidden
dense) layer, or both, and zero their Adam moments.

"Re-initialised" means drawn again from the layer's own initialiser: the values come from a freshly built
network of the same configuration (so every agent's initialisation is respected), one per event.

Recyclable neurons are those with one incoming and one outgoing layer, as in the lab: the hidden dense layer's
512 units; in the Impala ResNet the inner neurons of each residual block (first conv -> second conv; the
residual stream's channels are shared by several layers and are not recycled, the lab's `network='resnet'`
choice); in the Nature CNN every conv (the last one's outgoing weights are its flattened columns in the hidden
layer). IQN's tau-embedding units multiply the state features and are not recycled.

Choices where the lab differs, all small: the lab also leaves the Adam moments of biases alone (here a
re-initialised bias gets fresh moments like its weights); and it counts "gradient steps" as agent steps / 4,
warm-up included, so its schedule runs 5,000 updates ahead of ours at the paper's 20k-step warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from agents.metrics import neuron_scores, relu_activation_stats


@dataclass
class ReDoConfig:
    enabled: bool = False
    """Recycle dormant neurons (ReDo, Sokar et al. 2023): the ReDo baseline of Figs. 12 and 24."""
    tau: float = 0.1
    """A neuron is dormant when its normalised score is <= tau (paper: 0.1; Fig. 24 sweeps 0, 0.025, 0.1, 0.3)."""
    period: int = 1000
    """Gradient steps between recycling events (Sokar et al.'s recycling period F = 1,000)."""
    batch_size: int = 256
    """Replay states the neuron scores are computed on (the lab's batch_size_statistics)."""
    end_fraction: float = 1.0
    """No recycling from this fraction of the run's nominal gradient steps on (the lab's reset_end_step 2.5M, the
    whole 40M-frame run)."""

    def __post_init__(self):
        _check_schedule("redo", self.period, self.end_fraction)
        if not 0 <= self.tau < math.inf:
            raise ValueError(f"redo.tau must be >= 0 and finite, got {self.tau}")
        if self.batch_size < 1:
            raise ValueError(f"redo.batch_size must be >= 1, got {self.batch_size}")


ResetLayers = Literal["last", "penultimate", "both"]
RESET_MODULES = {"last": ("out",), "penultimate": ("hidden",), "both": ("hidden", "out")}


@dataclass
class ResetConfig:
    enabled: bool = False
    """Periodically re-initialise layers and their Adam moments (Reset, Nikishin et al. 2022): the Reset
    baseline of Figs. 12, 25 and 26."""
    period: int = 100_000
    """Gradient steps between resets (paper: 100,000; Fig. 25 sweeps 20k, 100k, 250k, 500k)."""
    layers: ResetLayers = "last"
    """Which layers: the last (output) layer (paper default), the penultimate (hidden dense) layer, or both
    (Fig. 26)."""
    end_fraction: float = 1.0
    """No resets from this fraction of the run's nominal gradient steps on (the lab's reset_end_step)."""

    def __post_init__(self):
        _check_schedule("reset", self.period, self.end_fraction)
        if self.layers not in RESET_MODULES:
            raise ValueError(f"reset.layers must be one of {tuple(RESET_MODULES)}, got {self.layers!r}")


def _check_schedule(name: str, period: int, end_fraction: float) -> None:
    if period < 1:
        raise ValueError(f"{name}.period must be >= 1, got {period}")
    if not 0.0 <= end_fraction <= 1.0:
        raise ValueError(f"{name}.end_fraction must be in [0, 1], got {end_fraction}")


def is_event(step: int, period: int, end: int) -> bool:
    """The lab's schedule: after update `step` (0-based) when step > 0, step % period == 0 and step < end."""
    return 0 < step < end and step % period == 0


# ---------------------------------------------------------------------------------------------------------
# Which neurons can be recycled
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recyclable:
    """A layer of neurons: `incoming` makes them (weight rows / out channels), the ReLU module `relu` activates
    them, `outgoing` reads them (weight columns / in channels, `group` consecutive columns per neuron when a conv
    map is flattened into a dense layer)."""

    name: str  # the incoming module's name
    relu: str  # the ReLU module's name (the key of its activation statistics)
    outgoing: str
    group: int = 1


def recyclable_layers(net: nn.Module) -> list[Recyclable]:
    """The recyclable layers of a `QNetwork` or `IQNNetwork` (see the module docstring), in forward order."""
    from agents.networks import ResidualBlock

    names = {id(m): n for n, m in net.named_modules()}
    layers = []
    for name, m in net.named_modules():
        if isinstance(m, ResidualBlock):
            layers.append(Recyclable(f"{name}.conv1", f"{name}.relu2", f"{name}.conv2"))
    encoder = list(net.encoder)
    convs = [i for i, m in enumerate(encoder) if isinstance(m, nn.Conv2d)]  # Nature CNN: conv, ReLU, conv, ...
    for j, i in enumerate(convs):
        if i + 1 >= len(encoder) or not isinstance(encoder[i + 1], nn.ReLU):
            raise ValueError(f"ReDo expects a ReLU module after {names[id(encoder[i])]}")
        conv, relu = encoder[i], encoder[i + 1]
        if j + 1 < len(convs):
            outgoing, group = names[id(encoder[convs[j + 1]])], 1
        else:  # flattened into the hidden dense layer, channel-major: out_channels groups of H*W columns
            outgoing, group = "hidden", net.hidden.in_features // conv.out_channels
        layers.append(Recyclable(names[id(conv)], names[id(relu)], outgoing, group))
    layers.append(Recyclable("hidden", "hidden_relu", "out"))
    return layers


# ---------------------------------------------------------------------------------------------------------
# ReDo and Reset on a network and its optimizer
# ---------------------------------------------------------------------------------------------------------
def _zero_moments(optimizer: torch.optim.Optimizer, param: torch.Tensor, where) -> None:
    """Zero Adam's moments of `param` at index `where` (nothing before the optimizer's first step)."""
    state = optimizer.state.get(param)
    if state:
        for key in ("exp_avg", "exp_avg_sq"):
            state[key][where] = 0


@torch.no_grad()
def recycle_dormant(net: nn.Module, obs: torch.Tensor, tau: float, optimizer: torch.optim.Optimizer,
                    fresh: nn.Module, q_fn: Callable | None = None) -> dict[str, float]:
    """ReDo on `net`: score its recyclable neurons on `obs`, re-initialise the dormant ones' incoming weights and
    biases from `fresh` (a newly initialised network of the same configuration), zero their outgoing weights and
    the Adam moments of all of them. Returns the number and fraction of recycled neurons."""
    was_training = net.training
    net.eval()
    _, mean_abs, _ = relu_activation_stats(net, obs, q_fn)
    net.train(was_training)
    modules, fresh_modules = dict(net.named_modules()), dict(fresh.named_modules())
    recycled = total = 0
    for layer in recyclable_layers(net):
        if layer.relu not in mean_abs:
            raise RuntimeError(f"ReDo saw no activation of {layer.relu} in a forward pass of the network")
        dormant = neuron_scores(mean_abs[layer.relu], reduced=True) <= tau  # [H]
        total += dormant.numel()
        count = int(dormant.sum())
        if not count:
            continue
        recycled += count
        incoming, new = modules[layer.name], fresh_modules[layer.name]
        for p, q in ((incoming.weight, new.weight), (incoming.bias, new.bias)):
            p[dormant] = q[dormant].to(p.dtype)  # rows / out channels
            _zero_moments(optimizer, p, dormant)
        outgoing = modules[layer.outgoing].weight
        columns = (slice(None), dormant.repeat_interleave(layer.group))  # columns / in channels
        outgoing[columns] = 0
        _zero_moments(optimizer, outgoing, columns)
    return {"redo/recycled": float(recycled), "redo/recycled_frac": recycled / max(total, 1)}


@torch.no_grad()
def reset_modules(net: nn.Module, names: tuple[str, ...], optimizer: torch.optim.Optimizer,
                  fresh: nn.Module) -> None:
    """Reset: every parameter of the named modules takes its value in `fresh`, and its Adam moments are zeroed."""
    modules, fresh_modules = dict(net.named_modules()), dict(fresh.named_modules())
    for name in names:
        for p, q in zip(modules[name].parameters(), fresh_modules[name].parameters(), strict=True):
            p.copy_(q)
            _zero_moments(optimizer, p, slice(None))


class Plasticity:
    """ReDo and Reset as the training loop applies them: `after_update(step)` after each optimizer step.

    `fresh_network()` builds a newly initialised network like the online one; `sample_obs(n)` draws n replay
    states; `after` (the pruner's re-masking) runs after any change, so pruned weights stay zero."""

    def __init__(self, redo: ReDoConfig, reset: ResetConfig, nominal_grad_steps: int, net: nn.Module,
                 optimizer: torch.optim.Optimizer, fresh_network: Callable[[], nn.Module],
                 sample_obs: Callable[[int], torch.Tensor], q_fn: Callable | None = None,
                 after: Callable[[], None] | None = None):
        self.redo, self.reset = redo, reset
        self.redo_end = round(redo.end_fraction * nominal_grad_steps)
        self.reset_end = round(reset.end_fraction * nominal_grad_steps)
        self.net, self.optimizer, self.fresh_network, self.sample_obs = net, optimizer, fresh_network, sample_obs
        self.q_fn, self.after = q_fn, after
        if redo.enabled:
            recyclable_layers(net)  # fails now, not in the middle of a run, on a network it cannot recycle

    def after_update(self, step: int) -> dict[str, float] | None:
        """Apply whatever is due after update `step`; returns the scalars to log, or None if nothing was due."""
        row = {}
        if self.redo.enabled and is_event(step, self.redo.period, self.redo_end):
            obs = self.sample_obs(self.redo.batch_size)
            row.update(recycle_dormant(self.net, obs, self.redo.tau, self.optimizer, self.fresh_network(), self.q_fn))
        if self.reset.enabled and is_event(step, self.reset.period, self.reset_end):
            reset_modules(self.net, RESET_MODULES[self.reset.layers], self.optimizer, self.fresh_network())
            row["reset/events"] = 1.0
        if row and self.after is not None:
            self.after()
        return row or None
