"""IQN (Dabney et al. 2018) as in Dopamine JAX, and Munchausen-IQN (Vieillard et al. 2020): `cfg.name == "miqn"`.

Network (`IQNNetwork`, wrapping the configured Q-network's encoder, hidden layer and output layer):
    psi(s)      = encoder(s)                                     flat state features [B, F]
    phi(tau)    = ReLU(Linear(64 -> F)(cos(pi * i * tau)))       i = 1..64, as Dopamine (TF and JAX) write
                                                                 it; the IQN paper's i = 0..63 only adds a
                                                                 constant input the Linear's bias already has
    Z_tau(s, .) = out(ReLU(hidden(psi(s) * phi(tau))))           [B, M, A] for M sampled taus (with
                                                                 --network.feature-norm, out(unit norm(...)))
`forward(obs)` returns Q = mean of Z over K = 32 taus ~ U(0, 1): what acting and the analysis metrics use.
Every weight with ndim > 1, the tau embedding included, is prunable like any other layer.

Loss for a transition (s, a, R^(n), gamma^m or 0, s'), N = N' = 64 taus, kappa = 1:
    a*       = argmax_a' mean_K Z_target(s', a')                    greedy w.r.t. the target net (K taus)
    T_j      = R + discount * Z_target,tau'_j(s', a*)               j = 1..N' (fresh taus)
    u_ji     = T_j - Z_online,tau_i(s, a)                           i = 1..N
    rho_ji   = |tau_i - 1{u_ji < 0}| * huber_kappa(u_ji) / kappa
    loss     = mean_j sum_i rho_ji                                  Dopamine's reduction: sum over the
                                                                    online quantiles, mean over the targets
Taus are drawn independently for every sample of the batch, as Dopamine does (its JAX agent vmaps the
network over one key per sample, `jax.random.split(rng, num=batch_size)`, for the online and target nets).

M-IQN replaces the target (Vieillard et al.'s `m_iqn.py`), with pi = softmax(Q_target / tau_m) and Q_target
the target net's mean over K taus, at s and at s':
    T_j = R + alpha * clip(tau_m log pi(a|s), l0, 0)
            + discount * sum_a' pi(a'|s') (Z_target,tau'_j(s', a') - tau_m log pi(a'|s'))
tau_m log pi is computed as tau_m * log_softmax(Q / tau_m) (log-sum-exp stable). With n-step returns the
Munchausen bonus is added once, undiscounted, for the first action a of the n steps: Vieillard et al. add
it to the replay's n-step reward the same way. Constants: tau_m = 0.03 (paper Table 2), alpha = 0.9 and
l0 = -1 (Vieillard et al. 2020; the paper lists only tau_m, so these are a project decision). M-IQN acts
epsilon-greedily like the other agents, as the paper's JAX M-IQN does by default (Vieillard et al.'s TF
agent samples from pi instead).

Initialisation: as Dopamine's ImplicitQuantileNetwork, variance_scaling(1/sqrt(3), fan_in, uniform) kernels for
the Nature CNN convs, the tau embedding and the dense layers (the Impala stacks keep Dopamine's ImpalaEncoder
init); `--network.init xavier` uses Xavier-uniform instead (see `agents/networks.py`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from agents.config import AgentConfig
from agents.dqn import DQN
from agents.networks import LayerInit, NetworkConfig, QNetwork, make_network, variance_scaling_, xavier_
from agents.replay import Batch


class IQNNetwork(nn.Module):
    """encoder -> (x) tau embedding -> hidden 512 -> ReLU -> out, reusing a `QNetwork`'s layers."""

    def __init__(self, base: QNetwork, embedding_dim: int = 64, num_quantile_samples: int = 32,
                 layer_init: LayerInit = xavier_):
        super().__init__()
        self.encoder, self.hidden, self.hidden_relu, self.out = base.encoder, base.hidden, base.hidden_relu, base.out
        self.feature_norm = base.feature_norm
        self.feature_dim, self.num_quantile_samples = base.feature_dim, num_quantile_samples
        self.tau_embedding = layer_init(nn.Linear(embedding_dim, base.feature_dim))
        self.tau_relu = nn.ReLU()
        self.register_buffer("frequencies", math.pi * torch.arange(1, embedding_dim + 1), persistent=False)

    def quantiles(self, features: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
        """Z for state features [B, F] at taus [B, M] -> [B, M, A]."""
        phi = self.tau_relu(self.tau_embedding(torch.cos(taus[..., None] * self.frequencies)))  # [B, M, F]
        # float32 out of bf16 autocast: the loss and the tau = 0.03 softmax of M-IQN need the precision
        return self.out(self.feature_norm(self.hidden_relu(self.hidden(features[:, None, :] * phi)))).float()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Q-values [B, A]: the mean of Z over `num_quantile_samples` random taus."""
        features = self.encoder(obs)
        taus = torch.rand(obs.shape[0], self.num_quantile_samples, device=features.device)
        return self.quantiles(features, taus).mean(1)


def quantile_huber_loss(quantiles: torch.Tensor, taus: torch.Tensor, targets: torch.Tensor,
                        kappa: float = 1.0) -> torch.Tensor:
    """Per-sample quantile Huber loss [B] of online `quantiles` [B, N] at `taus` [B, N] against `targets`
    [B, N']: pairwise errors u = target_j - quantile_i, |tau_i - 1{u < 0}| * huber_kappa(u) / kappa, summed
    over i (online) and averaged over j (targets), as Dopamine's implicit_quantile_agent."""
    u = targets[:, :, None] - quantiles[:, None, :]  # [B, N', N]
    abs_u = u.abs()
    huber = torch.where(abs_u <= kappa, 0.5 * u.pow(2), kappa * (abs_u - 0.5 * kappa))
    weight = (taus[:, None, :] - (u.detach() < 0).float()).abs()
    return (weight * huber / kappa).sum(2).mean(1)


def munchausen_targets(returns: torch.Tensor, discounts: torch.Tensor, actions: torch.Tensor, q: torch.Tensor,
                       next_q: torch.Tensor, next_z: torch.Tensor, tau: float, alpha: float,
                       clip_min: float) -> torch.Tensor:
    """M-IQN target quantiles [B, N'] from the target net's Q at s (`q` [B, A]), at s' (`next_q` [B, A]) and
    its quantiles at s' (`next_z` [B, N', A]); `returns`/`discounts` are the replay's n-step values."""
    tau_log_pi = tau * F.log_softmax(q / tau, dim=1)
    bonus = alpha * tau_log_pi.gather(1, actions[:, None]).squeeze(1).clamp(clip_min, 0.0)
    next_tau_log_pi = tau * F.log_softmax(next_q / tau, dim=1)
    next_pi = F.softmax(next_q / tau, dim=1)
    soft_next = (next_pi[:, None, :] * (next_z - next_tau_log_pi[:, None, :])).sum(-1)  # [B, N']
    return (returns + bonus)[:, None] + discounts[:, None] * soft_next


class IQN(DQN):
    dopamine_init = staticmethod(variance_scaling_)  # Dopamine's ImplicitQuantileNetwork

    def __init__(self, cfg: AgentConfig, num_actions: int):
        super().__init__(cfg, num_actions)
        if cfg.kappa <= 0:
            raise ValueError(f"IQN needs kappa > 0, got {cfg.kappa}")
        if cfg.double_dqn:
            raise ValueError("double_dqn is not implemented for IQN and M-IQN")
        self.munchausen = cfg.name == "miqn"

    def build_network(self, net_cfg: NetworkConfig, obs_shape=(4, 84, 84)) -> nn.Module:
        layer_init = self.layer_init(net_cfg)
        base = make_network(net_cfg, self.num_actions, obs_shape, layer_init)
        return IQNNetwork(base, self.cfg.quantile_embedding_dim, self.cfg.num_quantile_samples, layer_init)

    @torch.no_grad()
    def target_quantiles(self, target: IQNNetwork, batch: Batch) -> torch.Tensor:
        """The N' target quantile values [B, N'] of each transition (IQN or M-IQN)."""
        cfg = self.cfg
        b, k, n_target = batch.obs.shape[0], cfg.num_quantile_samples, cfg.num_tau_prime_samples
        if self.munchausen:  # one encoder pass for s and s'
            features, next_features = target.encoder(torch.cat([batch.obs, batch.next_obs])).split(b)
        else:
            next_features = target.encoder(batch.next_obs)
        taus = torch.rand(b, k + n_target, device=next_features.device)  # K for Q, N' for the targets
        next_q, next_z = target.quantiles(next_features, taus).split([k, n_target], dim=1)
        next_q = next_q.mean(1)  # [B, A]
        if self.munchausen:
            q = target.quantiles(features, torch.rand(b, k, device=features.device)).mean(1)
            return munchausen_targets(batch.returns, batch.discounts, batch.actions, q, next_q, next_z,
                                      cfg.munchausen_tau, cfg.munchausen_alpha, cfg.munchausen_clip)
        next_actions = next_q.argmax(1)
        next_z_a = next_z.gather(2, next_actions[:, None, None].expand(b, n_target, 1)).squeeze(2)
        return batch.returns[:, None] + batch.discounts[:, None] * next_z_a

    def loss(self, online: IQNNetwork, target: IQNNetwork, batch: Batch) -> tuple[torch.Tensor, dict]:
        b, n = batch.obs.shape[0], self.cfg.num_tau_samples
        targets = self.target_quantiles(target, batch)
        taus = torch.rand(b, n, device=targets.device)
        z = online.quantiles(online.encoder(batch.obs), taus)  # [B, N, A]
        z_a = z.gather(2, batch.actions[:, None, None].expand(b, n, 1)).squeeze(2)
        per_sample = quantile_huber_loss(z_a, taus, targets, self.cfg.kappa)
        return per_sample, {"losses/td_loss": per_sample.detach().mean(), "losses/q_values": z_a.detach().mean()}
