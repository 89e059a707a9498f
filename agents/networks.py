"""Q-networks of the paper: the Dopamine Nature CNN and the Impala ResNet with a width multiplier.

Both take uint8 frames [B, 4, 84, 84] (divided by 255 inside) and follow Dopamine JAX, which the paper used:
TF-style "SAME" padding (asymmetric where TF pads asymmetrically) and zero biases. Initialisation follows each
agent's Dopamine network: the layers the network defines itself (Nature CNN convs, the hidden and output
dense layers, IQN's tau embedding) take the agent's `layer_init`, Xavier-uniform for DQN (NatureDQNNetwork,
ImpalaDQNNetwork) and variance_scaling(1/sqrt(3), fan_in, uniform) for Rainbow and IQN (RainbowNetwork,
ImplicitQuantileNetwork). The Impala stacks keep Dopamine's ImpalaEncoder init for every agent: Xavier-uniform
entry convs and LeCun-normal (truncated) residual convs (Flax's default init). Layout:

    encoder (convs -> ReLU -> flatten, `feature_dim` wide) -> hidden Dense 512 -> ReLU -> out Dense

`encoder`, `hidden` and `out` are separate attributes so distributional and quantile agents can reuse them
(IQN mixes its tau embedding in at the flatten level, as Dopamine does). Every activation is an `nn.ReLU`
module, so analysis hooks (dormant neurons, srank) can find them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

IMPALA_STACKS = (16, 32, 32)  # Dopamine ImpalaEncoder; Table 4's (32, 64, 64) is a copy of the CNN column.
HIDDEN = 512


@dataclass
class NetworkConfig:
    arch: Literal["impala", "nature"] = "impala"
    """Q-network: the Impala ResNet (paper default) or the Dopamine Nature CNN."""
    width: int = 1
    """Width multiplier of every conv layer's channels (the paper sweeps 1 to 5)."""
    scale_dense: bool = False
    """Also multiply the 512-unit hidden layer by the width (off in the paper's online agents)."""
    padding: Literal["same", "valid"] = "same"
    """Nature CNN padding: 'same' as in Dopamine JAX, 'valid' as in the original Nature DQN."""
    init: Literal["dopamine", "xavier"] = "dopamine"
    """Initialisation of the Nature CNN convs, the dense layers and IQN's tau embedding: 'dopamine' follows each
    agent's Dopamine network (Xavier-uniform for DQN; variance_scaling(1/sqrt(3), fan_in, uniform) for Rainbow,
    IQN and M-IQN), 'xavier' uses Xavier-uniform for every agent. Impala stacks keep Dopamine's init either way."""
    feature_norm: bool = False
    """The 'L2' baseline of Fig. 12, "the normalization of Kumar et al. (2022)": the penultimate features (after
    the hidden ReLU) are divided by their l2 norm before the output layer, Scaled QL's feature normalization."""
    dueling: bool = False
    """Dueling head (Wang et al. 2016, Dopamine's FullRainbowNetwork): value and advantage layers on the hidden
    features, Q = V + A - mean_a A (per atom for distributional agents). DER, DrQ(eps) and CQL+C51 use it."""

    def __post_init__(self):
        _check_width(self.width)
        if self.arch not in ("impala", "nature"):
            raise ValueError(f"unknown network arch {self.arch!r}; expected 'impala' or 'nature'")
        if self.init not in ("dopamine", "xavier"):
            raise ValueError(f"unknown network init {self.init!r}; expected 'dopamine' or 'xavier'")


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF/Flax 'SAME' padding (before, after) for one spatial dim; the extra pixel goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with TF 'SAME' padding, computed from the input size (asymmetric when TF's is)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1):
        super().__init__(in_ch, out_ch, kernel, stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (top, bottom), (left, right) = (_same_pads(s, self.kernel_size[0], self.stride[0]) for s in x.shape[-2:])
        if top == bottom and left == right:  # symmetric: let the conv pad (no extra copy)
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left))
        return super().forward(F.pad(x, (left, right, top, bottom)))


def same_max_pool(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    """Max pool with TF 'SAME' padding (padded entries never win, as with -inf padding)."""
    (top, bottom), (left, right) = (_same_pads(s, kernel, stride) for s in x.shape[-2:])
    if _pool_pads_natively(x.shape[-2:], kernel, stride, top, left):
        # The pool's own padding covers the leading pad, and ceil_mode's clipped last window the extra
        # trailing pixel: the same windows and result without materialising a padded copy.
        return F.max_pool2d(x, kernel, stride, padding=(top, left), ceil_mode=True)
    return F.max_pool2d(F.pad(x, (left, right, top, bottom), value=-math.inf), kernel, stride)


def _pool_pads_natively(sizes, kernel: int, stride: int, top: int, left: int) -> bool:
    if 2 * max(top, left) > kernel:  # max_pool2d allows padding up to half the kernel
        return False
    for size, before in zip(sizes, (top, left)):
        out = -(-(size + 2 * before - kernel) // stride) + 1  # ceil_mode's size, then its clipping rule
        if (out - 1) * stride >= size + before:
            out -= 1
        if out != math.ceil(size / stride):
            return False
    return True


LayerInit = Callable[[nn.Module], nn.Module]


def xavier_(layer: nn.Module) -> nn.Module:
    """Flax xavier_uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)); zero bias."""
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def variance_scaling_(layer: nn.Module, scale: float = 1 / math.sqrt(3)) -> nn.Module:
    """Flax variance_scaling(scale, "fan_in", "uniform"): U(-a, a), a = sqrt(3 scale / fan_in), so the variance is
    scale / fan_in; zero bias. Dopamine's Rainbow and IQN networks use scale 1/sqrt(3) for every layer."""
    bound = math.sqrt(3 * scale / layer.weight[0].numel())
    nn.init.uniform_(layer.weight, -bound, bound)
    nn.init.zeros_(layer.bias)
    return layer


def lecun_normal_(layer: nn.Module) -> nn.Module:
    """Flax's default kernel init: truncated normal at +-2 std, std rescaled so the variance is 1/fan_in."""
    fan_in = layer.weight[0].numel()
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
    nn.init.zeros_(layer.bias)
    return layer


class ResidualBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.conv1 = lecun_normal_(SameConv2d(ch, ch, 3))
        self.conv2 = lecun_normal_(SameConv2d(ch, ch, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu2(self.conv1(self.relu1(x))))


class ImpalaStack(nn.Module):
    def __init__(self, in_ch: int, ch: int, num_blocks: int = 2):
        super().__init__()
        self.conv = xavier_(SameConv2d(in_ch, ch, 3))
        self.blocks = nn.Sequential(*(ResidualBlock(ch) for _ in range(num_blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(same_max_pool(self.conv(x)))


class Scale(nn.Module):
    """uint8 frames -> float32 in [0, 1], optionally in channels_last memory order (see `use_channels_last`)."""

    channels_last = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def use_channels_last(net: nn.Module, enabled: bool = True) -> nn.Module:
    """Run the network's convolutions on NHWC activations (cuDNN's fastest layout on tensor cores).

    Only the activations change layout: a conv with a channels_last input runs in channels_last, while the
    weights stay contiguous, so the pruning kernels (which address flat row-major memory) and the masks'
    flat-index tie-breaking are unchanged. Results differ from NCHW at fp32 rounding level (other conv
    algorithms sum in another order).
    """
    for module in net.modules():
        if isinstance(module, Scale):
            module.channels_last = enabled
    return net


class UnitNorm(nn.Module):
    """x / ||x||_2 over the last axis (an all-zero vector stays zero): features on the unit sphere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)


class QNetwork(nn.Module):
    """encoder -> Dense(hidden) -> ReLU -> [unit norm] -> Dense(num_outputs). Subclasses build the encoder."""

    encoder: nn.Module
    feature_dim: int

    def _build_head(self, num_outputs: int, hidden: int, layer_init: LayerInit) -> None:
        self.hidden = layer_init(nn.Linear(self.feature_dim, hidden))
        self.hidden_relu = nn.ReLU()
        self.feature_norm: nn.Module = nn.Identity()  # UnitNorm with NetworkConfig.feature_norm
        self.out = layer_init(nn.Linear(hidden, num_outputs))
        self.num_outputs = num_outputs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation (after the hidden ReLU, and the unit norm if configured)."""
        return self.feature_norm(self.hidden_relu(self.hidden(self.encoder(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


class ImpalaResNet(QNetwork):
    """The "15-layer" Impala ResNet of Espeholt et al. (2018) as in Dopamine's ImpalaEncoder."""

    def __init__(self, num_actions: int, width: int = 1, scale_dense: bool = False, in_frames: int = 4,
                 input_size: int = 84, layer_init: LayerInit = xavier_):
        super().__init__()
        _check_width(width)
        layers: list[nn.Module] = [Scale()]
        in_ch = in_frames
        for ch in IMPALA_STACKS:
            layers.append(ImpalaStack(in_ch, ch * width))
            in_ch = ch * width
        side = input_size
        for _ in IMPALA_STACKS:
            side = math.ceil(side / 2)
        layers += [nn.ReLU(), nn.Flatten()]
        self.encoder = nn.Sequential(*layers)
        self.feature_dim = in_ch * side * side
        self._build_head(num_actions, HIDDEN * (width if scale_dense else 1), layer_init)


class NatureCNN(QNetwork):
    """Mnih et al. (2015) conv net as in Dopamine JAX (SAME padding by default: flatten 11*11*64 = 7,744)."""

    def __init__(self, num_actions: int, width: int = 1, padding: str = "same", in_frames: int = 4,
                 input_size: int = 84, scale_dense: bool = False, layer_init: LayerInit = xavier_):
        super().__init__()
        _check_width(width)
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        specs = [(32 * width, 8, 4), (64 * width, 4, 2), (64 * width, 3, 1)]
        layers: list[nn.Module] = [Scale()]
        in_ch, side = in_frames, input_size
        for ch, k, s in specs:
            conv = SameConv2d(in_ch, ch, k, s) if padding == "same" else nn.Conv2d(in_ch, ch, k, s)
            layers += [layer_init(conv), nn.ReLU()]
            side = math.ceil(side / s) if padding == "same" else (side - k) // s + 1
            in_ch = ch
        layers.append(nn.Flatten())
        self.encoder = nn.Sequential(*layers)
        self.feature_dim = in_ch * side * side
        self._build_head(num_actions, HIDDEN * (width if scale_dense else 1), layer_init)


class DuelingHead(nn.Module):
    """Replaces the output layer: value Dense(hidden -> atoms) and advantage Dense(hidden -> A * atoms),
    combined per atom as V + A - mean_a A (Dopamine's FullRainbowNetwork / ParameterizedRainbowNetwork). Output
    [..., A * atoms], laid out like the plain output layer's, so every agent reads it the same way."""

    def __init__(self, hidden: int, num_actions: int, atoms: int = 1, layer_init: LayerInit = xavier_):
        super().__init__()
        self.num_actions, self.atoms = num_actions, atoms
        self.value = layer_init(nn.Linear(hidden, atoms))
        self.advantage = layer_init(nn.Linear(hidden, num_actions * atoms))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        adv = self.advantage(x).unflatten(-1, (self.num_actions, self.atoms))
        q = self.value(x).unsqueeze(-2) + adv - adv.mean(-2, keepdim=True)
        return q.flatten(-2)


def _check_width(width: int) -> None:
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"network width must be an integer >= 1, got {width!r}")


def make_network(cfg: NetworkConfig, num_outputs: int, obs_shape: tuple[int, int, int] = (4, 84, 84),
                 layer_init: LayerInit = xavier_, atoms: int = 1) -> QNetwork:
    """The configured Q-network for observations of `obs_shape` = (frames, side, side); `layer_init` initialises
    the layers outside the Impala stacks (the agent's Dopamine init, see the module docstring); `num_outputs` =
    actions x `atoms` (the dueling head needs them apart)."""
    frames, side = obs_shape[0], obs_shape[-1]
    if cfg.arch == "impala":
        net = ImpalaResNet(num_outputs, width=cfg.width, scale_dense=cfg.scale_dense, in_frames=frames,
                           input_size=side, layer_init=layer_init)
    elif cfg.arch == "nature":
        net = NatureCNN(num_outputs, width=cfg.width, padding=cfg.padding, scale_dense=cfg.scale_dense,
                        in_frames=frames, input_size=side, layer_init=layer_init)
    else:
        raise ValueError(f"unknown network arch {cfg.arch!r}; expected 'impala' or 'nature'")
    if cfg.feature_norm:
        net.feature_norm = UnitNorm()
    if cfg.dueling:
        if num_outputs % atoms:
            raise ValueError(f"{num_outputs} outputs are not a whole number of actions x {atoms} atoms")
        net.out = DuelingHead(net.out.in_features, num_outputs // atoms, atoms, layer_init)
    return net


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
