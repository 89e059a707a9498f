"""DQN (Mnih et al. 2015) as in Dopamine JAX: MSE TD loss by default, hard target copies, epsilon-greedy.

An agent is a small object that defines three things for the shared loop in `agents/train.py`:
  build_network(net_cfg, obs_shape) -> the online Q-network (the target is a copy)
  q_values(net, obs)                -> [B, A] action values (acting, analysis)
  loss(online, target, batch)       -> per-sample loss [B] and a dict of scalars to log
Rainbow, IQN and M-IQN subclass `DQN` and override these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from agents.config import AgentConfig
from agents.networks import LayerInit, NetworkConfig, make_network, xavier_
from agents.replay import Batch


class DQN:
    dopamine_init: LayerInit = staticmethod(xavier_)  # Dopamine's NatureDQNNetwork and ImpalaDQNNetwork

    def __init__(self, cfg: AgentConfig, num_actions: int):
        self.cfg, self.num_actions = cfg, num_actions

    def layer_init(self, net_cfg: NetworkConfig) -> LayerInit:
        """The init of the layers outside the Impala stacks: this agent's Dopamine one, or Xavier (`--network.init`)."""
        return self.dopamine_init if net_cfg.init == "dopamine" else xavier_

    def build_network(self, net_cfg: NetworkConfig, obs_shape=(4, 84, 84)) -> nn.Module:
        return make_network(net_cfg, self.num_actions, obs_shape, self.layer_init(net_cfg))

    def q_values(self, net: nn.Module, obs: torch.Tensor) -> torch.Tensor:
        return net(obs)

    @torch.no_grad()
    def greedy_actions(self, net: nn.Module, obs: torch.Tensor) -> torch.Tensor:
        return self.q_values(net, obs).argmax(dim=1)

    def loss(self, online: nn.Module, target: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            next_q = self.q_values(target, batch.next_obs).max(dim=1).values
            td_target = batch.returns + batch.discounts * next_q
        q = self.q_values(online, batch.obs).gather(1, batch.actions[:, None]).squeeze(1)
        if self.cfg.loss == "mse":
            per_sample = (td_target - q).pow(2)  # Dopamine's losses.mse_loss: no 1/2 factor
        else:
            per_sample = F.huber_loss(q, td_target, reduction="none", delta=1.0)
        return per_sample, {"losses/td_loss": per_sample.detach().mean(), "losses/q_values": q.detach().mean()}
