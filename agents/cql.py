"""Offline agents with the CQL regulariser (Kumar et al. 2020), as in Dopamine's offline Rainbow agent
(`labs/offline_rl/jax/offline_rainbow_agent.py`, its `bc_coefficient`) that the paper's offline runs (Fig. 8)
build on:

    loss = TD loss + cql_coefficient * mean_batch( logsumexp_a Q(s, a) - Q(s, a_data) )

with Q the online network's values at the dataset's states (for C51, the expectation of each action's
distribution). The regulariser pushes down the values of actions the data does not take and up the data's.

- `cql`: DQN + CQL (Table 3: n-step 1, no double or dueling; Huber TD loss, Dopamine's non-distributional
  offline branch).
- `cql_c51`: C51 + CQL (Table 3: n-step 3, double DQN, dueling head; cross-entropy to the projected target).

The per-sample loss is TD + coefficient x (logsumexp - Q), so its batch mean is Dopamine's sum of the two means.
"""

from __future__ import annotations

import torch
from torch import nn

from agents.dqn import DQN
from agents.networks import LayerInit, xavier_
from agents.rainbow import Rainbow
from agents.replay import Batch


def cql_regulariser(q_all: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Per-sample logsumexp_a Q(s, a) - Q(s, a_data) from Q-values [B, A] and the data's actions [B]."""
    return torch.logsumexp(q_all, dim=1) - q_all.gather(1, actions[:, None]).squeeze(1)


class CQL(DQN):
    def loss(self, online: nn.Module, target: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict]:
        td, q_all, info = self.td_loss(online, target, batch)
        cql = cql_regulariser(q_all.float(), batch.actions)
        info["losses/cql"] = cql.detach().mean()
        return td + self.cfg.cql_coefficient * cql, info


class CQLC51(Rainbow):
    dopamine_init: LayerInit = staticmethod(xavier_)  # the hidden layer of Dopamine's ParameterizedRainbowNetwork

    def loss(self, online: nn.Module, target: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict]:
        td, logits, info = self.td_loss(online, target, batch)
        q_all = (logits.softmax(-1) * self.support(logits.device)).sum(-1)  # [B, A], differentiable
        cql = cql_regulariser(q_all, batch.actions)
        info["losses/cql"] = cql.detach().mean()
        return td + self.cfg.cql_coefficient * cql, info
