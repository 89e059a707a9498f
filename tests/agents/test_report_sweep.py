"""agents.report on a sweep directory (sweep.json from agents.sweep): expected runs, missing ones, the figures."""

import json
import shutil
from itertools import product
from pathlib import Path

import pytest

from agents import report
from tests.agents.report_runs import GAMES, SEEDS, edit_config, summary, write_run

TAGS = {0.0: "dense", 0.95: "gmp95"}


def sweep_run(root: Path, agent: str, width: int, sparsity: float, game: str, seed: int, **kw) -> tuple[str, str]:
    """One run of the grid, as agents.train writes it; returns its preset and run directory."""
    preset = f"{agent}_impala_w{width}_{TAGS[sparsity]}"
    run_dir = f"{game}/{preset}/s{seed}"
    d = write_run(root, game, seed, sparsity, width=width, name=run_dir, **kw)
    edit_config(d, **{"agent.name": agent, "agent.n_step": 3 if agent == "rainbow" else 1, "preset": preset})
    return preset, run_dir


def make_sweep(root: Path, agents=("dqn", "rainbow"), widths=(1, 3), sparsities=(0.0, 0.95), games=GAMES[:2],
               seeds=SEEDS[:2], overrides=(), name="fig1") -> Path:
    """A finished sweep in the layout of agents.sweep: {game}/{preset}/s{seed} and a sweep.json listing them."""
    entries = []
    for agent, width, sparsity, game, seed in product(agents, widths, sparsities, games, seeds):
        preset, run_dir = sweep_run(root, agent, width, sparsity, game, seed)
        entries.append({"run_id": f"{preset}-{game}-s{seed}", "run_dir": run_dir, "preset": preset, "game": game,
                        "seed": seed, "overrides": list(overrides)})
    sweep = root / "sweep.json"
    old = json.loads(sweep.read_text())["runs"] if sweep.exists() else []
    sweep.write_text(json.dumps({"name": name, "runs": old + entries}))
    return root


def test_finished_sweep_gives_the_paper_figures_with_one_command(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "fig1")
    assert report.main([str(sweep), "--reps", "50"]) == 0  # no --out: the report goes into the sweep directory
    out = sweep / "report"
    for fig in ("iqm_vs_width.png", "iqm_curves.png"):  # Fig. 1 (IQM vs width) and Fig. 3 (IQM curves)
        assert (out / fig).stat().st_size > 20_000, fig
    configs = summary(out)
    assert len(configs) == 8 and all(c["complete"] and c["final"] is not None for c in configs.values())
    assert {"DQN ×1, dense", "Rainbow ×3, 95% pruned"} <= set(configs)
    md = (out / "report.md").read_text()
    assert "## Sweep" in md and "- fig1: 32 runs expected, 32 started, 32 finished" in md
    assert "None." in md.split("## Problems")[1]


def test_sweep_names_missing_and_unfinished_runs_per_configuration(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "fig1")
    # every seed-1 run of DQN x1 dense is missing: without sweep.json the configuration would look complete
    for game in GAMES[:2]:
        shutil.rmtree(sweep / game / "dqn_impala_w1_dense" / "s1")
    shutil.rmtree(sweep / "Pong" / "dqn_impala_w3_gmp95" / "s0")  # killed after two iterations
    sweep_run(sweep, "dqn", 3, 0.95, "Pong", 0, iters=2, finished=False)
    for game, seed in product(GAMES[:2], SEEDS[:2]):  # one grid entry never started
        shutil.rmtree(sweep / game / "rainbow_impala_w3_gmp95" / f"s{seed}")
    out = tmp_path / "r"
    assert report.main([str(sweep), "--out", str(out), "--reps", "50", "--no-figures"]) == 0
    err = capsys.readouterr().err
    configs = summary(out)
    assert configs["DQN ×1, dense"]["flags"] == ["missing seeds: Breakout seed 1, Pong seed 1"]
    assert configs["DQN ×1, dense"]["final"] is None
    assert configs["DQN ×3, 95% pruned"]["flags"] == ["unfinished: Pong seed 0 (8k frames)"]
    assert "Rainbow ×3, 95% pruned" not in configs
    line = "fig1: --preset rainbow_impala_w3_gmp95: none of its 4 runs has started"
    assert line in err
    md = (out / "report.md").read_text()
    assert f"- {line}" in md and "- fig1: 32 runs expected, 26 started, 25 finished" in md
    row = next(line for line in md.splitlines() if line.startswith("| DQN ×1, dense |"))
    assert "excluded" in row and "**incomplete**: missing seeds: Breakout seed 1, Pong seed 1" in row


def test_runtime_overrides_do_not_split_a_sweep_configuration(tmp_path):
    """Two grid entries that differ only in a runtime option (a requeue with --max-minutes) are one experiment,
    and it expects the union of their runs."""
    sweep = make_sweep(tmp_path / "s", agents=("dqn",), widths=(3,), sparsities=(0.95,), seeds=(0,), name="s")
    make_sweep(sweep, agents=("dqn",), widths=(3,), sparsities=(0.95,), seeds=(1,), name="s",
               overrides=("--max-minutes 30",))
    for d in sweep.glob("*/*/s1"):
        edit_config(d, max_minutes=30)
    out = tmp_path / "r"
    assert report.main([str(sweep), "--out", str(out), "--reps", "50", "--no-figures"]) == 0
    (c,) = summary(out).values()
    assert c["complete"] and c["seeds"] == [0, 1]


@pytest.mark.parametrize("runs, message", [
    ("[]", None),  # nothing expected: nothing to report
    ('[{"run_id": "a", "run_dir": "x", "preset": "demo", "game": "Pong", "seed": "0", "overrides": []}]',
     "runs[0].seed is '0', expected int"),
    ('[{"run_id": "a", "run_dir": "../x", "preset": "demo", "game": "Pong", "seed": 0, "overrides": []}]',
     "runs[0].run_dir '../x' must be a path inside the sweep directory"),
    ('[{"run_id": "a", "run_dir": "x", "preset": "demo", "game": "Pong", "seed": 0, "overrides": "--x 1"}]',
     "runs[0].overrides is '--x 1', expected list"),
])
def test_malformed_or_empty_sweep_is_a_usage_error(tmp_path, capsys, runs, message):
    sweep = tmp_path / "s"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(f'{{"name": "s", "runs": {runs}}}')
    assert report.main([str(sweep), "--no-figures"]) == 2
    err = capsys.readouterr().err
    expected = f"error: {sweep / 'sweep.json'}: {message}" if message else "error: no run of sweep s has started"
    assert expected in err


def test_out_is_required_unless_the_one_directory_is_a_sweep(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    with pytest.raises(SystemExit) as e:
        report.main([str(tmp_path / "runs")])
    assert e.value.code == 2 and "--out is required" in capsys.readouterr().err
