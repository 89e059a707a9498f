import json

import pytest

from agents.profiler import Profiler, format_table
from agents.train import Trainer
from tests.agents.chain_env import ChainEnv
from tests.agents.test_learning import chain_config, fast_dqn


def test_profile_json_accounts_for_the_loop(tmp_path):
    cfg = chain_config(fast_dqn(min_replay=200), sparsity=0.9, total_steps=600)
    cfg.profile = True
    cfg.pruning.start_step, cfg.pruning.end_step, cfg.pruning.update_freq = 0, 100, 20
    trainer = Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=4))
    summary = trainer.run()
    # Profiling adds no training step: one per 4 agent steps once min_replay transitions are in (the exact
    # start depends on how many auto-reset steps the episodes had, hence the +-1).
    assert summary["grad_steps"] == trainer.grad_steps
    assert abs(trainer.grad_steps - (trainer.agent_steps - 200) / 4) <= 1
    report = json.loads((tmp_path / "run" / "profile.json").read_text())
    comps = report["components"]
    for name in ("env", "act", "replay_add", "replay_sample", "learner", "optimizer", "mask_update", "checkpoint"):
        assert comps[name]["calls"] > 0, name
    assert comps["learner"]["calls"] == comps["optimizer"]["calls"] == trainer.grad_steps
    # One env step and one replay add per loop pass, each timed in two halves (before and after the learner).
    assert comps["env"]["calls"] == comps["replay_add"]["calls"] == comps["act"]["calls"]
    updates = [t for t in range(trainer.grad_steps) if trainer.pruner.is_update_step(t)]
    assert comps["mask_update"]["calls"] == len(updates) >= 5  # grad steps 0, 20, 40, ...
    assert sum(c["share"] for c in comps.values()) == pytest.approx(1.0, abs=0.01)
    assert report["frames"] == trainer.agent_steps * 4 and report["learner_ops"]
    layers = {row["layer"]: row for row in report["learner_layers"]}
    assert list(layers) == [n.removesuffix(".weight") for n in trainer.pruner.layer_names]  # every conv / linear
    measured = trainer.pruner.sparsity_report()
    for name, row in layers.items():
        assert row["forward_ms"] > 0 and row["backward_ms"] > 0 and row["params"] > 0
        assert row["spread"] >= 0  # interquartile range / median of the timed calls: how far to trust a difference
        assert row["weight_sparsity"] == pytest.approx(measured[f"sparsity/{name}.weight"], abs=1e-4)
    assert "learner" in format_table(report) and "learner layer (alone" in format_table(report)
    assert {row["compute_dtype"] for row in layers.values()} == {"float32"}


def test_profile_of_a_resumed_run_counts_the_frames_of_its_launch(tmp_path):
    """A resumed run's profile divided the frames of the whole run by the wall time of its launch alone: its
    frames/s, and every component per million frames in `agents.profiler`'s comparison, were wrong."""
    from agents.checkpoint import latest_checkpoint, load_latest_checkpoint

    cfg = chain_config(fast_dqn(min_replay=100), sparsity=0.0, total_steps=400)
    cfg.iteration_steps = 200
    Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=4)).run()
    # as if killed after the first iteration's checkpoint
    for path in (latest_checkpoint(tmp_path / "run" / "checkpoints"), tmp_path / "run" / "summary.json"):
        path.unlink()
    cfg.profile = True
    resumed = Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=4),
                      checkpoint=load_latest_checkpoint(tmp_path / "run" / "checkpoints", cfg.to_dict()))
    start = resumed.agent_steps
    assert start >= 200
    resumed.run()
    report = json.loads((tmp_path / "run" / "profile.json").read_text())
    assert resumed.agent_steps >= 400 and report["frames"] == (resumed.agent_steps - start) * 4
    assert report["frames_per_second"] == pytest.approx(report["frames"] / report["wall_seconds"], rel=1e-3)


def test_layer_profile_of_a_bf16_run_times_bf16_layers(tmp_path):
    cfg = chain_config(fast_dqn(min_replay=100, batch_size=8), sparsity=0.0, total_steps=240)
    cfg.profile, cfg.bf16 = True, True
    Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=2)).run()
    layers = json.loads((tmp_path / "run" / "profile.json").read_text())["learner_layers"]
    # under the run's autocast every conv and linear computes in bf16, as in training
    assert layers and {row["compute_dtype"] for row in layers} == {"bfloat16"}


def test_disabled_profiler_records_nothing():
    prof = Profiler(False, "cpu")
    with prof.section("env"):
        pass
    assert not prof.seconds and prof.section("a") is prof.section("b")


def test_compare_dense_and_pruned_profiles(tmp_path, capsys):
    from agents.profiler import main

    for name, sparsity in (("dense", 0.0), ("pruned", 0.9)):
        cfg = chain_config(fast_dqn(min_replay=200), sparsity=sparsity, total_steps=400)
        cfg.profile = True
        cfg.pruning.start_step, cfg.pruning.end_step, cfg.pruning.update_freq = 0, 20, 10
        Trainer(cfg, tmp_path / name, env=ChainEnv(num_envs=2)).run()
    capsys.readouterr()
    assert main([str(tmp_path / "dense"), str(tmp_path / "pruned" / "profile.json")]) == 0
    table = capsys.readouterr().out
    assert "| component (s per 1M frames) | dense | pruned |" in table
    mask_row = next(line for line in table.splitlines() if line.startswith("| mask_update |"))
    assert mask_row.split("|")[2].strip() == "-"  # the dense run has no mask updates
    assert "x) |" in next(line for line in table.splitlines() if line.startswith("| learner |"))
    assert "| encoder.1.conv |" in table and "(0.00) |" in table  # per-layer rows with sparsity
    assert "| device, precision | cpu, fp32 | cpu, fp32 |" in table  # what the numbers were measured on
    assert main([str(tmp_path / "missing")]) == 2
    assert "no profile at" in capsys.readouterr().err
