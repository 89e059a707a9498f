"""A run ends at the sparsity its config asks for, and summary.json says when it did not."""

import json

import pytest

from agents.checkpoint import latest_checkpoint, load_checkpoint
from agents.train import Trainer
from tests.agents.chain_env import ChainEnv
from tests.agents.test_learning import chain_config, fast_dqn


def _short_run_config(**pruning):
    """900 agent steps on 3 envs, 400 of them warm-up: 225 nominal gradient steps, 125 taken."""
    cfg = chain_config(fast_dqn(min_replay=400), sparsity=0.9, total_steps=900)
    cfg.pruning.start_step = cfg.pruning.end_step = None  # the window from the fractions, as a preset has it
    cfg.pruning.update_freq = 1000
    for k, v in pruning.items():
        setattr(cfg.pruning, k, v)
    return cfg


def _summary(tmp_path, name):
    return json.loads((tmp_path / name / "summary.json").read_text())


def test_short_run_with_a_late_window_reaches_its_final_sparsity(tmp_path, capsys):
    # Nominal window [45, 180] lies past the run's 125 gradient steps and holds no multiple of update_freq:
    # it ends at the last step (124), where the masks are updated.
    trainer = Trainer(_short_run_config(), tmp_path / "run", env=ChainEnv(num_envs=3))
    assert (trainer.pruner.start, trainer.pruner.end) == (45, 124)
    err = capsys.readouterr().err
    assert "takes 125 gradient steps" in err and "window's end 180" in err
    assert "[45, 124] holds 1 mask update(s)" in err
    summary = trainer.run()
    assert trainer.grad_steps == 125
    assert summary["sparsity/prunable"] == pytest.approx(0.9, abs=0.005)
    assert summary == _summary(tmp_path, "run")
    assert summary["target_sparsity"] == 0.9 and summary["below_target_sparsity"] is False
    assert summary["schedule_short_of_target"] is False
    assert summary["scheduled_sparsity"] == trainer.pruner.scheduled_sparsity(125) == summary["sparsity/prunable"]


def test_run_stopped_by_its_own_schedule_is_not_below_target(tmp_path, capsys):
    trainer = Trainer(_short_run_config(end_step=400, update_freq=20), tmp_path / "run", env=ChainEnv(num_envs=3))
    assert "--pruning.end-step 400 lies beyond the run's 125 gradient steps" in capsys.readouterr().err
    summary = trainer.run()
    assert 0.05 < summary["sparsity/prunable"] < 0.5  # the schedule at step 125 of [45, 400]
    assert summary["below_target_sparsity"] is False and summary["target_sparsity"] == 0.9
    # ... but it is not the 90% run its config names: flagged, and said at the end
    assert summary["schedule_short_of_target"] is True
    assert "the run finished at prunable sparsity" in capsys.readouterr().err


def test_run_that_never_prunes_is_flagged(tmp_path, capsys):
    trainer = Trainer(_short_run_config(start_step=300, end_step=400, update_freq=20), tmp_path / "run",
                      env=ChainEnv(num_envs=3))
    assert "it never prunes" in capsys.readouterr().err
    summary = trainer.run()
    assert summary["sparsity/prunable"] == 0.0 and summary["schedule_short_of_target"] is True
    assert "short of its final sparsity 0.9" in capsys.readouterr().err


def test_run_resumed_without_its_replay_ends_below_target(tmp_path):
    cfg = chain_config(fast_dqn(min_replay=200), sparsity=0.9, total_steps=500)
    cfg.iteration_steps, cfg.save_replay = 250, False
    cfg.pruning.start_step, cfg.pruning.end_step, cfg.pruning.update_freq = 0, 60, 10
    whole = Trainer(cfg, tmp_path / "whole", env=ChainEnv(num_envs=2)).run()
    assert whole["below_target_sparsity"] is False and whole["sparsity/prunable"] == pytest.approx(0.9, abs=0.005)

    cfg.total_steps = 250
    Trainer(cfg, tmp_path / "resumed", env=ChainEnv(num_envs=2)).run()
    cfg.total_steps = 500
    state = load_checkpoint(latest_checkpoint(tmp_path / "resumed" / "checkpoints"))
    resumed = Trainer(cfg, tmp_path / "resumed", checkpoint=state, env=ChainEnv(num_envs=2))
    summary = resumed.run()  # refills min_replay steps without learning: ~25 of the 75 gradient steps
    assert resumed.grad_steps < 60 < whole["grad_steps"]
    assert summary["sparsity/prunable"] < summary["scheduled_sparsity"] == whole["scheduled_sparsity"]
    assert summary["below_target_sparsity"] is True
