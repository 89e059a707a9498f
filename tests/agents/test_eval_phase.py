"""The evaluation phase: Dopamine's episode rule, and no effect at all on training."""

import csv
import json

import numpy as np
import pytest
import torch

from agents.envs import Episode
from agents.eval_phase import run_eval_phase
from agents.train import Trainer
from tests.agents.chain_env import ChainEnv
from tests.agents.test_learning import chain_config, fast_agent


class ScriptedEnv:
    """Env i plays episodes of the lengths `lengths[i][0], lengths[i][1], ...` (cycled), whatever the actions,
    each returning its length; the AtariVecEnv auto-reset contract (one ignored step between episodes)."""

    num_actions, observation_shape = 3, (4, 12, 12)

    def __init__(self, lengths: list[list[int]]):
        self.lengths, self.num_envs = lengths, len(lengths)

    def reset(self):
        self.episode, self.t = [0] * self.num_envs, [0] * self.num_envs
        self.ended, self.reset_mask = [False] * self.num_envs, np.ones(self.num_envs, bool)
        return np.zeros((self.num_envs, *self.observation_shape), np.uint8)

    def step(self, actions):
        episodes, ended, restarted = [], [], []
        for i in range(self.num_envs):
            restarted.append(self.ended[i])
            if self.ended[i]:  # the auto-reset step
                self.episode[i], self.t[i] = self.episode[i] + 1, 0
                ended.append(False)
                continue
            self.t[i] += 1
            length = self.lengths[i][self.episode[i] % len(self.lengths[i])]
            ended.append(self.t[i] == length)
            if ended[i]:
                episodes.append(Episode(i, float(length), length))
        self.ended, self.reset_mask = ended, np.array(restarted)
        obs, n = np.zeros((self.num_envs, *self.observation_shape), np.uint8), self.num_envs
        return obs, np.zeros(n), np.array(ended), np.zeros(n, bool), episodes


def _greedy(obs):
    return np.zeros(len(obs), dtype=np.int64)


def test_one_env_plays_dopamines_episodes():
    lengths = [4, 9, 2, 7, 5, 3]
    for steps in range(1, 40):
        # Dopamine's _run_one_phase: play episodes while fewer than `steps` steps are done.
        played = []
        while sum(played) < steps:
            played.append(lengths[len(played) % len(lengths)])
        result = run_eval_phase(ScriptedEnv([lengths]), _greedy, steps, 0.001, np.random.default_rng(0))
        assert (result.episodes, result.steps, result.score) == (len(played), sum(played), np.mean(played)), steps


def test_parallel_envs_finish_their_episodes_and_start_none_after_the_steps_are_done():
    # env 0: episodes of 2, env 1: of 5, 6 steps. Steps 1-2: both play (4 done), env 0 ends one and goes on;
    # step 3: env 0 resets (5 done); steps 4-5: env 0 ends its second episode, env 1 its first, 9 >= 6 done.
    result = run_eval_phase(ScriptedEnv([[2], [5]]), _greedy, 6, 0.0, np.random.default_rng(0))
    assert (result.episodes, result.steps, result.score) == (3, 9, (2 + 2 + 5) / 3)
    rng = np.random.default_rng(1)
    for _ in range(30):
        lengths = [list(rng.integers(1, 12, size=4)) for _ in range(int(rng.integers(1, 5)))]
        steps = int(rng.integers(1, 60))
        result = run_eval_phase(ScriptedEnv(lengths), _greedy, steps, 0.5, np.random.default_rng(0))
        # Every step counted belongs to a counted, complete episode; at most one episode per env runs over.
        assert result.steps >= steps and result.steps - steps < len(lengths) * 11
        assert result.episodes >= len(lengths)  # every env plays at least one episode
        assert result.score * result.episodes == pytest.approx(result.steps)  # return == length here


def _run(tmp_path, name, evaluate: bool):
    cfg = chain_config(fast_agent("iqn"), sparsity=0.9, total_steps=360)  # IQN: acting draws torch randoms
    cfg.agent.min_replay, cfg.iteration_steps, cfg.tensorboard = 100, 120, True
    cfg.pruning.start_step, cfg.pruning.end_step, cfg.pruning.update_freq = 0, 40, 10
    cfg.evaluate, cfg.eval_steps, cfg.eval_epsilon = evaluate, 25, 0.3
    torch.manual_seed(0)
    trainer = Trainer(cfg, tmp_path / name, env=ChainEnv(num_envs=2), eval_env=ChainEnv(num_envs=3, max_steps=10))
    trainer.run()
    with open(tmp_path / name / "iterations.csv") as f:
        rows = list(csv.DictReader(f))
    return trainer, rows, (tmp_path / name / "episodes.csv").read_text(), torch.get_rng_state()


def test_evaluation_changes_nothing_in_training_and_is_logged(tmp_path):
    plain, plain_rows, plain_episodes, plain_torch_rng = _run(tmp_path, "plain", evaluate=False)
    evaluated, rows, episodes, torch_rng = _run(tmp_path, "evaluated", evaluate=True)
    assert evaluated.grad_steps == plain.grad_steps > 50 and episodes == plain_episodes
    for (name, p), q in zip(plain.online.state_dict().items(), evaluated.online.state_dict().values()):
        assert torch.equal(p, q), name
    for p, q in zip(plain.target.parameters(), evaluated.target.parameters()):
        assert torch.equal(p, q)
    assert plain.action_rng.bit_generator.state == evaluated.action_rng.bit_generator.state
    assert torch.equal(plain.replay.generator.get_state(), evaluated.replay.generator.get_state())
    assert torch.equal(plain_torch_rng, torch_rng)
    training = ["iteration", "agent_steps", "grad_steps", "score", "episodes", "total_sparsity"]
    assert [[r[k] for k in training] for r in rows] == [[r[k] for k in training] for r in plain_rows]
    assert len(rows) == 3 and all(r["eval_score"] == r["eval_episodes"] == "" for r in plain_rows)
    for r in rows:  # 25 steps of episodes of at most 10 steps on 3 envs: at least 3 episodes, each in [0, 1]
        assert int(r["eval_episodes"]) >= 3 and 0.0 <= float(r["eval_score"]) <= 1.0
    logged = [json.loads(line) for line in (tmp_path / "evaluated" / "metrics.jsonl").read_text().splitlines()]
    logged = [(r["agent_steps"], r["charts/eval_score"]) for r in logged if "charts/eval_score" in r]
    assert logged == [(int(r["agent_steps"]), float(r["eval_score"])) for r in rows]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(tmp_path / "evaluated" / "tb"))
    tb.Reload()
    scalars = tb.Scalars("charts/eval_score")
    assert [e.step for e in scalars] == [step for step, _ in logged]
    assert [e.value for e in scalars] == pytest.approx([score for _, score in logged])
    summary = json.loads((tmp_path / "evaluated" / "summary.json").read_text())
    assert summary["final_eval_score"] == float(rows[-1]["eval_score"])
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["final_eval_score"] is None


def test_evaluation_options_are_checked():
    from agents.config import TrainConfig

    with pytest.raises(ValueError, match="eval_steps"):
        TrainConfig(eval_steps=0)
    with pytest.raises(ValueError, match="eval_epsilon"):
        TrainConfig(eval_epsilon=1.5)
