"""Trainer mechanics on the chain MDP: overlapping env stepping with learning changes nothing."""

import csv
import json
import time

import pytest
import torch

from agents.train import Trainer, linearly_decaying_epsilon
from tests.agents.chain_env import ChainEnv
from tests.agents.test_learning import chain_config, fast_dqn


def _train(tmp_path, name, overlap: str, agent=None):
    cfg = chain_config(agent or fast_dqn(min_replay=200), sparsity=0.9, total_steps=900)
    cfg.overlap_env = overlap
    cfg.pruning.start_step, cfg.pruning.end_step, cfg.pruning.update_freq = 0, 120, 20
    torch.manual_seed(0)
    trainer = Trainer(cfg, tmp_path / name, env=ChainEnv(num_envs=3, max_steps=12))
    trainer.run()
    with open(tmp_path / name / "episodes.csv") as f:
        episodes = [(r["agent_steps"], r["env_id"], r["return"], r["length"]) for r in csv.DictReader(f)]
    return trainer, episodes


def test_overlapped_env_stepping_gives_identical_results(tmp_path):
    a, ep_a = _train(tmp_path, "sequential", overlap="off")
    b, ep_b = _train(tmp_path, "overlapped", overlap="on")
    assert a.grad_steps == b.grad_steps > 100 and a.agent_steps == b.agent_steps
    assert ep_a == ep_b and any(int(length) == 12 for *_, length in ep_a), "no truncation was exercised"
    for (name, p), q in zip(a.online.named_parameters(), b.online.parameters()):
        assert torch.equal(p, q), name
    for m, n in zip(a.pruner.masks, b.pruner.masks):
        assert torch.equal(m, n)


def test_epsilon_schedule_is_dopamines():
    assert linearly_decaying_epsilon(0, warmup=100, decay=1000, final=0.01) == 1.0
    assert linearly_decaying_epsilon(100, warmup=100, decay=1000, final=0.01) == 1.0
    assert linearly_decaying_epsilon(600, warmup=100, decay=1000, final=0.01) == 0.01 + 0.99 * 0.5
    assert linearly_decaying_epsilon(1100, warmup=100, decay=1000, final=0.01) == 0.01
    assert linearly_decaying_epsilon(10**7, warmup=100, decay=1000, final=0.01) == 0.01


def test_bf16_autocast_runs_and_keeps_fp32_state(tmp_path):
    cfg = chain_config(fast_dqn(min_replay=200, batch_size=8), sparsity=0.9, total_steps=320)
    cfg.bf16 = True
    cfg.pruning.start_step, cfg.pruning.end_step, cfg.pruning.update_freq = 0, 20, 10
    trainer = Trainer(cfg, tmp_path / "bf16", env=ChainEnv(num_envs=2))
    trainer.run()
    assert trainer.grad_steps > 20
    assert all(p.dtype == torch.float32 for p in trainer.online.parameters())
    state = trainer.optimizer.state[trainer.pruner.weights[0]]
    assert state["exp_avg"].dtype == torch.float32
    for w, m in zip(trainer.pruner.weights, trainer.pruner.masks):
        assert torch.all(w[~m] == 0)


def test_resume_without_saved_replay_refills_min_replay_before_learning(tmp_path):
    from agents.checkpoint import latest_checkpoint, load_checkpoint

    cfg = chain_config(fast_dqn(min_replay=200), sparsity=0.0, total_steps=500)
    cfg.iteration_steps, cfg.save_replay = 250, False  # --no-save-replay
    first = Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=2)).run()
    assert first["resumed"] == 0 and first["resumed_without_replay"] is False
    state = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert "replay" not in state and not list((tmp_path / "run" / "checkpoints").glob("replay_*"))
    cfg.total_steps = 700
    resumed = Trainer(cfg, tmp_path / "run", checkpoint=state, env=ChainEnv(num_envs=2))
    assert resumed.replay.transitions_added == 0 and resumed.grad_steps == state["grad_steps"] > 0
    summary = resumed.run()
    # The ~200 agent steps after the resume only refill the replay (min_replay = 200): no learning yet.
    assert resumed.agent_steps >= 700 and resumed.replay.transitions_added >= 195
    assert resumed.grad_steps - state["grad_steps"] <= 2
    assert summary["resumed"] == 1 and summary["resumed_without_replay"] is True


def test_training_rows_log_the_speed_since_the_previous_row(tmp_path):
    import json

    cfg = chain_config(fast_dqn(min_replay=200), sparsity=0.0, total_steps=500)
    cfg.log_every = 100
    Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=2)).run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "charts/FPS" in r]
    assert len(rows) >= 4 and all(r["charts/FPS_recent"] > 0 for r in rows)
    assert rows[0]["charts/FPS_recent"] == rows[0]["charts/FPS"]  # the first row's window is the launch so far


def test_a_run_shorter_than_log_every_logs_its_last_row(tmp_path):
    """Else its metrics hold no sparsity (agents.report draws no schedule) and its last losses are lost."""
    cfg = chain_config(fast_dqn(min_replay=200), sparsity=0.9, total_steps=500)
    cfg.pruning.start_step, cfg.pruning.end_step, cfg.pruning.update_freq = 0, 40, 10
    cfg.log_every = 10_000
    trainer = Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=2))
    trainer.run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "charts/FPS" in r]
    assert len(rows) == 1 and rows[0]["agent_steps"] == trainer.agent_steps >= 500
    assert rows[0]["sparsity/prunable"] == pytest.approx(0.9, abs=0.01) and "losses/td_loss" in rows[0]


def test_analysis_metrics_are_logged_on_a_fixed_batch(tmp_path):
    import json

    cfg = chain_config(fast_dqn(min_replay=200), sparsity=0.9, total_steps=500)
    cfg.analysis_every = 20
    trainer = Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=2))
    trainer.run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    analysis = [r for r in rows if "analysis/srank" in r]
    assert len(analysis) == trainer.grad_steps // 20
    for r in analysis:
        assert 0.0 <= r["analysis/dormant_frac"] <= 1.0 and r["analysis/srank"] >= 1
        assert r["analysis/param_norm"] > 0 and "analysis/q_var" in r and r["grad_steps"] % 20 == 0
        assert any(k.startswith("analysis/dormant/") for k in r)
    assert trainer.analysis_obs.shape == (256, 4, 8, 8)  # one fixed batch, kept in checkpoints


def test_max_minutes_stops_with_a_checkpoint_and_resume_continues(tmp_path):
    import json

    from agents.checkpoint import latest_checkpoint, load_checkpoint

    cfg = chain_config(fast_dqn(min_replay=200), sparsity=0.0, total_steps=10**7)
    cfg.max_minutes = 0.04  # 2.4 s
    trainer = Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=2))
    summary = trainer.run()
    assert summary["finished"] is False and 0 < summary["agent_steps"] < cfg.total_steps
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["finished"] is False
    state = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert state["agent_steps"] == summary["agent_steps"]  # checkpointed at the stop
    resumed = Trainer(cfg, tmp_path / "run", checkpoint=state, env=ChainEnv(num_envs=2))
    assert resumed.agent_steps == summary["agent_steps"]
    assert resumed.run()["agent_steps"] > summary["agent_steps"]


class _SlowEnv(ChainEnv):
    def step(self, actions):
        time.sleep(0.005)
        return super().step(actions)


def _loop_splits(trainer):
    with open(trainer.run_dir / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    return [{k.removeprefix("speed/"): v for k, v in r.items() if k.startswith("speed/")} for r in rows
            if "speed/host" in r]


def test_each_iteration_logs_where_the_loop_waited(tmp_path, monkeypatch):
    """The loop's wall time splits into env waits, device waits and host work, without a sync of its own:
    an env that sleeps shows as env wait (overlapped or not: here no learner hides it), a slow replay add as
    host time. (On a CPU the device waits are ~0: the forward runs on the host.)"""
    cfg = chain_config(fast_dqn(min_replay=10_000), sparsity=0.0, total_steps=240)  # acting and stepping only
    cfg.iteration_steps = 120
    splits = {}
    for name, overlap, env in (("slow_env", "on", _SlowEnv(num_envs=2)), ("slow_env_seq", "off", _SlowEnv(num_envs=2)),
                               ("slow_host", "off", ChainEnv(num_envs=2))):
        cfg.overlap_env = overlap
        trainer = Trainer(cfg, tmp_path / name, env=env)
        if name == "slow_host":
            add = trainer.replay.add_observation
            monkeypatch.setattr(trainer.replay, "add_observation", lambda *a, add=add: (time.sleep(0.005), add(*a))[1])
        summary = trainer.run()
        rows = _loop_splits(trainer)
        assert summary["last_loop_split"] == trainer.last_loop_split
        # what ran: the CPU's fused kernels, no graphs; config.json names the Triton release
        assert summary["kernels"] == "fused" and summary["cuda_graphs"] == []
        assert json.loads((trainer.run_dir / "config.json").read_text())["triton"].count(".") >= 1
        assert len(rows) == 2 and rows[-1] == pytest.approx(trainer.last_loop_split, abs=1e-4)
        for row in rows:
            assert set(row) == {"env_wait", "device_wait", "host"} and all(0 <= v <= 1 for v in row.values())
            assert sum(row.values()) == pytest.approx(1.0, abs=1e-3)
        splits[name] = rows[-1]
    assert splits["slow_env"]["env_wait"] > 0.6 and splits["slow_env_seq"]["env_wait"] > 0.6, splits
    assert splits["slow_host"]["host"] > 0.6 and splits["slow_host"]["env_wait"] < 0.3, splits


def test_run_json_files_are_strict_json(tmp_path):
    """A score where no episode ended is NaN in Python; summary.json says null (NaN is not JSON: jq refuses it)."""
    from agents.train import _write_json

    _write_json(tmp_path / "s.json", {"final_score": float("nan"), "split": {"env": float("inf"), "host": 0.5},
                                      "scores": [1.0, float("-inf")], "name": "x"})

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    data = json.loads((tmp_path / "s.json").read_text(), parse_constant=refuse)
    assert data == {"final_score": None, "split": {"env": None, "host": 0.5}, "scores": [1.0, None], "name": "x"}
