"""Compact Rainbow: the C51 projection against a brute-force reference, the loss wiring (greedy action from the
target net, cross-entropy against the online logits), Q-values, presets, and ERK on the Rainbow head."""

import numpy as np
import pytest
import torch
from torch import nn

from agents.config import TrainConfig, get_preset, paper_agent
from agents.networks import NetworkConfig
from agents.pruning import Pruner, PruningConfig, prunable_parameters
from agents.rainbow import Rainbow, project_distribution
from agents.replay import Batch, PrioritizedReplayBuffer
from agents.train import make_agent, make_replay

pytestmark = pytest.mark.usefixtures("one_thread")


def project_brute_force(returns, discounts, probs, support):
    """Bellemare et al. (2017) Algorithm 1: each atom's mass split between its two neighbours."""
    support = np.asarray(support, np.float64)
    v_min, v_max, k = support[0], support[-1], support.size
    dz = (v_max - v_min) / (k - 1)
    out = np.zeros((len(returns), k))
    for b in range(len(returns)):
        for j in range(k):
            tz = min(max(returns[b] + discounts[b] * support[j], v_min), v_max)
            pos = (tz - v_min) / dz
            lo, hi = int(np.floor(pos)), int(np.ceil(pos))
            if lo == hi:
                out[b, lo] += probs[b, j]
            else:
                out[b, lo] += probs[b, j] * (hi - pos)
                out[b, hi] += probs[b, j] * (pos - lo)
    return out


@pytest.mark.parametrize("num_atoms,v_max", [(51, 10.0), (11, 1.0), (5, 3.0)])
@pytest.mark.parametrize("discount", [0.0, 0.9, 0.99**3, 1.0])
def test_projection_matches_brute_force(num_atoms, v_max, discount):
    rng = np.random.default_rng(num_atoms)
    b = 64
    probs = rng.dirichlet(np.full(num_atoms, 0.3), size=b)
    # Rewards well inside the support, at its edges and far outside it (mass pushed off the support).
    returns = np.concatenate(
        [
            rng.uniform(-0.5, 0.5, b // 4) * v_max,
            rng.uniform(-1, 1, b // 4) * 2 * v_max,
            np.full(b // 4, 3.0 * v_max),
            rng.choice([-1.0, 1.0], b // 4) * v_max,
        ]
    )
    discounts = np.full(b, discount)
    discounts[::7] = 0.0  # terminal transitions: all mass at the (clipped) reward
    support = torch.linspace(-v_max, v_max, num_atoms, dtype=torch.float64)
    expected = project_brute_force(returns, discounts, probs, support.numpy())
    target_support = torch.as_tensor(returns)[:, None] + torch.as_tensor(discounts)[:, None] * support
    got = project_distribution(target_support, torch.as_tensor(probs), support)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)
    np.testing.assert_allclose(got.sum(1).numpy(), 1.0, atol=1e-10)  # mass is conserved
    got32 = project_distribution(target_support.float(), torch.as_tensor(probs).float(), support.float())
    np.testing.assert_allclose(got32.numpy(), expected, atol=1e-5)


def test_projection_of_a_terminal_reward_between_atoms():
    support = torch.linspace(-1.0, 1.0, 5)  # atoms -1, -0.5, 0, 0.5, 1
    probs = torch.full((1, 5), 0.2)
    got = project_distribution(torch.full((1, 5), 0.1), probs, support)  # terminal: every atom -> r = 0.1
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.0, 0.8, 0.2, 0.0]]))


class StubNet(nn.Module):
    """Logits from a linear map of the flattened frames (a stand-in for the Q-network)."""

    def __init__(self, outputs, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(4 * 3 * 3, outputs)
        nn.init.normal_(self.fc.weight, std=2.0)

    def forward(self, obs):
        return self.fc(obs.float().flatten(1) / 255.0)


def random_batch(b, num_actions, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return Batch(
        obs=torch.randint(0, 256, (b, 4, 3, 3), dtype=torch.uint8, generator=gen),
        actions=torch.randint(0, num_actions, (b,), generator=gen),
        returns=torch.randn(b, generator=gen),
        discounts=torch.where(torch.rand(b, generator=gen) < 0.2, 0.0, 0.99**3),
        next_obs=torch.randint(0, 256, (b, 4, 3, 3), dtype=torch.uint8, generator=gen),
        weights=torch.ones(b),
        indices=torch.arange(b),
    )


def test_loss_is_cross_entropy_to_the_projected_target_of_the_target_nets_greedy_action():
    cfg = paper_agent("rainbow")
    cfg.num_atoms, cfg.v_max = 11, 2.0
    agent, a, k = Rainbow(cfg, 4), 4, 11
    online, target = StubNet(a * k, seed=1), StubNet(a * k, seed=2)
    batch = random_batch(64, a)
    per_sample, info = agent.loss(online, target, batch)

    z = np.linspace(-2.0, 2.0, k)
    next_probs = torch.softmax(target(batch.next_obs).view(-1, a, k).double(), -1).detach().numpy()
    greedy = (next_probs * z).sum(-1).argmax(1)
    online_greedy = (torch.softmax(online(batch.next_obs).view(-1, a, k), -1).detach().numpy() * z).sum(-1).argmax(1)
    assert (greedy != online_greedy).any(), "the test cannot tell the target net's action from the online net's"
    m = project_brute_force(
        batch.returns.double().numpy(), batch.discounts.double().numpy(), next_probs[np.arange(64), greedy], z
    )
    log_p = torch.log_softmax(online(batch.obs).view(-1, a, k).double(), -1).detach().numpy()
    expected = -(m * log_p[np.arange(64), batch.actions.numpy()]).sum(1)
    np.testing.assert_allclose(per_sample.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    assert per_sample.shape == (64,) and per_sample.requires_grad
    assert set(info) == {"losses/td_loss", "losses/q_values"}
    per_sample.mean().backward()
    assert online.fc.weight.grad is not None and target.fc.weight.grad is None


def test_q_values_are_the_expectation_over_the_support():
    cfg = paper_agent("rainbow")
    agent = Rainbow(cfg, 3)
    net = StubNet(3 * 51, seed=0)
    obs = random_batch(8, 3).obs
    probs = torch.softmax(net(obs).view(8, 3, 51), -1)
    expected = (probs * torch.linspace(-10, 10, 51)).sum(-1)
    torch.testing.assert_close(agent.q_values(net, obs), expected)
    assert torch.equal(agent.greedy_actions(net, obs), expected.argmax(1))


def test_presets_and_factories():
    cfg = get_preset("rainbow_impala_w3_gmp95")
    a = cfg.agent
    assert (a.name, a.n_step, a.replay, a.num_atoms, a.v_max) == ("rainbow", 3, "prioritized", 51, 10.0)
    assert (a.lr, a.adam_eps, a.batch_size, a.gamma) == (6.25e-5, 1.5e-4, 32, 0.99)
    assert isinstance(make_agent(a, 18), Rainbow)
    small = TrainConfig(agent=a, replay_capacity=1000)
    replay = make_replay(small, torch.device("cpu"), 4, (4, 84, 84))
    assert isinstance(replay, PrioritizedReplayBuffer) and replay.n_step == 3


def test_network_has_one_logit_per_action_and_atom():
    agent = Rainbow(paper_agent("rainbow"), 6)
    net = agent.build_network(NetworkConfig(arch="nature"), (4, 84, 84))
    assert net.out.out_features == 6 * 51
    obs = torch.zeros(2, 4, 84, 84, dtype=torch.uint8)
    assert agent.logits(net, obs).shape == (2, 6, 51) and agent.q_values(net, obs).shape == (2, 6)


def test_erk_prunes_the_rainbow_output_layer_at_width_3():
    """Spec section 2.3: at s = 0.95, Impala x3, 18 actions, the 512 -> 18 * 51 layer gets ~0.93 (DQN's: 0)."""
    net = Rainbow(paper_agent("rainbow"), 18).build_network(NetworkConfig(arch="impala", width=3))
    pruner = Pruner(net, PruningConfig(final_sparsity=0.95), 0, 10)
    assert pruner.layer_names == [name for name, _ in prunable_parameters(net)]
    targets = dict(zip(pruner.layer_names, pruner.targets, strict=True))
    assert targets["out.weight"] == pytest.approx(0.93, abs=0.005)
    assert targets["hidden.weight"] == pytest.approx(0.953, abs=0.001)
    assert targets["encoder.1.conv.weight"] == pytest.approx(0.23, abs=0.01)  # first conv lightly pruned
    sizes = [w.numel() for w in pruner.weights]
    overall = sum(s * n for s, n in zip(pruner.targets, sizes, strict=True)) / sum(sizes)
    assert overall == pytest.approx(0.95, abs=1e-3)
    pruner.update_masks(10)  # end of the schedule: the output layer is actually pruned to its target
    out_mask = pruner.masks[pruner.layer_names.index("out.weight")]
    assert 1 - out_mask.float().mean().item() == pytest.approx(targets["out.weight"], abs=1e-4)


def test_loss_under_bf16_autocast_is_float32_and_close():
    agent = Rainbow(paper_agent("rainbow"), 4)
    online, target = StubNet(4 * 51, seed=1), StubNet(4 * 51, seed=2)
    batch = random_batch(32, 4)
    reference, _ = agent.loss(online, target, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = agent.loss(online, target, batch)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, reference, rtol=0.05, atol=0.05)
