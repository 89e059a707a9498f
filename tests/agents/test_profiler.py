import json
import os

import pytest
import torch

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
    # How close to the hardware: FLOPs of every layer and of the run, over the measured times.
    flops = report["model_flops"]
    assert flops["learner_flops"] == trainer.model_flops()["learner_flops"] > 0
    assert flops["learner_tflops"] == pytest.approx(
        flops["learner_flops"] / (comps["learner"]["ms_per_call"] * 1e-3) / 1e12, rel=1e-3)
    # Acting counts the forwards that ran: with epsilon near 1 many calls explore in every env and run none.
    assert 0 < flops["act_forwards"] == trainer.act_forwards < comps["act"]["calls"]
    assert flops["act_tflops"] == pytest.approx(
        flops["act_flops"] * trainer.act_forwards / comps["act"]["seconds"] / 1e12, rel=1e-3)
    ran = flops["learner_flops"] * trainer.grad_steps + flops["act_flops"] * trainer.act_forwards
    assert flops["updates"] == trainer.grad_steps
    assert flops["run_tflops"] == pytest.approx(ran / report["wall_seconds"] / 1e12, rel=1e-3)
    assert all(row["forward_flops"] > 0 and row["backward_flops"] > row["forward_flops"] for row in layers.values())
    assert "GFLOP per update" in format_table(report)
    # What else the times depend on: the code, the versions, and the CPU's threads and competition.
    assert report["git_sha"] and report["date"] and report["torch"] == torch.__version__
    assert report["host"]["torch_threads"] == torch.get_num_threads() and report["host"]["cpus"] > 0
    cpu_use = summary["cpu_use"]  # every run's summary: whether its speed compares
    assert cpu_use["own_cores"] > 0 and cpu_use["other_processes_cores"] >= 0 and cpu_use["cpus"] > 0


def test_profile_says_when_other_processes_shared_the_cpus():
    """A dense-against-pruned comparison on a loaded machine once showed the pruned run 1.5x slower in every
    component alike: another process's load, which the profile neither recorded nor flagged."""
    import subprocess
    import sys
    import time

    from agents.profiler import compare_reports, cpus_oversubscribed, shared_cores_note

    prof = Profiler(True, "cpu")
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(1.5)  # this process idles while the other one spins a core
        report = prof.report(frames=100)
    finally:
        busy.kill()
        busy.wait()
    assert report["host"]["other_processes_cores"] >= 0.5 and report["host"]["own_cores"] < 0.5, report["host"]
    # Competition: others' use above a quarter of a core, and with the run's own over 90% of the CPUs.
    host = {"torch_threads": 2, "cpus": 2, "own_cores": 1.9, "other_processes_cores": 1.0}
    assert cpus_oversubscribed(host)
    assert not cpus_oversubscribed(host | {"other_processes_cores": 0.2})
    assert not cpus_oversubscribed(host | {"cpus": 16})  # other work on idle cores of a large machine
    assert not cpus_oversubscribed(host | {"other_processes_cores": None}) and not cpus_oversubscribed(None)
    # Where the scheduler says how long the run's threads waited for a CPU, that decides: a sweep's two runs on two
    # cores keep them all busy, but each on its own core (no false alarm); a run that waited was slowed.
    sweep = {"torch_threads": 1, "cpus": 2, "own_cores": 0.95, "other_processes_cores": 1.05}
    assert not cpus_oversubscribed(sweep | {"cpu_wait_share": 0.02}) and cpus_oversubscribed(sweep)
    assert cpus_oversubscribed(sweep | {"cpu_wait_share": 0.4})
    assert not cpus_oversubscribed(sweep | {"other_processes_cores": 0.1, "cpu_wait_share": 0.4})  # its own threads
    loaded, quiet = {**report, "host": host}, {**report, "host": host | {"other_processes_cores": 0.0}}
    assert "other processes kept 1.00 of the 2 CPUs" in shared_cores_note(loaded)
    assert shared_cores_note(loaded) in format_table(loaded) and shared_cores_note(quiet) is None
    table = compare_reports({"dense": quiet, "pruned": loaded})
    assert f"pruned: {shared_cores_note(loaded)}" in table and "dense: warning" not in table
    assert "| CPU threads / CPUs, other processes' cores | 2 / 2, 0.00 | 2 / 2, 1.00 |" in table
    more = {**quiet, "host": quiet["host"] | {"torch_threads": 3}}
    assert "different CPU threads" in compare_reports({"a": quiet, "b": more})
    assert "different CPU threads" not in compare_reports({"a": quiet, "b": quiet})


@pytest.mark.parametrize("double_dqn", [False, True])
def test_model_flops_are_the_layers_multiply_adds(tmp_path, double_dqn):
    """The learner step's FLOPs, counted by torch.utils.flop_counter, against a count by hand from each conv and
    linear layer's shapes: the online and target forwards (and the online one on the next states for double
    DQN), and a backward of twice the forward, less the first layer's input gradient (the observations need
    none)."""
    cfg = chain_config(fast_dqn(min_replay=100, batch_size=8, double_dqn=double_dqn), sparsity=0.9, total_steps=10)
    trainer = Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=4))
    layer_flops = []

    def count(module, args, out):
        per_output = (module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                      if isinstance(module, torch.nn.Conv2d) else module.in_features)
        layer_flops.append(2 * out.numel() * per_output)

    layers = [m for m in trainer.online.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    hooks = [m.register_forward_hook(count) for m in layers]
    with torch.no_grad():
        trainer.agent.q_values(trainer.online, torch.zeros(8, *trainer._act_obs.shape[1:], dtype=torch.uint8))
    for hook in hooks:
        hook.remove()
    assert len(layer_flops) == len(layers) > 2
    forward = sum(layer_flops)
    flops = trainer.model_flops()
    assert flops["learner_flops"] == (4 + double_dqn) * forward - layer_flops[0]
    assert flops["act_flops"] == forward // 2  # 4 envs, a batch of 8
    assert flops["flops_per_frame"] == round((flops["learner_flops"] * 0.25 + forward / 8) / 4)


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
    tflops = next(line for line in table.splitlines() if line.startswith("| model TFLOP/s: run, learner |"))
    cells = [c.strip() for c in tflops.strip("| ").split(" | ")[1:]]
    assert len(cells) == 2 and all(float(x) > 0 for c in cells for x in c.split(", "))  # both runs, both rates
    assert main([str(tmp_path / "missing")]) == 2
    assert "no profile at" in capsys.readouterr().err


def test_summary_records_the_flops_per_frame_and_a_failed_count_loses_nothing(tmp_path, monkeypatch, capsys):
    """summary.json carries the FLOPs per frame, for agents.report's model TFLOP/s; a count that fails leaves
    them out with a warning and the summary otherwise whole."""
    cfg = chain_config(fast_dqn(min_replay=100, batch_size=8), sparsity=0.0, total_steps=200)
    trainer = Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=2))
    trainer.run()
    done = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert done["model_flops_per_frame"] == trainer.model_flops()["flops_per_frame"] > 0

    def broken(self):
        raise RuntimeError("no count")

    monkeypatch.setattr(Trainer, "model_flops", broken)
    Trainer(cfg, tmp_path / "other", env=ChainEnv(num_envs=2)).run()
    done = json.loads((tmp_path / "other" / "summary.json").read_text())
    assert done["finished"] and done["model_flops_per_frame"] is None
    assert "could not count the model's FLOPs (RuntimeError: no count)" in capsys.readouterr().err



@pytest.mark.skipif(not (hasattr(os, "sched_setaffinity") and os.path.exists("/proc/self/task")),
                    reason="needs Linux's CPU affinity and per-thread schedstat")
def test_a_launch_that_shares_its_cpu_records_its_wait_for_it():
    """One CPU for this process and a spinning child: each runs about half the time and waits the other half."""
    import subprocess
    import sys
    import time

    from agents.profiler import Profiler, cpus_oversubscribed

    affinity = os.sched_getaffinity(0)
    cpu = min(affinity)
    spin = f"import os, time\nos.sched_setaffinity(0, {{{cpu}}})\nt = time.time()\nwhile time.time() - t < 4: pass"
    busy = subprocess.Popen([sys.executable, "-c", spin])
    try:
        os.sched_setaffinity(0, {cpu})
        time.sleep(0.5)  # the child is spinning on that CPU
        prof = Profiler(False, "cpu")
        t = time.time()
        while time.time() - t < 1.5:  # spin too
            pass
        host = prof.host()
    finally:
        os.sched_setaffinity(0, affinity)
        busy.kill()
        busy.wait()
    assert host["cpu_wait_share"] is not None and host["cpu_wait_share"] > 0.5, host
    assert cpus_oversubscribed(host), host
