"""agents.sweep: grid expansion, run IDs, run states, resources, retries (fast), and a real local sweep that is
killed at a random moment and restarted (slow)."""

import csv
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents import evaluation
from agents.config import flatten_config
from agents.envs import resolve_game
from agents.sweep import format_frames, main, plan_resources, summary_line
from agents.sweep_exec import (
    Launcher,
    RunStatus,
    child_env,
    execute_run,
    inspect_run,
    lock_is_held,
    run_lock,
    state_path,
    train_command,
    write_json,
)
from agents.sweep_grid import (
    GAME_SETS,
    SpecError,
    build_sweep,
    expand_braces,
    load_spec,
    parse_overrides,
    parse_seeds,
    resolve_config,
)

ROOT = Path(__file__).resolve().parents[1]
# A few seconds of training per run: the demo preset shrunk hard, pruned to 95% by gradient step 40 of 50, three
# iterations (a checkpoint after each, holding the replay, so a resumed run keeps its schedule).
TINY = ("--env.num-envs 4 --total-steps 600 --iteration-steps 200 --agent.min-replay 200 --replay-ratio 0.125 "
        "--agent.batch-size 8 --agent.target-update-period 200 --pruning.start-step 0 --pruning.end-step 40 "
        "--pruning.update-freq 10 --replay-capacity 2000 --log-every 100 --device cpu --no-tensorboard")


def tiny_spec(path: Path, name: str, games=("Pong",), seeds="1..2") -> Path:
    path.write_text(f'name = "{name}"\npresets = ["demo"]\ngames = {json.dumps(list(games))}\nseeds = "{seeds}"\n'
                    f'overrides = ["{TINY}"]\n')
    return path


def sweep_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


# --- the grid ----------------------------------------------------------------------------------------------------
def test_brace_patterns_expand_like_bash():
    assert expand_braces("dqn_impala_w{1..3}_{dense,gmp95}") == [
        "dqn_impala_w1_dense", "dqn_impala_w1_gmp95", "dqn_impala_w2_dense", "dqn_impala_w2_gmp95",
        "dqn_impala_w3_dense", "dqn_impala_w3_gmp95"]
    assert expand_braces("a{3..1}") == ["a3", "a2", "a1"]
    assert expand_braces("plain") == ["plain"]
    for bad in ("a{1..2", "a{x}", "a}"):
        with pytest.raises(SpecError):
            expand_braces(bad)


def test_fig1_spec_expands_to_the_papers_grid():
    sweep = load_spec(ROOT / "examples" / "sweeps" / "fig1.toml")
    assert sweep.name == "fig1" and len(sweep.runs) == 2 * 5 * 2 * 15 * 5
    ids = [r.run_id for r in sweep.runs]
    assert len(set(ids)) == len(ids)
    assert {r.game for r in sweep.runs} == set(evaluation.PAPER_15_GAMES)
    assert {r.seed for r in sweep.runs} == {1, 2, 3, 4, 5}
    assert {r.preset for r in sweep.runs} == {f"{a}_impala_w{w}_{s}" for a in ("dqn", "rainbow") for w in range(1, 6)
                                              for s in ("dense", "gmp95")}
    assert all(r.total_frames == 40_000_000 and r.run_id == f"{r.game}/{r.preset}/s{r.seed}" for r in sweep.runs)
    assert [r.run_id for r in load_spec(ROOT / "examples" / "sweeps" / "fig1.toml").runs] == ids  # deterministic
    record = sweep.to_json()
    assert record["name"] == "fig1" and record["runs"][0] == {
        "run_id": ids[0], "run_dir": ids[0], "preset": sweep.runs[0].preset, "game": sweep.runs[0].game,
        "seed": sweep.runs[0].seed, "overrides": []}



@pytest.mark.parametrize("spec, field, values", [
    ("fig5", "replay_ratio", {0.25, 0.5, 1.0, 2.0}),
    ("fig15", "pruning.final_sparsity", {0.0, 0.5, 0.95, 0.98, 0.99}),
])
def test_the_example_sweeps_of_fig5_and_fig15_cover_their_axis(spec, field, values):
    """The specs behind iqm_vs_replay_ratio.png and iqm_vs_sparsity.png: every value of the swept option for every
    preset, game and seed."""
    sweep = load_spec(ROOT / "examples" / "sweeps" / f"{spec}.toml")
    value = {}  # (preset, overrides) -> the swept field's value in the config agents.train builds
    for r in sweep.runs:
        key = (r.preset, tuple(r.overrides))
        if key not in value:
            value[key] = flatten_config(resolve_config(*key).to_dict())[field]
    seen = {}
    for r in sweep.runs:
        seen.setdefault((r.preset, r.game, r.seed), set()).add(value[(r.preset, tuple(r.overrides))])
    assert all(v == values for v in seen.values()) and len(sweep.runs) == len(seen) * len(values)
    assert len({r.run_id for r in sweep.runs}) == len(sweep.runs)
    assert {g for _, g, _ in seen} == set(evaluation.PAPER_15_GAMES) and {s for *_, s in seen} == {1, 2, 3, 4, 5}

def test_game_sets_are_valid_games():
    assert len(GAME_SETS["paper15"]) == 15 and len(GAME_SETS["atari57"]) == 57 and len(GAME_SETS["atari100k26"]) == 26
    for games in GAME_SETS.values():
        assert len(set(games)) == len(games)
        assert all(resolve_game(g) == g for g in games)
    assert set(GAME_SETS["atari100k26"]) <= set(GAME_SETS["atari57"])
    sweep = build_sweep({"name": "s", "presets": "demo", "games": ["pong", "paper15", "atari100k26"], "seeds": 1}, "t")
    games = [r.game for r in sweep.runs]
    assert games[0] == "Pong" and len(games) == len(set(games)) == len(set(GAME_SETS["paper15"]) |
                                                                        set(GAME_SETS["atari100k26"]))


def test_seeds():
    assert parse_seeds("1..5") == [1, 2, 3, 4, 5]
    assert parse_seeds("0..2,10") == [0, 1, 2, 10]
    assert parse_seeds([3, 1]) == [3, 1] and parse_seeds(7) == [7] and parse_seeds(["1..2", "5"]) == [1, 2, 5]
    for bad in ("5..1", "1,x", [1, 1], 1.5, "1..3,2"):
        with pytest.raises(SpecError):
            parse_seeds(bad)


def test_overrides_that_change_the_experiment_get_their_own_directory():
    def run_id(*variant):
        return build_sweep({"name": "s", "presets": "demo", "games": "Pong", "seeds": 1, "variants": [list(variant)]},
                           "t").runs[0]

    plain = run_id()
    assert plain.run_id == "Pong/demo/s1" and plain.overrides == ()
    ratio = run_id("--replay-ratio 1")
    assert ratio.run_id.startswith("Pong/demo/s1-") and len(ratio.run_id) == len("Pong/demo/s1-") + 8
    assert run_id("--replay-ratio=1").run_id == ratio.run_id  # the same experiment, spelled differently
    assert run_id("--replay-ratio 0.5").run_id not in (ratio.run_id, plain.run_id)
    # Options that never change what a run learns keep its directory (agents.config.RUNTIME_FIELDS).
    runtime = run_id("--device cpu --max-minutes 30 --no-tensorboard --env.num-threads 2")
    assert runtime.run_id == plain.run_id and "--max-minutes" in runtime.overrides
    # An override that sets what the preset already has changes nothing either.
    assert run_id("--network.width 1").run_id == plain.run_id


def test_a_lottery_tickets_spellings_are_one_run(tmp_path, monkeypatch):
    """agents.train records --pruning.fixed-mask as an absolute path; the run ID hashed it as typed, so its
    spellings were separate directories of one experiment (and the report's duplicate runs)."""
    monkeypatch.chdir(tmp_path)
    ids = {build_sweep({"name": "s", "presets": "demo", "games": "Pong", "seeds": 1,
                        "overrides": [f"--pruning.fixed-mask {mask}"]}, "t").runs[0].run_id
           for mask in ("ticket", "./ticket/", str(tmp_path / "ticket"))}
    assert len(ids) == 1, ids


def test_bad_specs_are_clear_errors(tmp_path, capsys):
    good = {"name": "s", "presets": "demo", "games": "Pong", "seeds": 1}
    for spec, message in [
        ({**good, "gamez": "Pong"}, "unknown keys"),
        ({**good, "presets": "dqn_impala_w{1..7}_dense"}, "unknown preset 'dqn_impala_w6_dense'"),
        ({**good, "games": "Pongg"}, "Did you mean 'Pong'"),
        ({**good, "games": "paper16"}, "Game sets: paper15, atari57, atari100k26"),
        ({**good, "overrides": ["--seed 3"]}, "--seed is set by the sweep"),
        ({**good, "overrides": ["--env.game=Pong"]}, "--env.game is set by the sweep"),
        ({**good, "name": "../x"}, "name must be a simple directory name"),
        ({"name": "s", "presets": "demo", "seeds": 1}, "missing ['games']"),
        ({"name": "s"}, "has no runs"),
        ({**good, "variants": [[], ["--device cpu"]]}, "appears twice"),
        ({"name": "s", "runs": [{"preset": "demo", "game": "Pong"}]}, "runs[0] must have preset, game, seed"),
        # Tracebacks before: a number for a game or preset, an unbalanced quote in the overrides.
        ({"name": "s", "runs": [{"preset": "demo", "game": 5, "seed": 1}]}, "runs[0].game must be a string, got 5"),
        ({"name": "s", "runs": [{"preset": 7, "game": "Pong", "seed": 1}]}, "runs[0].preset must be a string"),
        ({**good, "overrides": ["--agent.lr '1e-3"]}, "overrides: cannot split"),
        # Every run of these failed at its start (agents.train's --seed).
        ({**good, "seeds": "-2..0"}, "seeds must be in [0, 2**30) (agents.train's --seed), got -2, -1"),
        ({**good, "seeds": [2**31]}, "seeds must be in [0, 2**30)"),
        # A range past the bound was expanded before the check: a billion seeds filled memory, no message.
        ({**good, "seeds": "1..2000000000"}, "seeds must be in [0, 2**30) (agents.train's --seed), got 1073741824"),
        ({**good, "seeds": "-3000000000..0"}, "seeds must be in [0, 2**30) (agents.train's --seed), got -3000000000"),
        # Ranges in bounds were expanded whole before anything failed: minutes and gigabytes, or a hang.
        ({**good, "seeds": "0..100000000"}, "seed range '0..100000000' gives 100,000,001 values; a sweep holds at "
                                            "most 100,000 runs"),
        ({**good, "presets": "x{1..100000000}"}, "{1..100000000} in 'x{1..100000000}' gives 100,000,000 values"),
        ({**good, "games": "atari57", "seeds": "0..1999"}, "is over 100,000 runs, the most a sweep holds"),
    ]:
        with pytest.raises(SpecError) as e:
            build_sweep(spec, "spec.toml")
        assert message in str(e.value), (spec, str(e.value))
    for overrides, message in (("--no-such-option 3", "Unrecognized options"),
                               ("--network.width 0", "width must be an integer >= 1")):
        with pytest.raises(SpecError, match=f"agents.train rejects the overrides '{overrides}' for preset demo"):
            build_sweep({**good, "overrides": [overrides]}, "t")
        assert message in capsys.readouterr().err  # tyro's own message
    (tmp_path / "bad.toml").write_text("name = [")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(tmp_path / "bad.toml")
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe name")  # not UTF-8: a UnicodeDecodeError traceback before
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(tmp_path / "binary.toml")
    assert parse_overrides(["--a 1", "--b=2 --c"]) == ("--a", "1", "--b=2", "--c")


def test_explicit_runs_and_products_combine():
    sweep = build_sweep({"name": "s", "presets": ["demo"], "games": ["Pong"], "seeds": "1..2",
                         "runs": [{"preset": "dqn_impala_w1_gmp95", "game": "breakout", "seed": 7,
                                   "overrides": ["--replay-ratio 1"]}]}, "t")
    assert [r.run_id for r in sweep.runs][:2] == ["Pong/demo/s1", "Pong/demo/s2"]
    extra = sweep.runs[2]
    assert extra.game == "Breakout" and extra.seed == 7 and extra.run_id.startswith("Breakout/dqn_impala_w1_gmp95/s7-")


def test_command_line_axes_and_dry_run(tmp_path, capsys):
    code = main(["--name", "q", "--presets", "demo", "--games", "Pong", "Breakout", "--seeds", "1..2",
                 "--sweeps-dir", str(tmp_path), "--dry-run", "--", "--total-steps", "3000"])
    out = capsys.readouterr().out
    assert code == 0 and "4 runs" in out and out.count("pending") == 5  # four rows and the summary line
    assert "Breakout/demo/s2-" in out and "12.00k" in out  # 3000 agent steps = 12k frames
    assert not (tmp_path / "q").exists(), "a dry run wrote something"
    assert main(["--name", "q", "--presets", "demo", "--games", "Pong", "--seeds", "1", "--count"]) == 0
    assert capsys.readouterr().out.strip() == "1"
    for flag in (["--index", "0"], ["--dry-run"]):  # were ignored: --count printed the size either way
        with pytest.raises(SystemExit) as e:
            main(["--name", "q", "--presets", "demo", "--games", "Pong", "--seeds", "1", "--count", *flag])
        assert e.value.code == 2 and f"{flag[0]} does nothing with it" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([str(ROOT / "examples" / "sweeps" / "fig1.toml"), "--presets", "demo"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["--name", "q", "--presets", "demo", "--games", "Pong", "--seeds", "1", "--", "--seed", "4"])
    assert e.value.code == 2 and "--seed is set by the sweep" in capsys.readouterr().err
    assert main([str(ROOT / "examples" / "sweeps" / "fig1.toml"), "--index", "1500"]) == 2


def test_a_sweep_directory_stands_for_the_sweep_it_lists(tmp_path, capsys):
    """A sweep started with the axes has no spec file: its directory (sweep.json) is what status and a rerun take
    (status could not read it: 'the spec has no runs', 'no spec file', 'not valid TOML')."""
    axes = ["--name", "q", "--presets", "demo", "--games", "Pong", "Breakout", "--seeds", "1..2"]
    sweep = build_sweep({"name": "q", "presets": ["demo"], "games": ["Pong", "Breakout"], "seeds": "1..2",
                         "overrides": ["--total-steps 3000"]}, "command line")
    write_json(tmp_path / "q" / "sweep.json", sweep.to_json())  # as the sweep writes it before its first launch
    assert main(["status", str(tmp_path / "q")]) == 3  # (unfinished)
    out = capsys.readouterr().out
    assert f"sweep q in {tmp_path / 'q'}" in out and "0 done" in out and "of 4" in out and "12.00k" in out
    assert main([str(tmp_path / "q"), "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert main([*axes, "--sweeps-dir", str(tmp_path), "--dry-run", "--", "--total-steps", "3000"]) == 0
    assert capsys.readouterr().out.replace("command line", str(tmp_path / "q" / "sweep.json")) == dry
    for listing, message in (("{", "is not a sweep listing"), ('{"name": "q"}', "is not a sweep listing")):
        (tmp_path / "q" / "sweep.json").write_text(listing)
        with pytest.raises(SystemExit) as e:
            main(["status", str(tmp_path / "q")])
        assert e.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["status", str(tmp_path)])
    assert e.value.code == 2 and "has no sweep.json (is it a sweep directory?)" in capsys.readouterr().err


# --- resources --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("option,value", [("--max-minutes", "-1"), ("--max-minutes", "nan"), ("--log-interval", "0")])
def test_a_bad_runtime_option_is_a_usage_error_before_any_launch(tmp_path, capsys, option, value):
    # --max-minutes -1 went to every launch, each failed as a usage error, and the sweep ended with all its runs
    # failed (relaunched only with --retry-failed); --log-interval 0 printed a summary at every tick.
    with pytest.raises(SystemExit) as e:
        main(["--name", "q", "--presets", "demo", "--games", "Pong", "--seeds", "1", "--sweeps-dir", str(tmp_path),
              option, value, "--", "--total-steps", "8", "--iteration-steps", "8", "--device", "cpu"])
    assert e.value.code == 2 and f"{option} must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_resources_fill_gpus_and_share_cores(capsys):
    res = plan_resources(None, 3, None, gpus=["2", "5"], cores=24)
    assert res.parallel == 6 and res.cpus_per_run == 4 and res.gpus_per_run == pytest.approx(1 / 3)
    assert sorted(res.gpu_slots) == ["2", "2", "2", "5", "5", "5"]
    res = plan_resources(None, 1, 2, gpus=[], cores=8)
    assert res.parallel == 4 and res.cpus_per_run == 2 and res.gpus_per_run == 0 and res.gpu_slots == [None] * 4
    res = plan_resources(3, 1, None, gpus=[], cores=8)
    assert res.parallel == 3 and res.cpus_per_run == 2
    assert "oversubscribes" not in capsys.readouterr().err
    plan_resources(4, 1, 4, gpus=[], cores=8)
    assert "oversubscribes" in capsys.readouterr().err
    env = child_env(3, "5")
    assert env["OMP_NUM_THREADS"] == "3" and env["CUDA_VISIBLE_DEVICES"] == "5"
    assert str(ROOT) in env["PYTHONPATH"].split(os.pathsep)


def test_frame_formatting():
    assert format_frames(950) == "950" and format_frames(12_000) == "12.00k"
    assert format_frames(40e6) == "40.00M" and format_frames(60e9) == "60.00G"


# --- run states ----------------------------------------------------------------------------------------------------
def _one_run(tmp_path):
    sweep = build_sweep({"name": "s", "presets": "demo", "games": "Pong", "seeds": 1}, "t")
    return sweep, tmp_path / "s", sweep.runs[0]


def test_run_states_from_the_directory(tmp_path):
    sweep, sweep_dir, run = _one_run(tmp_path)
    directory = sweep_dir / run.run_id
    assert inspect_run(sweep_dir, run).state == "pending"
    (directory / "checkpoints").mkdir(parents=True)
    (directory / "checkpoints" / "ckpt_000000001500.pt").write_bytes(b"")
    (directory / "metrics.jsonl").write_text(
        json.dumps({"agent_steps": 1500, "frames": 6000, "charts/FPS": 120.0}) + "\n"
        + json.dumps({"agent_steps": 1504, "frames": 6016, "speed/host": 0.2}) + "\n"  # an iteration's loop split
        + '{"agent_steps": 16')  # a row being written
    st = inspect_run(sweep_dir, run)
    assert st.state == "partial" and st.frames == 6000 and st.fps is None
    with run_lock(state_path(sweep_dir, run, ".lock"), wait=False) as fd:
        assert fd is not None
        st = inspect_run(sweep_dir, run)
        assert st.state == "running" and st.fps == 120.0
        line = summary_line(sweep, [st])
        assert "1 running" in line and "6.00k / 24.00k (25%)" in line and "120 frames/s" in line
        assert "ETA 2m30s" in line  # 18,000 frames left at 120 frames/s
        assert execute_run(sweep_dir, run, runtime=[], env={}, retries=0, launches=1,
                           launcher=Launcher()) == "busy"
    write_json(state_path(sweep_dir, run, ".json"), {"launches": 2, "failures": 2, "last_exit": 1,
                                                     "last_error": "exit code 1:\nboom"})
    st = inspect_run(sweep_dir, run)
    assert st.state == "failed" and st.failures == 2 and "boom" in st.last_error
    (directory / "summary.json").write_text(json.dumps({"finished": True}))
    assert inspect_run(sweep_dir, run).state == "done"


def test_status_counts_frames_before_the_first_metrics_row(tmp_path):
    """Metrics rows come every log_every agent steps (10k): before the first, a stopped or running run showed 0
    frames however many iterations it had finished; iterations.csv says where it stands."""
    sweep, sweep_dir, run = _one_run(tmp_path)
    directory = sweep_dir / run.run_id
    (directory / "checkpoints").mkdir(parents=True)
    (directory / "checkpoints" / "ckpt_000000000569.pt").write_bytes(b"")
    (directory / "iterations.csv").write_text("iteration,agent_steps,frames,score\n1,300,1200,1.0\n2,569,2276,")
    st = inspect_run(sweep_dir, run)
    assert st.state == "partial" and st.frames == 2276
    with run_lock(state_path(sweep_dir, run, ".lock"), wait=False):
        line = summary_line(sweep, [inspect_run(sweep_dir, run)])
    assert "2.28k / 24.00k" in line and "ETA unknown (no speed logged yet)" in line
    (directory / "summary.json").write_text(json.dumps({"finished": True}))
    assert "ETA none (nothing left to run)" in summary_line(sweep, [inspect_run(sweep_dir, run)])


def test_eta_uses_the_speed_since_the_previous_row(tmp_path):
    """charts/FPS averages since the launch started, fast warm-up included: the sweep's ETA read it and said
    "ETA 0m01s" for runs with most of their learning ahead. charts/FPS_recent is the speed since the last row."""
    sweep, sweep_dir, run = _one_run(tmp_path)
    directory = sweep_dir / run.run_id
    directory.mkdir(parents=True)
    (directory / "metrics.jsonl").write_text(
        json.dumps({"agent_steps": 1500, "frames": 6000, "charts/FPS": 5000.0, "charts/FPS_recent": 100.0}) + "\n")
    with run_lock(state_path(sweep_dir, run, ".lock"), wait=False):
        st = inspect_run(sweep_dir, run)
    assert st.fps == 100.0 and "ETA 3m00s" in summary_line(sweep, [st])  # 18,000 frames left at 100 frames/s


def test_no_eta_from_the_replay_warm_up(tmp_path):
    """Rows logged before learning starts ran at the warm-up's speed: the ETA said 0m00s at paper scale."""
    sweep, sweep_dir, run = _one_run(tmp_path)
    directory = sweep_dir / run.run_id
    directory.mkdir(parents=True)
    row = {"agent_steps": 1500, "frames": 6000, "charts/FPS": 9000.0, "charts/FPS_recent": 9000.0}
    (directory / "metrics.jsonl").write_text(json.dumps({**row, "grad_steps": 0}) + "\n")
    with run_lock(state_path(sweep_dir, run, ".lock"), wait=False):
        st = inspect_run(sweep_dir, run)
        assert st.fps is None and "ETA unknown" in summary_line(sweep, [st])
        with (directory / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({**row, "agent_steps": 3000, "frames": 12000, "charts/FPS_recent": 100.0,
                                "grad_steps": 10}) + "\n")
        assert inspect_run(sweep_dir, run).fps == 100.0


def test_progress_follows_runs_that_other_processes_train(tmp_path, monkeypatch, capsys):
    """A run that an earlier sweep's orphaned training process was training when the sweep restarted kept its
    first state, frames and speed in the progress and in the final line ("1 running" after it had finished)."""
    from agents import sweep as sweep_module

    monkeypatch.setattr(sweep_module, "ELSEWHERE_REFRESH_S", 0.0)
    sweep, sweep_dir, run = _one_run(tmp_path)
    directory = sweep_dir / run.run_id
    directory.mkdir(parents=True)
    metrics = directory / "metrics.jsonl"
    row = {"charts/FPS": 900.0}  # (the trainer's rows have both speeds)
    metrics.write_text(json.dumps({"agent_steps": 1500, "frames": 6000, "charts/FPS_recent": 100.0, **row}) + "\n")
    with run_lock(state_path(sweep_dir, run, ".lock"), wait=False):  # the orphan
        progress = sweep_module.Progress(sweep, sweep_dir, [inspect_run(sweep_dir, run)], lines=1, interval=0.0)
        with metrics.open("a") as f:
            f.write(json.dumps({"agent_steps": 3000, "frames": 12000, "charts/FPS_recent": 150.0, **row}) + "\n")
        progress.tick()
        assert "12.00k / 24.00k" in capsys.readouterr().out
        assert progress.status[run.run_id].fps == 150.0
    (directory / "summary.json").write_text(json.dumps({"finished": True}))  # it finished after the restart
    progress.close()
    assert "1 done, 0 running" in capsys.readouterr().out


def test_a_status_probe_does_not_make_a_run_look_busy(tmp_path):
    # The progress display and `agents.sweep status` probe a run's lock by taking it for a moment; a sweep that
    # starts the run during a probe must still get the lock (it once reported the run "busy" and skipped it).
    import threading

    path = tmp_path / "run.lock"
    path.touch()
    probing, probes = True, 0

    def probe():
        nonlocal probes
        while probing:
            lock_is_held(path)  # takes the lock for a moment when it is free
            probes += 1

    thread = threading.Thread(target=probe)
    thread.start()
    acquired, deadline = 0, time.monotonic() + 60
    try:
        # Until both sides have had 200 turns: on a loaded machine the probe thread may get few GIL turns.
        while acquired < 200 or probes < 200:
            with run_lock(path, wait=False) as fd:
                assert fd is not None, "a momentary probe made the run look busy"
            acquired += 1
            time.sleep(0)  # let the probe run between acquisitions
            assert time.monotonic() < deadline, f"the probe ran only {probes} times in 60 s"
    finally:
        probing = False
        thread.join()


def test_every_launch_is_the_same_train_command(tmp_path):
    _, sweep_dir, run = _one_run(tmp_path)
    assert train_command(sweep_dir, run, ["--no-progress"])[1:] == [
        "-m", "agents.train", "--preset", "demo", "--env.game", "Pong", "--seed", "1", "--runs-dir",
        str(sweep_dir / "Pong" / "demo"), "--run-name", "s1", "--no-progress"]
    ratio = build_sweep({"name": "s", "presets": "demo", "games": "Pong", "seeds": 1,
                         "overrides": ["--replay-ratio=1 --device cpu"]}, "t").runs[0]
    assert train_command(sweep_dir, ratio, [])[-5:] == ["--run-name", ratio.run_id.split("/")[-1],
                                                        "--replay-ratio=1", "--device", "cpu"]


def test_failed_runs_are_retried_and_keep_their_last_error(tmp_path, capsys, monkeypatch):
    import agents.sweep_exec

    failing = [sys.executable, "-c", "import sys; print('boom: the learner diverged'); sys.exit(1)"]
    monkeypatch.setattr(agents.sweep_exec, "train_command", lambda *a: failing)
    axes = ["--name", "f", "--presets", "demo", "--games", "Pong", "--seeds", "1", "--sweeps-dir", str(tmp_path)]
    state_file = tmp_path / "f" / "_sweep" / "Pong__demo__s1.json"
    assert main([*axes, "--retries", "2"]) == 1
    err = capsys.readouterr().err
    assert "failed: Pong/demo/s1 after 3 launches" in err and "boom" in err
    state = json.loads(state_file.read_text())
    assert state["launches"] == 3 and state["failures"] == 3 and state["last_exit"] == 1
    assert state["last_error"] == "exit code 1:\nboom: the learner diverged" and state["command"] == failing
    assert (tmp_path / "f" / "_sweep" / "Pong__demo__s1.log").read_text().count("=== launch") == 3
    assert main([*axes, "--retries", "2"]) == 1  # retries used up, counted across invocations: no launch
    assert json.loads(state_file.read_text())["launches"] == 3
    assert main([*axes, "--retries", "3"]) == 1  # one more allowed: one more launch
    assert json.loads(state_file.read_text())["launches"] == 4
    capsys.readouterr()
    assert main(["status", *axes]) == 1
    out = capsys.readouterr().out
    assert "Pong/demo/s1  failed" in out and "boom" in out and "1 failed" in out
    assert main([*axes, "--retries", "0", "--retry-failed"]) == 1
    assert json.loads(state_file.read_text())["launches"] == 5


def test_an_array_task_launches_its_run_once(tmp_path, monkeypatch):
    """--index (a Slurm array task) retried a failed launch in the same job with a fresh --max-minutes, past the
    job's time limit, where Slurm kills the task without a requeue. One launch per task; a failure with retries
    left exits 3, so the task requeues itself and the next job retries the run."""
    import agents.sweep_exec

    failing = [sys.executable, "-c", "import sys; sys.exit(1)"]
    monkeypatch.setattr(agents.sweep_exec, "train_command", lambda *a: failing)
    task = ["--name", "a", "--presets", "demo", "--games", "Pong", "--seeds", "1", "--sweeps-dir", str(tmp_path),
            "--index", "0", "--retries", "2", "--max-minutes", "60"]
    state_file = tmp_path / "a" / "_sweep" / "Pong__demo__s1.json"
    for launches, code in ((1, 3), (2, 3), (3, 1), (3, 1)):  # two retries, then failed for good
        assert main(task) == code
        assert json.loads(state_file.read_text())["launches"] == launches


def _stop_once_launched(launcher: Launcher, marker: Path) -> None:
    """Stop the sweep (as on Ctrl-C) once the launched command has written `marker`."""
    import threading

    def stop():
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        launcher.stop()

    threading.Thread(target=stop, daemon=True).start()


def test_a_run_that_finished_as_the_sweep_stopped_is_done(tmp_path, monkeypatch):
    """A run killed by the sweep's shutdown after writing its final summary (on its way out) was reported
    "[interrupted]" although it had finished."""
    import agents.sweep_exec

    _, sweep_dir, run = _one_run(tmp_path)
    summary, marker = sweep_dir / run.run_id / "summary.json", tmp_path / "launched"
    finishing = [sys.executable, "-c", f"import json, pathlib, time; pathlib.Path({str(summary)!r}).write_text("
                 f"json.dumps({{'finished': True}})); pathlib.Path({str(marker)!r}).touch(); time.sleep(60)"]
    monkeypatch.setattr(agents.sweep_exec, "train_command", lambda *a: finishing)
    summary.parent.mkdir(parents=True)
    launcher = Launcher()
    _stop_once_launched(launcher, marker)
    assert execute_run(sweep_dir, run, runtime=[], env={}, retries=0, launches=1, launcher=launcher) == "done"


def test_a_stopped_or_killed_launch_after_a_failure_does_not_make_the_run_failed(tmp_path, monkeypatch):
    """A run that failed once and was relaunched kept that failure's exit code while the relaunch trained: the
    sweep stopped (Ctrl-C) or killed (SIGKILL, a lost node) then showed it "failed", with the old error, exit 1."""
    import agents.sweep_exec

    sweep, sweep_dir, run = _one_run(tmp_path)
    state_file, marker = state_path(sweep_dir, run, ".json"), tmp_path / "state during the launch"
    write_json(state_file, {"launches": 1, "failures": 1, "last_exit": 1, "last_error": "exit code 1:\nboom"})
    training = [sys.executable, "-c", f"import shutil, time; shutil.copy({str(state_file)!r}, {str(marker)!r}); "
                "time.sleep(60)"]
    monkeypatch.setattr(agents.sweep_exec, "train_command", lambda *a: training)
    launcher = Launcher()
    _stop_once_launched(launcher, marker)
    assert execute_run(sweep_dir, run, runtime=[], env={}, retries=2, launches=1, launcher=launcher) == "interrupted"
    assert json.loads(marker.read_text())["last_exit"] is None  # what a sweep killed mid-launch leaves
    st = inspect_run(sweep_dir, run)
    assert st.state == "pending" and st.launches == 2 and st.failures == 1
    assert "0 failed, 1 pending" in summary_line(sweep, [st])


@pytest.mark.slow
def test_a_directory_with_another_experiment_fails_without_retries(tmp_path, capsys):
    # The run's directory holds a run of another experiment: agents.train refuses it (exit 2), naming the field.
    axes = ["--name", "x", "--presets", "demo", "--games", "Pong", "--seeds", "1", "--sweeps-dir", str(tmp_path)]
    from agents.config import get_preset

    config = get_preset("demo").to_dict()
    config["env"]["game"], config["seed"], config["network"]["width"] = "Pong", 1, 3
    saved = json.dumps({"config": config})
    (tmp_path / "x" / "Pong" / "demo" / "s1").mkdir(parents=True)
    (tmp_path / "x" / "Pong" / "demo" / "s1" / "config.json").write_text(saved)
    assert main([*axes, "--retries", "3"]) == 1
    state = json.loads((tmp_path / "x" / "_sweep" / "Pong__demo__s1.json").read_text())
    assert state["launches"] == 1 and state["last_exit"] == 2 and "--network.width" in state["last_error"]
    assert (tmp_path / "x" / "Pong" / "demo" / "s1" / "config.json").read_text() == saved


@pytest.mark.slow
def test_a_run_trained_outside_the_sweep_is_running_then_busy_never_failed(tmp_path, capsys):
    """A run agents.train trains by hand holds RUN_DIR/.lock: the sweep shows it running and leaves it alone. One
    that starts between the sweep's look and its launch makes agents.train exit 75: busy, with no failure
    counted and the run's last exit kept (as exit 2 it was refused for good; as a last exit, an earlier
    recovered failure turned it "failed")."""
    axes = ["--name", "b", "--presets", "demo", "--games", "Pong", "--seeds", "1", "--sweeps-dir", str(tmp_path)]
    sweep = build_sweep({"name": "b", "presets": "demo", "games": "Pong", "seeds": 1}, "t")
    run, sweep_dir = sweep.runs[0], tmp_path / "b"
    with run_lock(sweep_dir / "Pong" / "demo" / "s1" / ".lock", wait=False) as fd:  # trained by hand
        assert fd is not None and inspect_run(sweep_dir, run).state == "running"
        assert main([*axes, "--retries", "0"]) == 3  # unfinished, not failed; nothing launched
        assert "1 run(s) of this sweep are being trained by other processes" in capsys.readouterr().out
        assert not state_path(sweep_dir, run, ".json").exists()
        write_json(state_path(sweep_dir, run, ".json"), {"launches": 2, "failures": 1, "last_exit": 0})
        outcome = execute_run(sweep_dir, run, runtime=["--no-progress"], env=sweep_env(), retries=0, launches=1,
                              launcher=Launcher())
    state = json.loads(state_path(sweep_dir, run, ".json").read_text())
    assert outcome == "busy" and state["launches"] == 3 and state["failures"] == 1 and state["last_exit"] == 0
    assert "being trained by another process" in state["busy"]
    assert inspect_run(sweep_dir, run).state == "pending"


# --- a real sweep, killed and restarted ------------------------------------------------------------------------------
def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def digest(directory: Path) -> dict:
    """Every file of a directory: its bytes' hash and modification time."""
    return {str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def latest_checkpoint_step(directory: Path) -> int:
    steps = [int(p.stem.split("_")[1]) for p in (directory / "checkpoints").glob("ckpt_*.pt")]
    return max(steps, default=0)


def check_consistent_runs(sweep_dir: Path, runs: list[str]) -> None:
    """Every run finished, with one row per iteration, the gradient-step schedule of its config (replay ratio
    0.125 from agent step 200 on), no duplicate log rows, and its target sparsity. Agent steps pass an iteration's
    end by less than one step of the 4 envs (an env that resets adds no transition)."""
    for run_id in runs:
        d = sweep_dir / run_id
        summary = json.loads((d / "summary.json").read_text())
        assert summary["finished"] and 600 <= summary["agent_steps"] < 604, (run_id, summary)
        assert summary["total_sparsity"] == pytest.approx(0.95, abs=2e-3), run_id
        rows = read_csv(d / "iterations.csv")
        assert [int(r["iteration"]) for r in rows] == [1, 2, 3], run_id
        for i, r in enumerate(rows, 1):
            steps, grad_steps = int(r["agent_steps"]), int(r["grad_steps"])
            assert 200 * i <= steps < 200 * i + 4, (run_id, r)
            assert abs(grad_steps - 0.125 * max(steps - 200, 0)) <= 1.5, (run_id, r)
        assert summary["grad_steps"] == int(rows[-1]["grad_steps"])
        # No row twice (a training row and an iteration's loop-split row may share a step; a row repeated by a
        # resume would repeat its step and its keys).
        metric_rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        steps = [r["agent_steps"] for r in metric_rows]
        kinds = [(r["agent_steps"], tuple(sorted(r))) for r in metric_rows]
        assert steps == sorted(steps) and len(kinds) == len(set(kinds)) and steps[-1] >= 600, (run_id, steps)
        episodes = [tuple(r.values()) for r in read_csv(d / "episodes.csv")]
        assert len(episodes) == len(set(episodes)), run_id
        assert [int(e[0]) for e in episodes] == sorted(int(e[0]) for e in episodes), run_id
        config = json.loads((d / "config.json").read_text())["config"]
        assert config["pruning"]["final_sparsity"] == 0.95 and config["total_steps"] == 600


@pytest.mark.slow
def test_killed_sweep_restarts_and_completes_every_run(tmp_path):
    spec = tiny_spec(tmp_path / "tiny.toml", "tiny", games=("Pong", "Breakout"))
    sweep_dir = tmp_path / "sweeps" / "tiny"
    cmd = [sys.executable, "-m", "agents.sweep", str(spec), "--sweeps-dir", str(tmp_path / "sweeps"), "--parallel",
           "2", "--log-interval", "2"]
    run_ids = [r.run_id for r in load_spec(spec).runs]
    # The whole process group (the sweep and its training processes) dies at once, as on a lost machine.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=sweep_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    # A random moment among those when some run has finished and another one is between two checkpoints.
    rng = random.Random()
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        done = [r for r in run_ids if (sweep_dir / r / "summary.json").exists()]
        mid = [r for r in run_ids if r not in done and 0 < latest_checkpoint_step(sweep_dir / r) < 600]
        if done and mid and rng.random() < 0.2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep ended before it could be killed:\n" + proc.communicate()[0]
    os.killpg(proc.pid, signal.SIGKILL)
    first_output = proc.communicate()[0]
    finished = [r for r in run_ids if (sweep_dir / r / "summary.json").exists()]
    interrupted = [r for r in run_ids if r not in finished and latest_checkpoint_step(sweep_dir / r) > 0]
    assert finished and interrupted, first_output
    before = {r: digest(sweep_dir / r) for r in finished}

    out = subprocess.run(cmd, cwd=ROOT, env=sweep_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(run_ids) - len(finished)} of {len(run_ids)} runs to do" in out.stdout
    for r in finished:
        assert digest(sweep_dir / r) == before[r], f"finished run {r} was touched by the restart"
        assert f"[start] {r}" not in out.stdout
    check_consistent_runs(sweep_dir, run_ids)
    for r in interrupted:
        state = json.loads(state_path(sweep_dir, load_spec(spec).runs[run_ids.index(r)], ".json").read_text())
        assert state["launches"] == 2 and state["failures"] == 0, state
    assert "4 done, 0 running, 0 partial, 0 failed, 0 pending of 4" in out.stdout
    listed = json.loads((sweep_dir / "sweep.json").read_text())
    assert [r["run_dir"] for r in listed["runs"]] == run_ids and all((sweep_dir / r).is_dir() for r in run_ids)

    status = subprocess.run([sys.executable, "-m", "agents.sweep", "status", str(spec), "--sweeps-dir",
                             str(tmp_path / "sweeps")], cwd=ROOT, env=sweep_env(), capture_output=True, text=True)
    assert status.returncode == 0 and "4 done" in status.stdout, status.stdout + status.stderr


@pytest.mark.parametrize("argv, message", [
    (["--address", "10.0.0.1:6379"], "--address 10.0.0.1:6379 names a Ray cluster: add --backend ray"),
    (["--backend", "ray", "--index", "0"], "--index is an option of the local backend, not of --backend ray"),
    (["--backend", "ray", "--parallel", "4"], "--parallel is an option of the local backend, not of --backend ray"),
])
def test_options_of_the_other_backend_are_usage_errors(tmp_path, capsys, argv, message):
    """They were ignored: --address without --backend ray trained every run on this machine, --index with it
    trained its run here, not on the cluster."""
    spec = tiny_spec(tmp_path / "s.toml", "mixed", seeds="1")
    with pytest.raises(SystemExit) as e:
        main([str(spec), "--sweeps-dir", str(tmp_path / "sweeps"), "--dry-run", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("status", [True, False])
@pytest.mark.parametrize("where", ["sweeps", "sweeps/files"])
def test_a_file_in_place_of_the_sweeps_dir_is_a_usage_error(tmp_path, capsys, status, where):
    """The status (or a dry run) read the runs' state files under it: a NotADirectoryError traceback."""
    spec = tiny_spec(tmp_path / "s.toml", "files", seeds="1")
    (tmp_path / "sweeps").write_text("")
    argv = [*(["status"] if status else []), str(spec), "--sweeps-dir", str(tmp_path / where),
            *([] if status else ["--dry-run"])]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{tmp_path / 'sweeps'} is a file, not a directory" in err, err


def test_ray_backend_without_a_cluster_is_a_usage_error(tmp_path, capsys, monkeypatch):
    """No Ray cluster at --address: one line and exit 2 (it was a traceback and exit 1, which reads as "a run
    failed"); with nothing left to run, Ray is not even contacted."""
    ray = pytest.importorskip("ray")

    def no_cluster(**kwargs):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to.")

    monkeypatch.setattr(ray, "init", no_cluster)
    spec = tiny_spec(tmp_path / "s.toml", "noray", seeds="1")
    argv = [str(spec), "--sweeps-dir", str(tmp_path / "sweeps"), "--backend", "ray", "--address", "auto"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: cannot reach a Ray cluster at --address 'auto': Could not find any running Ray instance" in err
    assert "Traceback" not in err

    monkeypatch.setattr("agents.sweep.inspect_run", lambda sweep_dir, run: _status(run, "done"))
    assert main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out
    # A run that another process trains is not "done or failed for good", as this line once said.
    monkeypatch.setattr("agents.sweep.inspect_run", lambda sweep_dir, run: _status(run, "running"))
    assert main(argv) == 3
    out = capsys.readouterr().out
    assert "nothing to do here" in out and "0 done, 1 running" in out and "failed for good" not in out


def _status(run, state):
    return RunStatus(run, state, frames=0, fps=None, launches=1, failures=0, last_error=None)


def test_an_interrupted_launch_stops_its_training_process(tmp_path):
    """ray.cancel stops a Ray task with a KeyboardInterrupt in its thread: the launch must pass it on to the
    training process (SIGTERM) instead of blocking in its wait until the run ends, or orphaning it."""
    import _thread
    import threading

    timer = threading.Timer(0.5, _thread.interrupt_main)
    launcher, started = Launcher(), time.monotonic()
    # interrupt_main does nothing where SIGINT is ignored (a pytest started in the background by a shell without
    # job control): Python's own handler raises the KeyboardInterrupt that ray.cancel raises in its thread.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with open(tmp_path / "log", "wb") as log, open(tmp_path / "lock", "w") as lock:
            timer.start()
            with pytest.raises(KeyboardInterrupt):
                launcher.run([sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ), log,
                             lock.fileno())
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - started < 10
    assert not launcher._procs  # waited for: the child is gone


def test_ctrl_c_on_a_ray_sweep_cancels_its_tasks(tmp_path, capsys, monkeypatch):
    """Ctrl-C on `--backend ray` cancels every task still pending (each stops its training process, above), says
    so in one line and exits 130; it was a traceback."""
    import types

    cancelled, waits = [], []

    def wait(refs, num_returns=1, timeout=None):
        waits.append(len(refs))
        if len(waits) == 1:
            raise KeyboardInterrupt
        return refs, []

    task = types.SimpleNamespace(remote=lambda sweep_dir, run, *rest: f"ref-{run.run_id}")
    fake = types.SimpleNamespace(init=lambda **kw: None, shutdown=lambda: None, cancel=cancelled.append, wait=wait,
                                 cluster_resources=lambda: {"CPU": 2.0},
                                 remote=lambda fn: types.SimpleNamespace(options=lambda **kw: task))
    monkeypatch.setitem(sys.modules, "ray", fake)
    spec = tiny_spec(tmp_path / "s.toml", "ctrlc", seeds="1..2")
    with pytest.raises(SystemExit) as stop:
        main([str(spec), "--sweeps-dir", str(tmp_path / "sweeps"), "--backend", "ray", "--address", "auto"])
    assert stop.value.code == 130
    assert sorted(cancelled) == sorted(f"ref-{r.run_id}" for r in load_spec(spec).runs) and waits == [2, 2]
    assert "sweep: interrupted, stopping its Ray tasks" in capsys.readouterr().err
