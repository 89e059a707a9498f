"""Atari-100k agents (DER, DrQ(eps)) and the options they are made of: DrQ's augmentation against a pad-and-crop
reference, the dueling head and double-DQN targets against brute force, n-step-10 returns, lost lives as
learner terminals, the presets, and tiny learning runs of both agents, dense and pruned."""

import csv
import dataclasses
import math

import numpy as np
import pytest
import torch

from agents.augmentation import DrQAugmentation, drq_augment, random_shift, shift_stacks
from agents.config import get_preset, paper_agent
from agents.dqn import DQN
from agents.envs import AtariVecEnv, EnvConfig
from agents.networks import DuelingHead, NetworkConfig, make_network
from agents.pruning import prunable_parameters
from agents.rainbow import Rainbow, project_distribution
from agents.replay import ReplayBuffer
from agents.train import Trainer, make_agent
from tests.agents.chain_env import ChainEnv
from tests.agents.test_graph_safe import trainer_ready_to_learn
from tests.agents.test_learning import chain_config
from tests.agents.test_rainbow import StubNet, random_batch
from tests.agents.test_replay import expected, fill

pytestmark = pytest.mark.usefixtures("one_thread")


# --- augmentation -----------------------------------------------------------------------------------------
def pad_and_crop(obs: np.ndarray, dy: int, dx: int, pad: int) -> np.ndarray:
    """DrQ's definition: replicate-pad every frame by `pad`, crop at offset (pad + dy, pad + dx)."""
    h, w = obs.shape[-2:]
    padded = np.pad(obs, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    return padded[:, pad + dy: pad + dy + h, pad + dx: pad + dx + w]


def test_shift_is_edge_padding_and_a_crop():
    gen = torch.Generator().manual_seed(0)
    obs = torch.randint(0, 256, (40, 4, 10, 9), dtype=torch.uint8, generator=gen)
    dy, dx = torch.randint(-4, 4, (2, 40), generator=gen)
    out = shift_stacks(obs, dy, dx)
    assert out.dtype == torch.uint8 and out.shape == obs.shape
    for b in range(40):
        np.testing.assert_array_equal(out[b].numpy(), pad_and_crop(obs[b].numpy(), int(dy[b]), int(dx[b]), 4))


def coordinate_frames(b: int, side: int = 12) -> torch.Tensor:
    """Frames whose pixel (i, j) holds side * i + j, so a crop reveals its own offset."""
    grid = (side * torch.arange(side)[:, None] + torch.arange(side)[None, :]).to(torch.uint8)
    return grid.expand(b, 4, side, side).clone()


@pytest.mark.parametrize("pad", [1, 4])
def test_random_shifts_are_uniform_over_dopamines_range(pad):
    """Offsets uniform in [0, 2 pad) (Dopamine's randint excludes 2 pad): shifts -pad..pad-1, per sample, the
    same for every frame of a stack, rows and columns drawn independently."""
    out = random_shift(coordinate_frames(4000), pad, torch.Generator().manual_seed(1))
    centre = out[:, :, 6, 6].long()  # pixel (6 + dy, 6 + dx): away from the clamped borders
    dy, dx = centre // 12 - 6, centre % 12 - 6
    assert (dy == dy[:, :1]).all() and (dx == dx[:, :1]).all(), "frames of one stack were shifted differently"
    dy, dx = dy[:, 0], dx[:, 0]
    values = list(range(-pad, pad))
    for d in (dy, dx):
        counts = torch.bincount(d + pad, minlength=2 * pad)
        assert counts.numel() == 2 * pad and set(d.tolist()) == set(values)
        assert (counts - 4000 / (2 * pad)).abs().max() < 5 * math.sqrt(4000 / (2 * pad))
    if pad > 1:
        assert abs(float(torch.corrcoef(torch.stack([dy.float(), dx.float()]))[0, 1])) < 0.1


def test_drq_augment_matches_a_reference_built_from_the_same_draws():
    """Shift, then scale to [0, 1] and multiply by 1 + 0.05 clip(N(0, 1), -2, 2) per sample: recomputed from
    the generator's draws with the pad-and-crop reference."""
    gen = torch.Generator().manual_seed(3)
    obs = torch.randint(0, 256, (64, 4, 12, 12), dtype=torch.uint8, generator=gen)
    replay_gen = torch.Generator().manual_seed(5)
    out = drq_augment(obs, 4, 0.05, torch.Generator().manual_seed(5))
    dy, dx = torch.randint(0, 8, (2, 64), generator=replay_gen) - 4
    noise = torch.randn(64, 1, 1, 1, generator=replay_gen)
    assert (noise.abs() > 2).any(), "the draws never reached the clip: the test cannot see it"
    scale = (1 + 0.05 * noise.clamp(-2, 2)).numpy()
    for b in range(64):
        ref = pad_and_crop(obs[b].numpy(), int(dy[b]), int(dx[b]), 4).astype(np.float32) / 255.0 * scale[b]
        np.testing.assert_allclose(out[b].numpy(), ref, rtol=1e-6, atol=1e-7)
    assert out.dtype == torch.float32
    no_noise = drq_augment(obs, 4, 0.0, torch.Generator().manual_seed(5))
    assert no_noise.max() <= 1.0 and torch.equal(no_noise * 255, no_noise.mul(255).round())  # exact frames


def test_states_and_next_states_get_independent_draws_and_other_fields_stay():
    batch = random_batch(256, 3)
    batch.next_obs = batch.obs.clone()
    aug = DrQAugmentation(pad=4, intensity_scale=0.05, device=torch.device("cpu"), seed=0)
    out = aug(batch)
    assert not torch.equal(out.obs, out.next_obs)
    for name in ("actions", "returns", "discounts", "weights", "indices"):
        assert getattr(out, name) is getattr(batch, name)
    with pytest.raises(ValueError, match="pad >= 1"):
        DrQAugmentation(pad=0, intensity_scale=0.05, device=torch.device("cpu"), seed=0)


def test_trainer_augments_learner_batches_only_and_checkpoints_the_generator(tmp_path):
    """DrQ(eps) learns from augmented batches (acting and the analysis batch see raw frames); the augmentation's
    generator is part of the learner step's random streams and of the checkpoint, so a resume draws the same."""
    trainer = trainer_ready_to_learn(tmp_path, "drq_eps")
    assert trainer.augment.generator in trainer._generators()
    state = trainer.state_dict(with_replay=True)
    batch = trainer._sample_batch()
    assert batch.obs.dtype == torch.float32 and batch.obs.max() <= 1.1
    raw = trainer.replay.sample(8).obs
    assert raw.dtype == torch.uint8
    trainer.load_state_dict(state)
    again = trainer._sample_batch()
    torch.testing.assert_close(again.obs, batch.obs, rtol=0, atol=0)
    assert trainer.state_dict(with_replay=False)["rng"]["augment"] is not None


# --- dueling head and double DQN -----------------------------------------------------------------------------
@pytest.mark.parametrize("atoms", [1, 51])
def test_dueling_head_is_value_plus_centred_advantage(atoms):
    head = DuelingHead(16, num_actions=5, atoms=atoms)
    x = torch.randn(3, 7, 16)  # any leading dims (IQN feeds [B, M, hidden])
    out = head(x)
    assert out.shape == (3, 7, 5 * atoms)
    v = x @ head.value.weight.T + head.value.bias  # [3, 7, atoms]
    adv = (x @ head.advantage.weight.T + head.advantage.bias).view(3, 7, 5, atoms)
    expected = v[:, :, None, :] + adv - adv.mean(2, keepdim=True)
    torch.testing.assert_close(out, expected.flatten(2))
    torch.testing.assert_close(out.view(3, 7, 5, atoms).mean(2), v)  # the mean over actions is the value


def test_dueling_networks_are_pruned_like_any_other_layer():
    net = make_network(NetworkConfig(arch="nature", dueling=True), 6 * 51, atoms=51)
    names = [n for n, _ in prunable_parameters(net)]
    assert names[-2:] == ["out.value.weight", "out.advantage.weight"]
    plain = make_network(NetworkConfig(arch="nature"), 6 * 51)
    extra = sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 512 * 51 + 51  # the value layer
    with pytest.raises(ValueError, match="whole number"):
        make_network(NetworkConfig(arch="nature", dueling=True), 10, atoms=3)


def test_double_dqn_target_uses_the_online_nets_action_and_the_target_nets_value():
    b, a = 64, 4
    online, target = StubNet(a, seed=1), StubNet(a, seed=2)
    batch = random_batch(b, a)
    for double in (False, True):
        cfg = dataclasses.replace(paper_agent("dqn"), double_dqn=double)
        per_sample, _ = DQN(cfg, a).loss(online, target, batch)
        with torch.no_grad():
            q_next_t, q_next_o = target(batch.next_obs).double(), online(batch.next_obs).double()
            expected_targets = []
            for i in range(b):
                a_star = int(q_next_o[i].argmax()) if double else int(q_next_t[i].argmax())
                next_value = float(q_next_t[i, a_star])
                expected_targets.append(float(batch.returns[i]) + float(batch.discounts[i]) * next_value)
            q = online(batch.obs).double()[torch.arange(b), batch.actions]
            expected_loss = (torch.tensor(expected_targets, dtype=torch.float64) - q) ** 2
        torch.testing.assert_close(per_sample.double(), expected_loss, rtol=1e-5, atol=1e-6)
    assert (q_next_t.argmax(1) != q_next_o.argmax(1)).any(), "the two action choices never differ"


def test_double_c51_projects_the_target_distribution_of_the_online_nets_action():
    a, k = 4, 11
    cfg = dataclasses.replace(paper_agent("der"), num_atoms=k, v_max=2.0)
    agent = Rainbow(cfg, a)
    online, target = StubNet(a * k, seed=1), StubNet(a * k, seed=2)
    batch = random_batch(64, a)
    per_sample, _ = agent.loss(online, target, batch)
    z = torch.linspace(-2.0, 2.0, k)
    with torch.no_grad():
        online_q = (online(batch.next_obs).view(-1, a, k).softmax(-1) * z).sum(-1)
        target_probs = target(batch.next_obs).view(-1, a, k).softmax(-1)
        a_star = online_q.argmax(1)
        assert (a_star != (target_probs * z).sum(-1).argmax(1)).any()
        m = project_distribution(batch.returns[:, None] + batch.discounts[:, None] * z,
                                 target_probs[torch.arange(64), a_star], z)
        log_p = online(batch.obs).view(-1, a, k).log_softmax(-1)[torch.arange(64), batch.actions]
    torch.testing.assert_close(per_sample, -(m * log_p).sum(-1), rtol=1e-5, atol=1e-6)


def test_iqn_refuses_double_dqn():
    with pytest.raises(ValueError, match="double_dqn"):
        make_agent(dataclasses.replace(paper_agent("iqn"), double_dqn=True), 3)


# --- n-step 10 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_envs", [1, 3])
def test_ten_step_returns_match_brute_force(num_envs):
    """DER and DrQ(eps) bootstrap after 10 steps: every sample against the plain timeline, with full 10-step
    returns, terminals and truncations inside the horizon all exercised."""
    rng = np.random.default_rng(10 + num_envs)
    buf = ReplayBuffer(10_000, num_envs, n_step=10, gamma=0.97, frame_shape=(6, 6), seed=num_envs)
    tl = fill(buf, 400, rng, end_prob=0.04)
    batch = buf.sample(1024)
    slots, envs = (batch.indices // num_envs).numpy(), (batch.indices % num_envs).numpy()
    kinds = set()
    for b, (t, e) in enumerate(zip(slots, envs)):
        obs, ret, disc, next_obs = expected(tl, t, e, 10, 0.97)
        np.testing.assert_array_equal(batch.obs[b].numpy(), obs)
        np.testing.assert_array_equal(batch.next_obs[b].numpy(), next_obs)
        assert batch.returns[b].item() == pytest.approx(ret, abs=1e-5)
        assert batch.discounts[b].item() == pytest.approx(disc, abs=1e-6)
        kinds.add("terminal" if disc == 0 else "full" if disc == pytest.approx(0.97**10) else "truncated")
    assert kinds == {"terminal", "full", "truncated"}, kinds


# --- lost lives ---------------------------------------------------------------------------------------------------
class LivesBackend:
    """A stand-in Atari backend: 2 envs, 3 lives, frames count steps; env 0 loses a life at steps 2 and 4 and
    its game ends at step 6."""

    kwargs, num_actions = {}, 3

    def __init__(self):
        self.t = 0

    def reset(self):
        self.t = 0
        return np.zeros((2, 84, 84), np.uint8), np.array([3, 3])

    def step(self, actions):
        self.t += 1
        frames = np.full((2, 84, 84), self.t, np.uint8)
        lives = np.array([3 - (self.t >= 2) - (self.t >= 4) - (self.t >= 6), 3])
        return frames, np.ones(2, np.float32), np.array([self.t == 6, False]), np.zeros(2, bool), lives


@pytest.mark.parametrize("life_loss", [False, True])
def test_a_lost_life_restarts_the_stack_only_with_terminal_on_life_loss(life_loss):
    env = AtariVecEnv(EnvConfig(num_envs=2, terminal_on_life_loss=life_loss), LivesBackend(), "stub", "pong")
    env.reset()
    lost, returns = [], []
    for t in range(1, 7):
        obs, _, terminated, _, episodes = env.step(np.zeros(2, np.int64))
        lost.append(env.life_lost.tolist())
        returns += [ep.episode_return for ep in episodes]
        if t == 2:
            assert obs[0, :-1].any() != life_loss and obs[0, -1].max() == 2 and obs[1, :-1].any()
    # The game over at step 6 is a terminal, not a lost life; the episode and its score are the whole game.
    assert [x[0] for x in lost] == [False, True, False, True, False, False] and not any(x[1] for x in lost)
    assert returns == [6.0]


class LivesChain(ChainEnv):
    """The chain, where every move into state 1 costs a life (the episode goes on); `history` records
    `life_lost` after every step."""

    def reset(self):
        self.life_lost, self.history = np.zeros(self.num_envs, bool), []
        return super().reset()

    def step(self, actions):
        out = super().step(actions)
        self.life_lost = ~self.reset_mask & (self.state == 1) & ~out[2]
        self.history.append(self.life_lost.copy())
        return out


@pytest.mark.parametrize("life_loss", [False, True])
def test_trainer_stores_a_lost_life_as_a_terminal_and_restarts_the_stack(tmp_path, life_loss):
    cfg = chain_config(paper_agent("dqn"), sparsity=0.0, total_steps=200)
    cfg.agent.min_replay = 10**6  # acting and storing only
    cfg.env.terminal_on_life_loss = life_loss
    trainer = Trainer(cfg, tmp_path / "run", env=LivesChain(num_envs=3))
    trainer.run()
    t = trainer.replay.t
    lost = np.stack(trainer.env.history)[:t]  # lost[i]: the step stored in slot i lost a life
    assert lost.sum() > 5
    terminal, first = trainer.replay.terminal[:t].numpy(), trainer.replay.first[:t].numpy()
    assert (terminal[lost] == life_loss).all()
    assert (first[1:][lost[:-1]] == life_loss).all()


# --- presets ----------------------------------------------------------------------------------------------------
def test_atari100k_presets_hold_table_1_and_dopamines_gin_values():
    for name in ("der_100k_dense", "der_impala_w3_gmp95"):
        cfg = get_preset(name)
        a = cfg.agent
        assert (a.name, a.lr, a.adam_eps, a.batch_size, a.gamma, a.n_step) == ("der", 1e-4, 1.5e-4, 32, 0.99, 10)
        assert (a.min_replay, a.epsilon_train, a.epsilon_decay_steps) == (1600, 0.01, 2000)
        assert (a.replay, a.double_dqn, a.augmentation, a.target_update_period) == ("prioritized", True, False, 2000)
        assert (a.num_atoms, cfg.replay_ratio, cfg.network.dueling) == (51, 1.0, True)
        assert cfg.env.sticky_prob == 0.0 and cfg.env.terminal_on_life_loss
    for name in ("drq_eps_100k_gmp95", "drq_eps_impala_w3_dense"):
        cfg = get_preset(name)
        a = cfg.agent
        assert (a.name, a.lr, a.adam_eps, a.n_step, a.min_replay, a.epsilon_decay_steps) == \
            ("drq_eps", 1e-4, 1.5e-4, 10, 1600, 5000)
        assert (a.replay, a.loss, a.double_dqn, a.augmentation, a.augmentation_pad) == \
            ("uniform", "huber", True, True, 4)
        assert a.target_update_period == 1 and cfg.replay_ratio == 1.0 and cfg.env.sticky_prob == 0.0
    fig7 = get_preset("drq_eps_impala_w3_gmp95")
    assert (fig7.network.arch, fig7.network.width, fig7.total_steps) == ("impala", 3, 10_000_000)
    assert fig7.pruning.final_sparsity == 0.95
    assert fig7.pruning.window(fig7.nominal_grad_steps) == (2_000_000, 8_000_000)
    classic = get_preset("der_100k_gmp95")
    assert (classic.network.arch, classic.total_steps, classic.env.num_envs) == ("nature", 100_000, 1)
    assert classic.pruning.window(classic.nominal_grad_steps) == (20_000, 80_000)
    assert isinstance(make_agent(get_preset("der_100k_dense").agent, 4), Rainbow)
    assert isinstance(make_agent(get_preset("drq_eps_100k_dense").agent, 4), DQN)


# --- learning -------------------------------------------------------------------------------------------------------
class BrightnessChain(ChainEnv):
    """The chain with the state as the brightness of the whole frame: a random shift of a constant frame is
    the frame itself, so DrQ's augmentation leaves the task learnable on small frames."""

    def _frame(self, states):
        values = (30 + 28 * np.asarray(states)).astype(np.uint8)
        return np.broadcast_to(values[:, None, None], (len(states), *self.observation_shape[1:])).copy()


@pytest.mark.slow
@pytest.mark.parametrize("sparsity", [0.0, 0.9])
@pytest.mark.parametrize("name", ["der", "drq_eps"])
def test_atari100k_agents_learn_the_chain(tmp_path, name, sparsity):
    """Through the real loop with their own settings (n-step 10, an update every agent step, dueling, double
    DQN; augmentation and a target synced every step for DrQ(eps)), only faster exploration and learning."""
    agent = dataclasses.replace(paper_agent(name), lr=1e-3, min_replay=200, epsilon_decay_steps=800, gamma=0.9)
    if name == "der":
        agent.target_update_period = 200
    cfg = chain_config(agent, sparsity, total_steps=1200)
    cfg.network, cfg.replay_ratio, cfg.iteration_steps = NetworkConfig(arch="nature", dueling=True), 1.0, 600
    cfg.eval_episodes = 8
    chain = dict(num_envs=4, side=12)  # (at 8 x 8, DrQ(eps)'s untrained greedy policy already takes the far reward)
    trainer = Trainer(cfg, tmp_path / "run", env=BrightnessChain(**chain), eval_env=BrightnessChain(**chain))
    assert trainer.evaluate().score < 0.5, "the untrained greedy policy already takes the far reward"
    summary = trainer.run()
    with open(tmp_path / "run" / "iterations.csv") as f:
        scores = [float(r["score"]) for r in csv.DictReader(f)]
    # Random play from state 2 scores about 0.43, the myopic policy 0.2, the optimum 1.0.
    assert scores[-1] > 0.85, f"{name} (sparsity {sparsity}) did not learn the chain: scores {scores}"
    assert summary["grad_steps"] > 900
    if sparsity:
        assert math.isclose(summary["sparsity/prunable"], sparsity, abs_tol=0.01)
        for w, m in zip(trainer.pruner.weights, trainer.pruner.masks):
            assert torch.all(w[~m] == 0)


def test_evaluation_by_episodes_plays_each_envs_share_to_the_end():
    """Atari-100k's protocol: exactly N whole episodes (Dopamine: 100, one per env), spread evenly over the envs:
    env i's first shares[i] episodes count, whatever their lengths."""
    from agents.eval_phase import run_eval_episodes

    env = ChainEnv(num_envs=3, max_steps=6)
    finished = []
    original_step = env.step

    def step(actions):
        out = original_step(actions)
        finished.extend((ep.env_id, ep.episode_return) for ep in out[4])
        return out

    env.step = step
    result = run_eval_episodes(env, lambda obs: np.zeros(len(obs), np.int64), 7, 1.0, np.random.default_rng(1))
    counted = [r for i, share in enumerate((3, 2, 2)) for r in [r for e, r in finished if e == i][:share]]
    assert result.episodes == 7 and len(counted) == 7
    assert result.score == pytest.approx(np.mean(counted))
    assert len(set(r for _, r in finished)) > 1, "all episodes scored the same: the test cannot see which count"
    with pytest.raises(ValueError, match="episodes >= 1"):
        run_eval_episodes(env, lambda obs: obs, 0, 0.0, np.random.default_rng(0))


def test_atari100k_preset_evaluates_100_episodes_in_100_envs(tmp_path):
    cfg = get_preset("drq_eps_100k_dense")
    assert (cfg.evaluate, cfg.eval_episodes, cfg.eval_num_envs, cfg.eval_epsilon) == (True, 100, 100, 0.001)
    cfg = chain_config(paper_agent("dqn"), 0.0)
    cfg.evaluate, cfg.eval_episodes, cfg.eval_num_envs = True, 5, 5
    trainer = Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=2))
    with pytest.MonkeyPatch.context() as mp:
        built = []
        mp.setattr("agents.train.make_env", lambda env_cfg, seed: built.append(env_cfg.num_envs) or ChainEnv(5))
        result = trainer.evaluate()
    assert built == [5] and result.episodes == 5
