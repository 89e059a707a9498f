"""Compact Rainbow as in Dopamine JAX (Hessel et al. 2018; Dopamine's `jax/agents/rainbow`): C51 + n-step
returns + prioritized replay. No double-Q, dueling or noisy nets: exploration is epsilon-greedy.

The network is the configured Q-network with `num_actions * num_atoms` outputs (logits [B, A, K]) on the
support z = linspace(-v_max, v_max, K) (51 atoms on [-10, 10]). Q(s, a) = sum_k softmax(logits)_k z_k.

Loss for a transition (s, a, R^(n), gamma^m or 0, s'):
    a*     = argmax_a' Q_target(s', a')                     greedy w.r.t. the *target* net (not double-Q)
    p      = softmax(target logits(s', a*))
    m      = project(R + discount * z, p) onto z            Bellemare et al. (2017) eq. 7, Dopamine's
                                                            `project_distribution`
    loss   = -sum_k m_k log softmax(online logits(s, a))_k  cross-entropy; the trainer weights it by the
                                                            prioritized-replay importance weights
The replay sets the new priority sqrt(loss + 1e-10) from the same per-sample loss (`agents/replay.py`).

Initialisation: as Dopamine's RainbowNetwork, variance_scaling(1/sqrt(3), fan_in, uniform) kernels for the Nature
CNN convs and the dense layers (the Impala stacks keep Dopamine's ImpalaEncoder init); `--network.init xavier`
uses Xavier-uniform instead (see `agents/networks.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from agents.config import AgentConfig
from agents.dqn import DQN
from agents.networks import NetworkConfig, make_network, variance_scaling_
from agents.replay import Batch


def project_distribution(supports: torch.Tensor, weights: torch.Tensor, target_support: torch.Tensor) -> torch.Tensor:
    """Project distributions with atoms `supports` [B, K] and masses `weights` [B, K] onto the fixed,
    evenly spaced `target_support` [K'] (Bellemare et al. 2017, eq. 7):

        m_i = sum_j clip(1 - |clip(T z_j, v_min, v_max) - z_i| / dz, 0, 1) p_j

    Each atom's mass is split linearly between its two neighbours on the target support; atoms outside
    [v_min, v_max] go to the nearest end. Total mass is conserved. Returns [B, K'].
    """
    v_min, v_max = target_support[0], target_support[-1]
    delta_z = (v_max - v_min) / (target_support.numel() - 1)
    clipped = supports.clamp(v_min, v_max)  # [B, K]
    distance = (clipped[:, None, :] - target_support[None, :, None]).abs()  # [B, K', K]
    return ((1 - distance / delta_z).clamp(0, 1) * weights[:, None, :]).sum(-1)


class Rainbow(DQN):
    dopamine_init = staticmethod(variance_scaling_)  # Dopamine's RainbowNetwork

    def __init__(self, cfg: AgentConfig, num_actions: int):
        super().__init__(cfg, num_actions)
        if cfg.num_atoms < 2 or cfg.v_max <= 0:
            raise ValueError(f"Rainbow needs num_atoms >= 2 and v_max > 0, got {cfg.num_atoms}, {cfg.v_max}")
        self.num_atoms = cfg.num_atoms
        self._support = {}  # device -> support tensor, so acting does not copy it every step

    def support(self, device: torch.device) -> torch.Tensor:
        if device not in self._support:
            self._support[device] = torch.linspace(-self.cfg.v_max, self.cfg.v_max, self.num_atoms, device=device)
        return self._support[device]

    def build_network(self, net_cfg: NetworkConfig, obs_shape=(4, 84, 84)) -> nn.Module:
        return make_network(net_cfg, self.num_actions * self.num_atoms, obs_shape, self.layer_init(net_cfg))

    def logits(self, net: nn.Module, obs: torch.Tensor) -> torch.Tensor:
        return net(obs).float().view(obs.shape[0], self.num_actions, self.num_atoms)  # fp32 out of bf16 autocast

    def q_values(self, net: nn.Module, obs: torch.Tensor) -> torch.Tensor:
        probs = self.logits(net, obs).softmax(-1)
        return (probs * self.support(probs.device)).sum(-1)

    def loss(self, online: nn.Module, target: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict]:
        rows = torch.arange(batch.actions.shape[0], device=batch.actions.device)
        with torch.no_grad():
            next_probs = self.logits(target, batch.next_obs).softmax(-1)  # [B, A, K]
            support = self.support(next_probs.device)
            next_actions = (next_probs * support).sum(-1).argmax(1)
            target_support = batch.returns[:, None] + batch.discounts[:, None] * support  # [B, K]
            target_dist = project_distribution(target_support, next_probs[rows, next_actions], support)
        logits = self.logits(online, batch.obs)[rows, batch.actions]  # [B, K]
        per_sample = -(target_dist * F.log_softmax(logits, -1)).sum(-1)
        q = (logits.detach().softmax(-1) * support).sum(-1)
        return per_sample, {"losses/td_loss": per_sample.detach().mean(), "losses/q_values": q.mean()}
