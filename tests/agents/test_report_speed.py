"""agents.report's speed table: training frames/s per configuration and device, and where the loop's time went."""

import json
from itertools import product

import pytest

from agents import report
from tests.agents.report_runs import GAMES, SEEDS, summary, write_run


def _set_speed(d, fps: list[str], device: str | None, split: dict | None = None, flops_per_frame=None) -> None:
    """The run's iterations' frames/s column, its device name (config.json), loop split and FLOPs per frame
    (summary.json)."""
    lines = (d / "iterations.csv").read_text().splitlines()
    col = lines[0].split(",").index("fps")
    rows = [line.split(",") for line in lines[1:]]
    for row, value in zip(rows, fps, strict=True):
        row[col] = value
    (d / "iterations.csv").write_text("\n".join([lines[0]] + [",".join(r) for r in rows]) + "\n")
    meta = json.loads((d / "config.json").read_text())
    if device is not None:
        meta["device_name"] = device
    (d / "config.json").write_text(json.dumps(meta))
    done = json.loads((d / "summary.json").read_text())
    if split is not None:
        done["last_loop_split"] = split
    if flops_per_frame is not None:
        done["model_flops_per_frame"] = flops_per_frame
    (d / "summary.json").write_text(json.dumps(done))


def _speed_rows(md: str) -> dict[tuple[str, str], list[str]]:
    section = md.split("## Speed", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines()
            if line.startswith("| ") and "---" not in line]
    return {(r[0].strip(), r[1].strip()): [c.strip() for c in r[2:]] for r in rows[1:]}


def test_speed_per_configuration_and_device(tmp_path):
    root = tmp_path / "runs"
    split = {"env_wait": 0.1, "device_wait": 0.7, "host": 0.2}
    for sparsity, game, seed in product((0.0, 0.95), GAMES, SEEDS):
        d = write_run(root, game, seed, sparsity)
        # The first iteration (the warm-up) is slow and left out; the pruned runs are 10% faster on the H100.
        fast = "1100.0" if sparsity else "1000.0"
        # Model TFLOP/s: 7.5 GFLOP per frame x 1,100 frames/s for the pruned runs; a dense run of an older
        # trainer has no count, so the dense configuration shows none.
        _set_speed(d, ["300.0", fast, fast, fast], "NVIDIA H100 80GB HBM3",
                   split if seed == 0 and not sparsity else None,
                   flops_per_frame=7.5e9 if sparsity or (game, seed) != (GAMES[0], SEEDS[0]) else None)
    for game, seed in product(GAMES, SEEDS):  # width 1 on another GPU: compared with nothing on the H100
        d = write_run(root, game, seed, 0.0, width=1)
        # an iteration with no speed; a hand-edited split that is not numbers counts as none
        _set_speed(d, ["100.0", "3000.0", "3000.0", ""], "NVIDIA A100-SXM4-80GB",
                   {"env_wait": "a lot", "device_wait": 0.5, "host": 0.5}, flops_per_frame="many")
    out = tmp_path / "r"
    assert report.main([str(root), "--out", str(out), "--reps", "20", "--no-figures"]) == 0
    rows = _speed_rows((out / "report.md").read_text())
    h100, a100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"
    assert rows[("×3, dense", h100)] == ["9", "1,000", "1.00x (reference)", "10% / 70% / 20%", "-"]
    assert rows[("×3, 95% pruned", h100)] == ["9", "1,100", "1.10x", "-", "8.25"]
    assert rows[("×1, dense", a100)] == ["9", "3,000", "1.00x (reference)", "-", "-"]  # not a number: none
    assert len(rows) == 3
    speed = summary(out)["×3, 95% pruned"]["speed"]
    assert speed == {h100: {"runs": 9, "frames_per_second": pytest.approx(1100.0), "loop_split": None,
                            "model_tflops": pytest.approx(8.25), "cpu_shared_runs": 0}}


def test_runs_without_a_training_speed_add_no_speed_rows(tmp_path):
    root = tmp_path / "runs"
    for game, seed in product(GAMES, SEEDS):  # offline runs write frames/s 0
        _set_speed(write_run(root, game, seed, 0.0), ["0.0"] * 4, None)
    out = tmp_path / "r"
    assert report.main([str(root), "--out", str(out), "--reps", "20", "--no-figures"]) == 0
    assert "## Speed" not in (out / "report.md").read_text()
    assert [c["speed"] for c in summary(out).values()] == [{}]


def test_a_cpu_run_waits_on_no_gpu(tmp_path):
    """A CPU run's loop split read 'GPU 0%' in the speed table, as if it had one and never waited on it."""
    root = tmp_path / "runs"
    for game, seed in product(GAMES, SEEDS):
        _set_speed(write_run(root, game, seed, 0.0), ["50.0"] * 4, "cpu",
                   {"env_wait": 0.25, "device_wait": 0.0, "host": 0.75})
    out = tmp_path / "r"
    assert report.main([str(root), "--out", str(out), "--reps", "20", "--no-figures"]) == 0
    (row,) = _speed_rows((out / "report.md").read_text()).values()
    assert row[3] == "25% / - / 75%"


def test_a_speed_measured_on_a_shared_cpu_says_so(tmp_path):
    """A pruned run on a 2-core machine read 0.25x its dense twin's speed: another process had taken a core, and
    nothing said so. The trainer records its and other processes' use of the CPUs (summary.json's cpu_use)."""
    root = tmp_path / "runs"
    for sparsity, game, seed in product((0.0, 0.95), GAMES, SEEDS):
        d = write_run(root, game, seed, sparsity)
        _set_speed(d, ["50.0"] * 4, "cpu")
        done = json.loads((d / "summary.json").read_text())
        other = 1.02 if sparsity and seed == 1 else 0.03
        done["cpu_use"] = {"torch_threads": 2, "cpus": 2, "own_cores": 1.8, "other_processes_cores": other}
        (d / "summary.json").write_text(json.dumps(done))
    out = tmp_path / "r"
    assert report.main([str(root), "--out", str(out), "--reps", "20", "--no-figures"]) == 0
    rows = _speed_rows((out / "report.md").read_text())
    assert rows[("dense", "cpu")][1] == "50"
    assert rows[("95% pruned", "cpu")][1] == f"50 (CPU shared in {len(GAMES)} of its runs)"
    assert summary(out)["95% pruned"]["speed"]["cpu"]["cpu_shared_runs"] == len(GAMES)
