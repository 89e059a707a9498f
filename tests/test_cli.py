"""The real CLI on Atari (CPU): a smoke run through a compressed pruning schedule, kill-and-resume, bad input."""

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from agents.checkpoint import CheckpointError, checkpoint_step, latest_checkpoint, load_checkpoint
from agents.config import TrainConfig
from agents.train import Trainer, UsageError, main, parse_args

ROOT = Path(__file__).resolve().parents[1]
# A few thousand agent steps of Impala x1 GMP-DQN on Breakout (the demo preset), pruned to 95% between
# gradient steps 0 and 150. Batches of 8: at the preset's 32 the learner took most of a run (the smoke run: 85 s
# alone on a CPU core, 34 s at 8), and nothing these tests check depends on the batch's size.
SMOKE = ["--preset", "demo", "--env.num-envs", "4", "--agent.min-replay", "400", "--replay-ratio", "0.125",
         "--pruning.start-step", "0", "--pruning.end-step", "150", "--pruning.update-freq", "25",
         "--replay-capacity", "20000", "--log-every", "500", "--no-progress", "--device", "cpu",
         "--agent.batch-size", "8"]


def run_cli(args, **kw):
    # One thread, as in tests/test_agents_smoke.py: with two, a run beside another test process on CI's two cores
    # spent most of its CPU time in OpenMP's spin-waits (the smoke run took 336 CPU seconds that way).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "agents.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_smoke_atari_run_directory(tmp_path):
    proc = run_cli([*SMOKE, "--total-steps", "2400", "--iteration-steps", "800", "--runs-dir", str(tmp_path),
                    "--run-name", "smoke"])
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    run = tmp_path / "smoke"
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["env"]["game"] == "Breakout" and config["config"]["pruning"]["final_sparsity"] == 0.95
    assert config["torch"] and "env_backend_kwargs" in config
    iterations = read_csv(run / "iterations.csv")
    assert [int(r["iteration"]) for r in iterations] == [1, 2, 3]
    assert all(float(r["fps"]) > 0 for r in iterations)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [m for m in metrics if "charts/SPS" in m][-1]  # the last training row (iteration ends add others)
    assert last["sparsity/prunable"] == pytest.approx(0.95, abs=1e-3), "sparsity did not reach its target"
    assert any(k.startswith("sparsity/encoder") for k in last) and "losses/td_loss" in last
    assert "charts/SPS" in last and last["charts/SPS"] > 0
    episodes = read_csv(run / "episodes.csv")
    assert episodes and all(float(e["return"]) >= 0 and int(e["length"]) > 0 for e in episodes)
    scores = [float(r["score"]) for r in iterations]
    assert any(s == s for s in scores), "no iteration has a score"  # NaN only where no episode ended
    assert list((run / "tb").iterdir()), "no TensorBoard events"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["agent_steps"] >= 2400
    ckpt = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    masks = [v for k, v in ckpt["pruner"].items() if k.startswith("mask")]
    kept = sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
    assert kept == pytest.approx(0.05, abs=1e-3)
    for name, w in ckpt["online"].items():  # the saved network is actually pruned
        if w.dim() > 1:
            mask = ckpt["pruner"][f"mask{[n for n in ckpt['online'] if ckpt['online'][n].dim() > 1].index(name)}"]
            assert torch.all(w[~mask] == 0), name


@pytest.mark.slow
def test_kill_and_resume_continues_from_checkpoint(tmp_path):
    args = [*SMOKE, "--total-steps", "2000", "--iteration-steps", "500", "--runs-dir", str(tmp_path),
            "--run-name", "r", "--save-replay"]
    proc = run_cli(args)
    ckpts = tmp_path / "r" / "checkpoints"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        path = latest_checkpoint(ckpts)
        if path is not None and int(path.stem.split("_")[1]) >= 1000:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.communicate()[0]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    path = latest_checkpoint(ckpts)
    saved = load_checkpoint(path)
    assert saved["agent_steps"] < 2000

    trainer = Trainer.resume(tmp_path / "r")  # what `--resume` does
    assert trainer.agent_steps == saved["agent_steps"] and trainer.grad_steps == saved["grad_steps"]
    for k, v in saved["pruner"].items():
        assert torch.equal(trainer.pruner.state_dict()[k], v)
    opt = trainer.optimizer.state_dict()
    for pid, st in saved["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(opt["state"][pid][k], v), (pid, k)
    assert trainer.replay.t == saved["replay"]["t"]
    trainer.close()

    resumed = run_cli(["--resume", str(tmp_path / "r")])
    out, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out
    assert f"resuming {tmp_path / 'r'} at agent step {saved['agent_steps']:,}" in out
    iterations = [int(r["iteration"]) for r in read_csv(tmp_path / "r" / "iterations.csv")]
    assert iterations == [1, 2, 3, 4], "iterations lost or written twice across the resume"
    steps = [int(r["agent_steps"]) for r in read_csv(tmp_path / "r" / "iterations.csv")]
    assert steps == sorted(steps)
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["finished"]


def _error_of(capsys, argv):
    code = main(argv)
    return code, capsys.readouterr().err


def test_agent_name_on_another_agents_preset_notes_what_it_kept(capsys):
    """--agent.name switches the loss and the network only: a run that meant the paper's Rainbow and got DQN's
    1-step uniform replay is told so (a note, not an error: an ablation may want exactly this)."""
    parse_args(["--preset", "dqn_impala_w3_gmp95", "--agent.name", "rainbow"])
    err = capsys.readouterr().err
    assert "note: --agent.name rainbow changes the loss and the network only" in err
    assert "preset dqn_impala_w3_gmp95" in err and "n_step 1 (the paper's 3); replay 'uniform' (the paper's " \
        "'prioritized')" in err
    parse_args(["--agent.name", "iqn", "--agent.min-replay", "20"])
    err = capsys.readouterr().err
    assert "from the defaults, which differ from the paper's iqn: lr 6.25e-05 (the paper's 5e-05)" in err
    assert "min_replay" not in err  # given on the command line: chosen, not kept
    for argv in (["--preset", "rainbow_impala_w3_gmp95"], ["--preset", "dqn_impala_w3_gmp95", "--agent.name", "dqn"],
                 ["--preset", "dqn_impala_w3_gmp95", "--agent.name", "rainbow", "--agent.n-step", "3",
                  "--agent.replay", "prioritized"]):
        parse_args(argv)
        assert "note:" not in capsys.readouterr().err, argv


def test_unknown_game_suggests_names(tmp_path, capsys):
    code, err = _error_of(capsys, ["--env.game", "Pongg", "--runs-dir", str(tmp_path)])
    assert code == 2 and "Pong" in err and "Pongg" in err
    assert list(tmp_path.iterdir()) == []  # no empty run directory left behind
    existing = tmp_path / "mine"
    (existing / "notes.txt").parent.mkdir()
    (existing / "notes.txt").write_text("keep")
    code, _ = _error_of(capsys, ["--env.game", "Pongg", "--runs-dir", str(tmp_path), "--run-name", "mine"])
    assert code == 2 and (existing / "notes.txt").read_text() == "keep"  # a directory it did not make stays


@pytest.mark.parametrize("argv,message", [
    (["--pruning.final-sparsity", "1.0"], "final_sparsity must be in [0, 1)"),
    (["--pruning.final-sparsity", "-0.5"], "final_sparsity must be in [0, 1)"),
    (["--network.width", "0"], "width must be an integer >= 1"),
    (["--pruning.start-step", "10", "--pruning.end-step", "5"], "start"),
    (["--preset", "dqn_impala_w7_gmp95"], "unknown preset"),
    (["--agent.gamma", "1.5"], "agent.gamma (the discount) must be in (0, 1], got 1.5"),
    (["--agent.gamma", "0"], "agent.gamma (the discount) must be in (0, 1], got 0"),
    (["--agent.epsilon-train", "2"], "agent.epsilon_train (a probability) must be in [0, 1], got 2"),
    (["--agent.epsilon-train", "-0.1"], "agent.epsilon_train (a probability) must be in [0, 1]"),
    # Options the agent does not read: the run would not do what its config says.
    (["--agent.num-atoms", "11"], "agent dqn does not read agent.num_atoms = 11 (read by rainbow, der, cql_c51)"),
    (["--preset", "iqn_impala_w1_gmp95", "--agent.munchausen-tau", "0.1"], "agent.munchausen_tau = 0.1 (read by miqn)"),
    (["--preset", "rainbow_impala_w1_gmp95", "--agent.loss", "huber"], "agent rainbow does not read agent.loss"),
    (["--agent.augmentation-pad", "2"], "agent.augmentation_pad = 2 (read with agent.augmentation on)"),
    (["--device", "gpu"], "--device 'gpu' is not a device; use auto, cpu, cuda or cuda:N"),
    (["--device", "cuda:x"], "is not a device"),
    (["--device", "xpu"], "prunerl trains on auto, cpu, cuda[:N] or mps"),
    # NaN passes `x <= 0` checks: it trained on NaNs (a NaN lr, v_max, Munchausen tau), or failed mid-run.
    (["--agent.lr", "nan"], "agent.lr must be > 0 and finite, got nan"),
    (["--agent.lr", "inf"], "agent.lr must be > 0 and finite, got inf"),
    (["--agent.weight-decay", "nan"], "agent.weight_decay must be >= 0 and finite, got nan"),
    (["--preset", "rainbow_nature_w1_gmp95", "--agent.v-max", "nan"], "agent.v_max must be > 0 and finite"),
    (["--preset", "miqn_nature_w1_gmp95", "--agent.munchausen-tau", "0"], "agent.munchausen_tau must be > 0"),
    (["--preset", "miqn_nature_w1_gmp95", "--agent.munchausen-clip", "0.5"], "agent.munchausen_clip"),
    (["--preset", "iqn_nature_w1_gmp95", "--agent.quantile-embedding-dim", "0"],
     "agent.quantile_embedding_dim must be >= 1, got 0"),
    (["--preset", "iqn_nature_w1_gmp95", "--agent.num-quantile-samples", "0"], "agent.num_quantile_samples must be"),
    (["--redo.tau", "nan"], "redo.tau must be >= 0 and finite, got nan"),
    (["--replay-ratio", "nan"], "replay_ratio must be > 0 and finite, got nan"),
    (["--replay-ratio", "inf"], "replay_ratio must be > 0 and finite, got inf"),
    (["--log-every", "0"], "log_every must be >= 1"),
    (["--analysis-every", "-1"], "analysis_every >= 0"),
    (["--seed", "-1"], "seed must be in [0, 2**30), got -1"),
    (["--seed", str(2**31)], "seed must be in [0, 2**30)"),
    (["--env.num-threads", "-1"], "num_threads must be >= 0"),
])
def test_bad_config_is_a_clear_error(tmp_path, capsys, argv, message):
    # A run small enough to finish quickly if the value got through (as the NaN and out-of-range numbers above
    # each did before they were checked); its options come first, so that the case's own --device wins.
    tiny = ["--env.num-envs", "1", "--total-steps", "8", "--iteration-steps", "8", "--no-progress", "--device", "cpu",
            "--no-tensorboard"]
    try:
        code = main([*tiny, *argv, "--runs-dir", str(tmp_path)])
    except SystemExit as e:  # tyro's parse errors (the __post_init__ checks)
        code = e.code
    captured = capsys.readouterr()
    text = " ".join((captured.err + captured.out).replace("│", " ").split())  # tyro's box, unwrapped
    assert code == 2 and message in text and "Traceback" not in text


@pytest.mark.parametrize("argv,message", [
    (["--preset", "dqn_impala_w3_gmp95", "--redo.tau", "0.3"], "redo.tau = 0.3 (read with redo.enabled on)"),
    (["--reset.layers", "both"], "reset.layers = 'both' (read with reset.enabled on)"),
    (["--preset", "dqn_impala_w1_gmp95", "--rigl.update-freq", "1000"],
     "rigl.update_freq = 1000 (read with pruning.method rigl)"),
    (["--preset", "dqn_impala_w1_rigl95", "--pruning.update-freq", "500"],
     "pruning.update_freq = 500 (GMP's schedule, not RigL's)"),
    (["--preset", "demo", "--pruning.method", "rigl", "--pruning.update-freq", "60"],  # 50 is the demo's own
     "pruning.update_freq = 60 (GMP's schedule, not RigL's)"),
    (["--preset", "dqn_impala_w1_gmp95", "--pruning.fixed-mask", "runs/x", "--pruning.end-fraction", "0.5"],
     "pruning.end_fraction = 0.5 (a lottery ticket's masks are fixed from the first step)"),
    (["--preset", "dqn_impala_w1_gmp95", "--pruning.scope", "global", "--pruning.distribution", "uniform"],
     "pruning.distribution = 'uniform' (one global top-k has no per-layer targets)"),
    (["--network.padding", "valid"], "network.padding = 'valid' (read by the Nature CNN only)"),
    (["--eval-episodes", "100"], "eval_episodes = 100 (read with evaluate on)"),
    (["--preset", "der_100k_gmp95", "--eval-steps", "5000"], "eval_steps = 5000 (eval_episodes replaces it)"),
    (["--preset", "cql_impala_w1_gmp95", "--agent.replay", "prioritized"],
     "agent.replay = 'prioritized' (an offline run samples its dataset uniformly and does not explore)"),
    (["--preset", "cql_c51_impala_w1_gmp95", "--replay-capacity", "1000"], "replay_capacity = 1000 (an offline"),
])
def test_options_of_a_method_the_run_does_not_use_are_refused(argv, message):
    # Each would be a silent no-op: a run that does not do what its config says.
    with pytest.raises(UsageError) as exc:
        parse_args(argv)
    assert message in str(exc.value)


def test_options_of_the_method_a_run_uses_are_accepted():
    for argv in (["--preset", "dqn_impala_w3_redo", "--redo.tau", "0.3"],
                 ["--preset", "dqn_impala_w3_reset", "--reset.layers", "both", "--reset.period", "20000"],
                 ["--preset", "dqn_impala_w1_rigl95", "--rigl.update-freq", "1000"],
                 ["--preset", "dqn_impala_w3_dense", "--pruning.start-step", "500000"],  # a sweep's common option
                 ["--preset", "dqn_nature_w1_gmp95", "--network.padding", "valid"],
                 ["--evaluate", "--eval-steps", "5000"], ["--preset", "der_100k_gmp95", "--eval-episodes", "10"],
                 # a preset's own values are not the user's options: the demo sets GMP's update_freq to 50
                 ["--preset", "demo", "--pruning.method", "rigl"],
                 ["--preset", "demo", "--pruning.fixed-mask", "runs/x"]):
        parse_args(argv)


def test_resume_without_checkpoint_or_with_a_corrupt_one(tmp_path, capsys):
    code, err = _error_of(capsys, ["--resume", str(tmp_path / "missing")])
    assert code == 2 and "missing: no such directory" in err
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    from agents.config import get_preset

    (run / "config.json").write_text(json.dumps({"config": get_preset("demo").to_dict()}))
    code, err = _error_of(capsys, ["--resume", str(run)])
    assert code == 2 and "no checkpoint" in err
    (run / "checkpoints" / "ckpt_000000001000.pt").write_bytes(b"not a checkpoint at all")
    code, err = _error_of(capsys, ["--resume", str(run)])
    assert code == 2 and "corrupt" in err
    torch.save({"format": "something-else"}, run / "checkpoints" / "ckpt_000000002000.pt")
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(run / "checkpoints" / "ckpt_000000002000.pt")


@pytest.mark.parametrize("section,field,value", [(None, "log_every", "500"), ("env", "game", 5),
                                                 (None, "seed", True), ("pruning", "start_step", "0")])
def test_a_wrongly_typed_field_of_config_json_is_named(tmp_path, capsys, section, field, value):
    # Valid JSON, wrong type inside: '500' for log_every failed mid-run with a traceback, a number for the game
    # failed at the start with one (AttributeError: 'int' object has no attribute 'strip').
    from agents.config import get_preset

    config = get_preset("demo").to_dict()
    (config[section] if section else config)[field] = value
    (tmp_path / "config.json").write_text(json.dumps({"config": config}))
    code, err = _error_of(capsys, ["--resume", str(tmp_path)])
    name = f"{section}.{field}" if section else field
    assert code == 2 and f"{name} is {value!r}" in err and "Traceback" not in err


def test_incompatible_checkpoint_is_rejected(tmp_path):
    from agents.checkpoint import check_compatible
    from agents.config import get_preset

    a, b = get_preset("dqn_impala_w3_gmp95").to_dict(), get_preset("dqn_impala_w1_gmp95").to_dict()
    with pytest.raises(CheckpointError, match="network.width"):
        check_compatible(a, b)


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=NO_GPU), pytest.param("cuda:0", marks=NO_GPU),
                                    pytest.param("mps", marks=pytest.mark.skipif(
                                        torch.backends.mps.is_available(), reason="this machine has MPS"))])
def test_a_device_this_machine_lacks_is_a_clear_error(tmp_path, capsys, device):
    code, err = _error_of(capsys, ["--device", device, "--runs-dir", str(tmp_path)])
    assert code == 2 and f"--device {device}: " in err and "use --device cpu or auto" in err
    assert not list(tmp_path.iterdir()), "nothing may be written for a run that cannot start"


def test_help_lists_resume_and_list_presets_and_says_preset_selects_the_configuration(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert "--resume" in out and "--list-presets" in out
    assert "--preset NAME selects the configuration" in out and "Selects the configuration" in out


@pytest.mark.parametrize("argv", [["--no-such-option", "1"], ["--total-steps", "many"], ["--preset", "nope"],
                                  ["--resume", "no/such/run"], ["--agent.gamma", "2"]])
def test_every_usage_error_exits_with_code_2(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main([*argv, "--runs-dir", str(tmp_path)]))
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out


TINY = ["--preset", "demo", "--env.num-envs", "2", "--total-steps", "64", "--iteration-steps", "32",
        "--agent.min-replay", "10000", "--replay-capacity", "1000", "--no-progress", "--device", "cpu"]


def test_a_read_only_runs_dir_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import errno
    import pathlib

    read_only = tmp_path / "ro"
    mkdir = pathlib.Path.mkdir

    def refuse(self, *args, **kwargs):  # what a read-only mount answers (root ignores chmod, so simulate it)
        if str(self).startswith(str(read_only)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", refuse)
    code, err = _error_of(capsys, [*TINY, "--runs-dir", str(read_only), "--run-name", "r"])
    assert code == 2 and f"cannot write the run directory {read_only / 'r'}" in err
    assert "Read-only file system" in err and f"--runs-dir {read_only}" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_runs_dir_without_write_permission_is_a_clear_error(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    code, err = _error_of(capsys, [*TINY, "--runs-dir", str(locked), "--run-name", "r"])
    assert code == 2 and "cannot write the run directory" in err and "Permission denied" in err


def test_a_full_disk_during_a_checkpoint_is_a_message_not_a_traceback(tmp_path, capsys, monkeypatch):
    import errno

    import agents.checkpoint

    save, written = torch.save, []

    def disk_full_on_second_checkpoint(obj, f, *args, **kwargs):
        name = Path(getattr(f, "name", "")).name
        if name.startswith(".ckpt_"):
            written.append(name)
            if len(written) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(agents.checkpoint.torch, "save", disk_full_on_second_checkpoint)
    code, err = _error_of(capsys, [*TINY, "--runs-dir", str(tmp_path), "--run-name", "r"])
    ckpt_dir = tmp_path / "r" / "checkpoints"
    (first,) = list(ckpt_dir.glob("ckpt_*.pt"))
    assert code == 1 and "ENOSPC" in err and str(ckpt_dir) in err and f"previous checkpoint {first} is kept" in err
    assert "Traceback" not in err
    monkeypatch.undo()
    assert load_checkpoint(first)["iteration"] == 1


def test_our_warnings_print_as_messages_on_the_command_line():
    """A corrupt checkpoint's fallback printed Python's `file:line: UserWarning:` and the `warnings.warn(` source
    line under it; the command line prints our warnings as `warning: ...`, and a library's as Python does."""
    import warnings

    import agents.checkpoint
    from agents.train import _warnings_as_messages

    python_format = warnings.formatwarning
    with _warnings_as_messages():
        ours = warnings.formatwarning("ckpt_2.pt is corrupt", UserWarning, agents.checkpoint.__file__, 235)
        library = warnings.formatwarning("deprecated", FutureWarning, torch.__file__, 7)
    assert ours == "warning: ckpt_2.pt is corrupt\n"
    assert "__init__.py:7: FutureWarning: deprecated" in library
    assert warnings.formatwarning is python_format


def test_help_keeps_a_multi_line_field_docstring_in_one_paragraph(capsys, monkeypatch):
    """tyro alone breaks a field's help at every source line of its docstring (mid-sentence); the command line
    gives each field its docstring with the lines joined."""
    monkeypatch.setenv("COLUMNS", "120")  # one column of options (tyro puts groups side by side from ~140)
    with pytest.raises(SystemExit):
        main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    first = next(i for i, line in enumerate(lines) if "Where the replay lives" in line)
    # The docstring's first source line ends at "captured in": wrapped, the rendered line goes on past it.
    assert "can be captured in the" in lines[first], lines[first:first + 2]

    def helps(config, prefix=""):  # every option's help; a nested config's group takes its class docstring
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if dataclasses.is_dataclass(value):
                yield from helps(value, f"{prefix}{f.name}.")
            else:
                yield prefix + f.name, f.metadata.get("help")

    documented = dict(helps(TrainConfig()))  # (as the command line left them)
    assert all(documented.values()), [name for name, text in documented.items() if not text]
    assert not [name for name, text in documented.items() if "\n" in text or "  " in text]


def test_sigterm_stops_the_run_with_a_checkpoint_and_a_second_one_at_once(tmp_path, capsys, monkeypatch):
    """A job scheduler's preemption or a stopped sweep sends SIGTERM: the run stops at its next step with a
    checkpoint there (it used to die at once, with neither), exits 143, and the same command continues it."""
    args = [*TINY, "--runs-dir", str(tmp_path), "--run-name", "r"]
    act, calls = Trainer.act, []

    def act_then_signal(self, obs, epsilon, signals):
        calls.append(self.agent_steps)
        if len(calls) == 5:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGTERM)
        return act(self, obs, epsilon)

    monkeypatch.setattr(Trainer, "act", lambda self, obs, eps: act_then_signal(self, obs, eps, 1))
    assert main(args) == 143
    err = capsys.readouterr().err
    stopped_at = calls[-1] + 2  # the step it was asked in, then one more vector step of 2 envs
    assert f"stopping after SIGTERM at agent step {stopped_at}, with a checkpoint" in err
    assert checkpoint_step(latest_checkpoint(tmp_path / "r" / "checkpoints")) == stopped_at < 32  # mid-iteration
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["finished"] is False
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler does not outlive the run

    calls.clear()  # resumed, then two SIGTERMs: the second stops it at once, as Ctrl-C does
    monkeypatch.setattr(Trainer, "act", lambda self, obs, eps: act_then_signal(self, obs, eps, 2))
    assert main(args) == 143
    assert f"interrupted at agent step {calls[-1]}" in capsys.readouterr().err
    assert checkpoint_step(latest_checkpoint(tmp_path / "r" / "checkpoints")) < calls[-1]

    monkeypatch.setattr(Trainer, "act", act)
    assert main(args) == 0
    assert [int(r["iteration"]) for r in read_csv(tmp_path / "r" / "iterations.csv")] == [1, 2]


@pytest.mark.parametrize("name", ["", "  ", ".", "..", "a/b", "../escape"])
def test_a_run_name_that_is_not_one_directory_is_a_usage_error(tmp_path, name):
    """'' fell back to a new timestamped name (a requeued job with an unset $NAME started a new run each time
    instead of resuming it), '.' made --runs-dir itself the run directory, a path left --runs-dir."""
    with pytest.raises(UsageError, match="--run-name must name one directory inside --runs-dir"):
        parse_args([*TINY, "--runs-dir", str(tmp_path), "--run-name", name])
    cfg, _ = parse_args([*TINY, "--runs-dir", str(tmp_path), "--run-name", "r.1_x-y"])
    assert cfg.run_name == "r.1_x-y"
