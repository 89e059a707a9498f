"""IQN and M-IQN: the quantile Huber loss and the Munchausen target against straightforward reference loops, the
tau embedding and network layout, the target of a target net with known quantiles, presets, pruning, metrics."""

import math

import numpy as np
import pytest
import torch

from agents.config import get_preset, paper_agent
from agents.iqn import IQN, IQNNetwork, munchausen_targets, quantile_huber_loss
from agents.metrics import analysis_metrics
from agents.networks import NetworkConfig
from agents.pruning import Pruner, PruningConfig
from agents.replay import Batch
from agents.train import make_agent

OBS = (4, 12, 12)


pytestmark = pytest.mark.usefixtures("one_thread")


def quantile_huber_reference(quantiles, taus, targets, kappa):
    """Loops over the batch, the N' target samples and the N online quantiles."""
    b, n = quantiles.shape
    n_target = targets.shape[1]
    out = np.zeros(b)
    for s in range(b):
        total = 0.0
        for j in range(n_target):
            for i in range(n):
                u = targets[s, j] - quantiles[s, i]
                huber = 0.5 * u * u if abs(u) <= kappa else kappa * (abs(u) - 0.5 * kappa)
                total += abs(taus[s, i] - (1.0 if u < 0 else 0.0)) * huber / kappa
        out[s] = total / n_target  # summed over the online quantiles, averaged over the targets
    return out


@pytest.mark.parametrize("kappa", [0.5, 1.0, 2.0])
def test_quantile_huber_loss_matches_reference(kappa):
    rng = np.random.default_rng(int(kappa * 10))
    quantiles, taus = rng.normal(0, 2, (5, 7)), rng.uniform(0, 1, (5, 7))
    targets = rng.normal(0, 2, (5, 6))
    expected = quantile_huber_reference(quantiles, taus, targets, kappa)
    u = targets[:, :, None] - quantiles[:, None, :]
    assert (np.abs(u) <= kappa).any() and (np.abs(u) > kappa).any()  # both Huber branches are exercised
    got = quantile_huber_loss(torch.as_tensor(quantiles), torch.as_tensor(taus), torch.as_tensor(targets), kappa)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_quantile_huber_loss_gradient_is_the_quantile_regression_gradient():
    """For |u| > kappa everywhere, d loss / d quantile_i = (1{u < 0} - tau_i) summed over j, / N'."""
    quantiles = torch.tensor([[0.0, 10.0]], requires_grad=True)
    taus = torch.tensor([[0.25, 0.75]])
    targets = torch.tensor([[5.0, 5.0, 5.0]])  # above quantile 0, below quantile 1
    quantile_huber_loss(quantiles, taus, targets, kappa=1.0).sum().backward()
    torch.testing.assert_close(quantiles.grad, torch.tensor([[-0.25, 0.25]]))


def munchausen_reference(returns, discounts, actions, q, next_q, next_z, tau, alpha, clip_min):
    b, n_target, a = next_z.shape
    out = np.zeros((b, n_target))
    for s in range(b):
        pi = np.exp((q[s] - q[s].max()) / tau)
        pi /= pi.sum()
        next_pi = np.exp((next_q[s] - next_q[s].max()) / tau)
        next_pi /= next_pi.sum()
        bonus = alpha * min(max(tau * np.log(pi[actions[s]]), clip_min), 0.0)
        for j in range(n_target):
            soft = sum(next_pi[k] * (next_z[s, j, k] - tau * np.log(next_pi[k])) for k in range(a))
            out[s, j] = returns[s] + bonus + discounts[s] * soft
    return out


def test_munchausen_target_matches_reference():
    rng = np.random.default_rng(0)
    b, n_target, a = 16, 5, 4
    q = rng.uniform(-0.05, 0.05, (b, a))  # small gaps: tau log pi above the clip l0 = -1 ...
    q[b // 2 :] *= 40  # ... and large gaps: clipped at l0
    next_q, next_z = rng.normal(0, 0.05, (b, a)), rng.normal(0, 1, (b, n_target, a))
    returns, actions = rng.normal(0, 1, b), rng.integers(0, a, b)
    discounts = np.where(rng.random(b) < 0.25, 0.0, 0.99**3)
    args = (returns, discounts, actions, q, next_q, next_z)
    expected = munchausen_reference(*args, tau=0.03, alpha=0.9, clip_min=-1.0)
    got = munchausen_targets(*map(torch.as_tensor, args), tau=0.03, alpha=0.9, clip_min=-1.0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)
    log_pi_a = np.array(
        [
            0.03 * np.log(np.exp((q[s] - q[s].max()) / 0.03)[actions[s]] / np.exp((q[s] - q[s].max()) / 0.03).sum())
            for s in range(b)
        ]
    )
    assert (log_pi_a < -1).any() and ((log_pi_a > -1) & (log_pi_a < -1e-3)).any()  # clip active and not
    # Stable for Q-values whose exp(Q / tau) overflows float32.
    huge = torch.as_tensor(args[3] * 1e3, dtype=torch.float32)
    got32 = munchausen_targets(
        *map(torch.as_tensor, args[:3]), huge, huge, torch.as_tensor(next_z).float(), tau=0.03, alpha=0.9, clip_min=-1.0
    )
    assert torch.isfinite(got32).all()


def make_net(name="iqn", num_actions=3, seed=0):
    torch.manual_seed(seed)
    agent = IQN(paper_agent(name), num_actions)
    return agent, agent.build_network(NetworkConfig(arch="impala", width=1), OBS)


def test_network_layout_and_tau_embedding():
    agent, net = make_net()
    assert isinstance(net, IQNNetwork) and net.tau_embedding.in_features == 64
    assert net.tau_embedding.out_features == net.feature_dim == net.hidden.in_features
    torch.testing.assert_close(net.frequencies, math.pi * torch.arange(1.0, 65.0))
    obs = torch.randint(0, 256, (5, *OBS), dtype=torch.uint8)
    taus = torch.rand(5, 7)
    # Z by hand: out(relu(hidden(psi * relu(W cos(pi i tau) + b)))), i = 1..64
    psi = net.encoder(obs)
    cos = torch.cos(taus[..., None] * math.pi * torch.arange(1, 65))
    phi = torch.relu(cos @ net.tau_embedding.weight.T + net.tau_embedding.bias)
    z = net.out(torch.relu(net.hidden(psi[:, None] * phi)))
    torch.testing.assert_close(net.quantiles(psi, taus), z)
    # forward = Q-values: the mean over K = 32 sampled taus
    torch.manual_seed(3)
    q = net(obs)
    torch.manual_seed(3)
    psi = net.encoder(obs)
    expected = net.quantiles(psi, torch.rand(5, 32)).mean(1)
    torch.testing.assert_close(q, expected)
    assert q.shape == (5, 3) and agent.greedy_actions(net, obs).shape == (5,)
    assert "frequencies" not in net.state_dict()


def constant_target(net):
    """Zero the tau embedding: phi = 0, so Z(s, a, tau) = out(relu(hidden.bias))_a for every s and tau."""
    with torch.no_grad():
        net.tau_embedding.weight.zero_()
        net.tau_embedding.bias.zero_()
        net.hidden.bias.uniform_(-1, 1)
        net.out.bias.copy_(torch.tensor([0.3, -0.2, 0.5]))
        return net.out(torch.relu(net.hidden.bias))


def batch_of(b=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return Batch(
        obs=torch.randint(0, 256, (b, *OBS), dtype=torch.uint8, generator=gen),
        actions=torch.randint(0, 3, (b,), generator=gen),
        returns=torch.randn(b, generator=gen),
        discounts=torch.where(torch.arange(b) % 4 == 0, 0.0, 0.99**3),
        next_obs=torch.randint(0, 256, (b, *OBS), dtype=torch.uint8, generator=gen),
        weights=torch.ones(b),
        indices=torch.arange(b),
    )


def test_iqn_target_uses_the_target_nets_greedy_action():
    agent, target = make_net("iqn")
    c = constant_target(target)  # Q_target(s', .) = c for every s'
    batch = batch_of()
    targets = agent.target_quantiles(target, batch)
    assert targets.shape == (12, 64)
    expected = batch.returns + batch.discounts * c.max()
    torch.testing.assert_close(targets, expected[:, None].expand(12, 64))


def test_miqn_target_with_known_target_quantiles():
    agent, target = make_net("miqn")
    c = constant_target(target).double()
    batch = batch_of()
    targets = agent.target_quantiles(target, batch)
    q = c.expand(12, 3).numpy()
    expected = munchausen_reference(
        batch.returns.double().numpy(),
        batch.discounts.double().numpy(),
        batch.actions.numpy(),
        q,
        q,
        np.broadcast_to(q[:, None], (12, 64, 3)),
        tau=0.03,
        alpha=0.9,
        clip_min=-1.0,
    )
    np.testing.assert_allclose(targets.numpy(), expected, rtol=1e-5, atol=1e-5)
    # The Munchausen bonus is applied: M-IQN and IQN targets differ by more than the soft-max correction.
    assert not torch.allclose(targets, IQN(paper_agent("iqn"), 3).target_quantiles(target, batch), atol=1e-3)


@pytest.mark.parametrize("name", ["iqn", "miqn"])
def test_loss_trains_the_online_net_only(name):
    agent, online = make_net(name, seed=0)
    _, target = make_net(name, seed=1)
    target.requires_grad_(False)
    per_sample, info = agent.loss(online, target, batch_of())
    assert per_sample.shape == (12,) and (per_sample >= 0).all()
    assert set(info) == {"losses/td_loss", "losses/q_values"}
    per_sample.mean().backward()
    assert all(p.grad is not None for p in online.parameters())


def test_presets_and_factory():
    iqn, miqn = get_preset("iqn_impala_w3_gmp95").agent, get_preset("miqn_nature_w1_dense").agent
    for a in (iqn, miqn):
        assert (a.lr, a.adam_eps, a.n_step, a.replay, a.kappa) == (5e-5, 3.125e-4, 3, "uniform", 1.0)
        assert (a.num_tau_samples, a.num_tau_prime_samples, a.num_quantile_samples) == (64, 64, 32)
        assert a.quantile_embedding_dim == 64
    assert (miqn.munchausen_tau, miqn.munchausen_alpha, miqn.munchausen_clip) == (0.03, 0.9, -1.0)
    assert not make_agent(iqn, 4).munchausen and make_agent(miqn, 4).munchausen


def test_every_weight_including_the_tau_embedding_is_pruned():
    _, net = make_net()
    pruner = Pruner(net, PruningConfig(final_sparsity=0.95), 0, 0)
    assert "tau_embedding.weight" in pruner.layer_names and "out.weight" in pruner.layer_names
    assert all(p.dim() > 1 for p in pruner.weights) and len(pruner.weights) == sum(
        p.dim() > 1 for p in net.parameters()
    )
    pruner.update_masks(0)
    pruner.apply_masks()
    assert pruner.sparsity_report()["sparsity/prunable"] == pytest.approx(0.95, abs=1e-3)
    assert pruner.sparsity_report()["sparsity/tau_embedding.weight"] > 0


def test_analysis_metrics_work_on_the_iqn_network():
    agent, net = make_net()
    obs = torch.randint(0, 256, (16, *OBS), dtype=torch.uint8)
    row = analysis_metrics(net, obs, q_fn=agent.q_values)
    assert "analysis/dormant/tau_relu" in row and "analysis/dormant/hidden_relu" in row
    assert row["analysis/srank"] >= 1 and math.isfinite(row["analysis/q_var"])


@pytest.mark.parametrize("name", ["iqn", "miqn"])
def test_loss_under_bf16_autocast_is_float32_and_close(name):
    agent, online = make_net(name, seed=0)
    _, target = make_net(name, seed=1)
    batch = batch_of()
    torch.manual_seed(5)
    reference, _ = agent.loss(online, target, batch)
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = agent.loss(online, target, batch)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, reference, rtol=0.05, atol=0.05)
