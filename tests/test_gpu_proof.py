"""The GPU proof (bench/gpu_proof.py) and its wheel list (bench/gpu_wheels.py), rehearsed on the CPU."""

import ast
import base64
import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import pathlib
import random
import re
import subprocess
import sys
import tarfile
import tomllib
import types
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_test_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu_proof = _load("gpu_proof")
gpu_wheels = _load("gpu_wheels")
canonical = gpu_wheels.canonical

# The GPU machine: CPython 3.12 on x86-64 Linux.
GPU_MARKER_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                  "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                  "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


# --- the dry run -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dry_run_exercises_every_step_the_layout_and_the_copy_to_out(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)  # the proof's children decide for themselves, as on the GPU machine
    for name in [n for n in env if n.startswith("PYTEST_XDIST_")]:  # under `pytest -n`, pytest-benchmark in the
        env.pop(name)  # children would see a worker's variables, disable itself and write no JSON
    # The default budget (340 s) only sets the steps' time limits (the dry run's sizes are fixed), with room for
    # a loaded CI machine. The proof's own process cannot import the project, as on the GPU machine, where the
    # project is not installed (its steps' processes get it on PYTHONPATH): an import of agents there once
    # failed the profile step on the GPU image only.
    no_agents = ("import runpy, sys; sys.modules['agents'] = None; sys.argv = sys.argv[1:]; "
                 "runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", no_agents, str(ROOT / "bench" / "gpu_proof.py"), "--dry-run",
                           "--results-root", str(tmp_path / "results"), "--sha", "testsha0",
                           "--wheels", str(tmp_path / "no-wheels")],
                          env=env, capture_output=True, text=True, timeout=500, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    folder = tmp_path / "results" / "cpu-dry-run_testsha0"
    steps = json.loads((folder / "steps.json").read_text())["steps"]
    assert list(steps) == list(gpu_proof.STEPS)
    assert all(s["status"] == "ok" for s in steps.values()), steps
    for step in gpu_proof.STEPS[1:]:
        assert (folder / "logs" / f"{step}.log").stat().st_size > 0
    environment = json.loads((folder / "environment.json").read_text())
    assert environment["device"] == "cpu" and environment["env_backend"] in ("envpool", "ale")
    e2e = gpu_proof.read_jsonl(folder / "e2e.jsonl")
    assert {(r["provider"], r["precision"]) for r in e2e} == {("dense", "bf16"), ("gmp95_window", "fp32"),
                                                              ("gmp95_after", "tf32"), ("naive", "fp32"),
                                                              ("dense", "nhwc_bf16")}
    assert [r["channels_last"] for r in e2e].count(True) == 1
    assert all(r["frames_per_second"] > 0 and r["measured_agent_steps"] >= 16 for r in e2e)
    # Every run says where its measured iteration's time went, and the summary's e2e table shows it.
    assert all(sum(r["loop_split"].values()) == pytest.approx(1.0, abs=1e-3) for r in e2e)
    assert next(r for r in e2e if r["provider"] == "gmp95_after")["total_sparsity"] > 0.9
    atari100k = json.loads((folder / "atari100k.json").read_text())
    assert atari100k["learning_agent_steps_per_s"] > 0 and atari100k["updates_in_second_iteration"] == 20
    profile = json.loads((folder / "profile.json").read_text())
    assert "components" in profile and profile["sparsity"] > 0.9  # the profile of the pruned run was pruned
    assert profile["components"]["mask_update"]["calls"] >= 3
    (pong,) = folder.glob("pong_check_cpu_*.json")
    assert json.loads(pong.read_text())["game"] == "Pong" and pong.with_suffix(".png").exists()
    summary = (folder / "summary.md").read_text()
    assert "DRY RUN" in summary and "## Targets" in summary and "## Steps" in summary
    assert "| rehearsal: " in summary and "| MISSED |" not in summary and "| met |" not in summary
    assert "waits: env / GPU / host" in summary and gpu_proof.loop_split_text(e2e[0]["loop_split"]) in summary
    # ... and how close it came to the arithmetic limit: its matmul and convolution FLOPs per frame x frames/s.
    assert all(r["flops_per_frame"] > 0 and r["model_tflops"] == pytest.approx(
        r["frames_per_second"] * r["flops_per_frame"] / 1e12) for r in e2e)
    assert gpu_proof.model_tflops_text(e2e[0], environment) in summary
    for row in gpu_proof.e2e_target_rows([]):
        assert row["target"] in summary
    _check_the_kernel_rehearsal(folder, summary)
    assert "missing wheels: " in steps["install"]["note"]  # no wheels given: said, not fatal in a dry run
    # $OUT: a flat folder of at most 8 files, names the device tool can bring back, the tarball holding it all.
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["cpu-dry-run_testsha0.tar.gz", "summary.md", "proof.log"])
    assert all(p.is_file() and p.stat().st_size < 16 * 2**20 for p in out.iterdir())
    with tarfile.open(out / "cpu-dry-run_testsha0.tar.gz") as tar:
        members = set(tar.getnames())
    assert {f"cpu-dry-run_testsha0/{p.relative_to(folder)}" for p in folder.rglob("*") if p.is_file()} <= members
    assert (out / "summary.md").read_text() == summary
    # Committed as they are: no text names this checkout's directory (pytest's header prints its rootdir).
    texts = {p: p.read_text(errors="replace") for p in folder.rglob("*") if p.suffix in (".log", ".json", ".md")}
    assert not [p.name for p, text in texts.items() if str(ROOT) in text]


# Fields a CPU rehearsal leaves None where a GPU run has a number: no copy bandwidth, no CUDA graph, no CUDA.
CPU_NONE = {"copy_gbps", "cuda", "one_read_ms", "ideal_ms", "frac_of_copy", "frac_of_copy_graph", "ms_graph"}


def _last_gpu_kernel_results() -> list[dict]:
    """extra_info of every benchmark of the newest committed GPU proof (bench/results/<gpu>_<sha>/kernels.json)."""
    runs = [json.loads(p.read_text())["benchmarks"] for p in (ROOT / "bench" / "results").glob("*/kernels.json")]
    runs = [[b["extra_info"] for b in run if "op" in b["extra_info"]] for run in runs]
    return max((run for run in runs if run), key=lambda run: run[0]["date"])


def _check_the_kernel_rehearsal(folder, summary):
    """The kernels step ran every benchmark of the rehearsal subset on the CPU, each result has the fields of a GPU
    run's with their types (None where the CPU has no such number), and both summaries read them as a rehearsal."""
    bench_kernels = _load("bench_kernels")
    infos = [b["extra_info"] for b in json.loads((folder / "kernels.json").read_text())["benchmarks"]]
    ran = {(i["op"], i["case"], i["sparsity"], i["provider"]) for i in infos}
    want = ({("mask_selection", *p) for p in bench_kernels.mask_params("rehearsal")}
            | {("masked_adam", *p) for p in bench_kernels.adam_params("rehearsal")}
            | {("host_cost", "impala_w3", 0.0, f"triton_{op}") for op in ("topk", "adam", "adam_new_grads")})
    assert ran == want and len(infos) == len(want)
    assert all(i["device"] == "cpu" and i["copy_gbps"] is None for i in infos)
    assert all(i["graph_error"] == "no CUDA (CPU rehearsal)" for i in infos if i["op"] != "host_cost")
    gpu = _last_gpu_kernel_results()
    for info in infos:
        kind = (info["op"], info["provider"].startswith("triton"))
        like = [g for g in gpu if (g["op"], g["provider"].startswith("triton")) == kind]
        exact = [g for g in like if g["provider"] == info["provider"]]
        for g in (exact or like)[:1]:
            assert set(g) <= set(info), (info["provider"], set(g) - set(info))
            for key, value in g.items():
                if info[key] is None and (key in CPU_NONE or value is None):
                    continue
                if key == "graph_error":
                    assert isinstance(info[key], str)
                    continue
                assert type(info[key]) is type(value) or {type(info[key]), type(value)} <= {int, float}, (
                    info["provider"], key, info[key], value)
    assert all(i["ms"] > 0 and isinstance(i.get("anatomy_us", {}), dict) for i in infos)
    kernels_md = (folder / "kernels.md").read_text()
    assert "CPU REHEARSAL" in kernels_md and "## Mask selection" in kernels_md and "## Masked Adam" in kernels_md
    assert "## Host cost per call" in kernels_md and (folder / "kernels.png").stat().st_size > 10_000
    assert f"kernels: {len(want)} benchmarks" in summary and "kernels.md tabulates them" in summary
    assert "no kernels.json" not in summary and "unreadable" not in summary
    assert "| frozen masked Adam at 95%: speedup over fused Adam + mask (worst case) | >= 2 | - |" not in summary


def test_budget_too_small_skips_steps_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    rc = gpu_proof.main(["--dry-run", "--budget-s", "5", "--steps", "e2e,learning", "--results-root",
                         str(tmp_path), "--sha", "s"])
    assert rc == 1
    steps = json.loads((tmp_path / "cpu-dry-run_s" / "steps.json").read_text())["steps"]
    # install always runs (it is quick, and every later step needs it), even where its share of the budget is
    # under a step's minimum, as in a 210 s dry run
    assert {name: s["status"] for name, s in steps.items()} == {"install": "ok", "e2e": "skipped",
                                                               "learning": "skipped"}
    summary = (tmp_path / "cpu-dry-run_s" / "summary.md").read_text()
    assert "Skipped: e2e, learning." in summary
    assert "SKIPPED" in capsys.readouterr().out


def test_a_failing_summary_still_copies_every_result_to_out(tmp_path, monkeypatch, capsys):
    """The summary ran outside any guard: one results file it could not read, and nothing reached $OUT (the
    device machine's files are gone once it is given back)."""
    monkeypatch.setenv("OUT", str(tmp_path / "out"))

    def broken(*args, **kwargs):
        raise KeyError("frames_per_second")

    monkeypatch.setattr(gpu_proof, "e2e_target_rows", broken)
    rc = gpu_proof.main(["--dry-run", "--budget-s", "60", "--steps", "environment", "--results-root",
                         str(tmp_path), "--sha", "s"])
    steps = json.loads((tmp_path / "cpu-dry-run_s" / "steps.json").read_text())["steps"]
    assert {s["status"] for s in steps.values()} == {"ok"} and rc == 1  # every step ran: the summary's failure
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "Writing the summary failed" in summary and "frames_per_second" in summary
    assert (tmp_path / "out" / "cpu-dry-run_s.tar.gz").stat().st_size > 0
    assert (tmp_path / "out" / "proof.log").exists()
    assert "summary: FAILED" in capsys.readouterr().out


def test_a_jsonl_line_cut_short_is_left_out(tmp_path):
    path = tmp_path / "e2e.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "fram')
    assert gpu_proof.read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_the_selected_steps_share_the_whole_budget():
    # All steps: the plan as sized (PLAN_S fills the default budget with the reserve).
    assert gpu_proof.step_plan(gpu_proof.DEFAULT_BUDGET_S, gpu_proof.STEPS, dry=False) == pytest.approx(
        gpu_proof.PLAN_S)
    # A subset gets the budget, not its share of a whole proof's (`--steps kernels --budget-s 80` once gave the
    # kernel benchmarks 10 s, which killed them).
    plan = gpu_proof.step_plan(80.0, ["install", "kernels"], dry=False)
    assert sum(plan.values()) == pytest.approx(80.0 - gpu_proof.RESERVE_S) and plan["kernels"] > 50


def test_usage_errors_exit_2(monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_proof.main(["--steps", "e2e,kernel"])
    assert e.value.code == 2 and "unknown step(s) kernel" in capsys.readouterr().err
    monkeypatch.setattr(gpu_proof, "gpu_name", lambda: None)
    assert gpu_proof.main([]) == 2
    assert "--dry-run" in capsys.readouterr().err


# --- the summary's target table -------------------------------------------------------------------------------------


def test_model_tflops_are_set_against_the_matmul_rate_of_the_runs_precision():
    env = {"fp32_tflops": 50.0, "tf32_tflops": 400.0, "bf16_tflops": 650.0}
    assert gpu_proof.model_tflops_text({"precision": "fp32", "model_tflops": 15.0}, env) == "15 (30.0% of fp32)"
    assert gpu_proof.model_tflops_text({"precision": "nhwc_bf16", "model_tflops": 26.0}, env) == "26 (4.0% of bf16)"
    assert gpu_proof.model_tflops_text({"precision": "tf32", "model_tflops": 20.0}, env) == "20 (5.0% of tf32)"
    # a proof that measured bf16 alone (before fp32 and TF32 were), and a row from before FLOPs were counted
    assert gpu_proof.model_tflops_text({"precision": "fp32", "model_tflops": 15.0}, {"bf16_tflops": 650.0}) == "15"
    assert gpu_proof.model_tflops_text({"precision": "fp32", "frames_per_second": 2e3}, env) == "-"


def test_e2e_targets_follow_the_measured_frames_per_second():
    rng = random.Random(1)
    for _ in range(20):
        fps = {(w, s): rng.uniform(2_000, 40_000) for w in (1, 3) for s in ("dense", "gmp95_window", "gmp95_after",
                                                                             "naive")}
        runs = [{"case": f"dqn_impala_w{w}", "provider": s, "precision": "fp32", "frames_per_second": v,
                 "kernels": "torch" if s == "naive" else "triton", "cuda_graphs": [] if s == "naive" else ["learner"]}
                for (w, s), v in fps.items()]
        runs.append({"case": "dqn_impala_w3", "provider": "dense", "precision": "bf16", "frames_per_second": 1.0,
                     "kernels": "triton", "cuda_graphs": ["learner"]})  # other precisions never enter the targets
        rows = {r["target"]: r for r in gpu_proof.e2e_target_rows(runs)}
        for w, goal in ((3, 11_000), (1, 22_000)):
            for s, where in (("gmp95_window", "in its pruning window"), ("gmp95_after", "after its window")):
                row = rows[f"DQN-Impala x{w} GMP-95 {where}, fp32 (frames/s)"]
                assert row["measured"] == fps[w, s] and row["met"] == (fps[w, s] >= goal)
            ratio = max(fps[w, "dense"] / fps[w, s] for s in ("gmp95_window", "gmp95_after"))
            row = rows[f"x{w}: pruned time / dense time (worst of window, after)"]
            assert row["measured"] == pytest.approx(ratio) and row["met"] == (ratio <= 1.02)
            speedup = fps[w, "gmp95_window"] / fps[w, "naive"]
            row = rows[f"x{w}: kernels + graphs vs the naive path (GMP-95 in window)"]
            assert row["measured"] == pytest.approx(speedup) and row["met"] == (speedup >= 2)
        assert rows["every non-naive e2e run used the Triton kernels and CUDA graphs"]["met"] is True
    runs[0]["cuda_graphs"] = []  # a run that fell back to eager is called out
    assert gpu_proof.e2e_target_rows(runs)[-1]["met"] is False
    assert all(r["met"] is None for r in gpu_proof.e2e_target_rows([]))


def test_kernel_targets_come_from_summarize_or_say_they_are_not_available(tmp_path):
    json_path = tmp_path / "kernels.json"
    (row,) = gpu_proof.kernel_target_rows(json_path)[0]
    assert row["met"] is None and "no kernels.json" in row["measured"]
    json_path.write_text(json.dumps({"benchmarks": []}))
    calls = []
    rows = [{"target": f"t{i}", "goal": "<= 2", "measured": random.random() * 4, "met": random.random() < 0.5}
            for i in range(5)]
    fake = types.SimpleNamespace(main=lambda argv: calls.append(argv), target_rows=lambda path: rows)
    got, notes = gpu_proof.kernel_target_rows(json_path, fake)
    assert got == rows and notes == [] and calls == [[str(json_path), "--out-dir", str(tmp_path)]]

    def broken_main(argv):
        raise SystemExit("cannot draw")

    older = types.SimpleNamespace(main=broken_main)  # a summarize.py without target_rows()
    (row,), notes = gpu_proof.kernel_target_rows(json_path, older)
    assert row["met"] is None and "not available" in row["measured"] and "cannot draw" in notes[0]
    # A step killed before pytest-benchmark wrote its JSON leaves it empty: a row that says so, not a crash
    # that loses the proof's summary and its copy to $OUT.
    json_path.write_text("")
    (row,), notes = gpu_proof.kernel_target_rows(json_path)
    assert row["met"] is None and "kernels.json unreadable" in row["measured"] and "killed" in row["measured"]


def test_correctness_and_learning_rows(tmp_path):
    junit = tmp_path / "c.xml"
    (row,) = gpu_proof.correctness_rows(junit)
    assert row["met"] is None
    junit.write_text('<testsuites><testsuite name="pytest" tests="12" failures="1" errors="0" skipped="2">'
                     "</testsuite></testsuites>")
    (row,) = gpu_proof.correctness_rows(junit)
    assert row["measured"] == "9 passed, 1 failed, 2 skipped" and row["met"] is False
    junit.write_text('<testsuite name="pytest" tests="3" failures="0" errors="0" skipped="0"></testsuite>')
    assert gpu_proof.correctness_rows(junit)[0]["met"] is True
    # Killed before pytest wrote its JUnit file: what the per-test lines of the log say, never "met".
    junit.unlink()
    log = tmp_path / "correctness.log"
    log.write_text("tests/kernels/test_topk_mask.py::test_topk_realistic_sizes_gpu PASSED    [  5%]\n"
                   "tests/kernels/test_masked_adam.py::test_masked_adam_realistic_sizes_gpu[frozen] PASSED [ 10%]\n")
    (row,) = gpu_proof.correctness_rows(junit, log)
    assert row["measured"] == "killed after 2 passed, 0 failed" and row["met"] is None
    with log.open("a") as f:
        f.write("tests/agents/test_cuda_graphs.py::test_graphed_learner_matches_eager[dqn] FAILED [ 15%]\n")
    (row,) = gpu_proof.correctness_rows(junit, log)
    assert row["met"] is False
    assert "2 passed, 1 failed (tests/agents/test_cuda_graphs.py::test_graphed" in row["measured"]
    pong = {"final_return_last10": -19.5, "frames": 2_500_000, "wall_s": 130.0, "frames_per_second": 19_230.8,
            "total_sparsity": 0.94, "sparsity/prunable": 0.95, "scheduled_sparsity": 0.95,
            "below_target_sparsity": False}
    row, pruned = gpu_proof.learning_rows(pong)
    assert row["met"] is True and "-19.5 after 2.50M frames" in row["measured"]
    assert pruned["met"] is True and pruned["measured"].startswith("0.950")
    assert gpu_proof.learning_rows({**pong, "final_return_last10": -21.0})[0]["met"] is False
    # A run that never pruned (the first H100 run's: its schedule began after the window) is a miss, as is one
    # that fell below its schedule; an older JSON without the verdict is no data.
    assert gpu_proof.learning_rows({**pong, "sparsity/prunable": 0.0, "scheduled_sparsity": 0.0})[1]["met"] is False
    assert gpu_proof.learning_rows({**pong, "below_target_sparsity": True})[1]["met"] is False
    assert gpu_proof.learning_rows({k: v for k, v in pong.items() if k != "scheduled_sparsity"})[1]["met"] is None
    assert [r["met"] for r in gpu_proof.learning_rows(None)] == [None, None]


def test_atari100k_projection_from_the_two_iterations(tmp_path):
    # Iteration 2: 2,000 agent steps (8,000 frames) at 4,000 training frames/s = 2 s of training; its end came
    # 7 s after iteration 1's, so its evaluation took 5 s. 100k steps at 1,000 steps/s + 10 x 5 s = 150 s.
    csv_path = tmp_path / "iterations.csv"
    csv_path.write_text("iteration,agent_steps,frames,grad_steps,score,episodes,eval_score,eval_episodes,fps,"
                        "total_sparsity,wall_time\n"
                        "1,2000,8000,400,-21.0,1,-21.0,100,9000.0,0.0,1000.0\n"
                        "2,4000,16000,2400,,0,-20.5,100,4000.0,0.0,1007.0\n")
    rows = gpu_proof.read_iterations(csv_path)
    assert rows[1]["score"] is None and rows[1]["wall_time"] == 1007.0
    record = gpu_proof.atari100k_record(rows, 2_000)
    assert record["learning_agent_steps_per_s"] == 1000.0 and record["evaluation_s"] == 5.0
    assert record["updates_in_second_iteration"] == 2000 and record["projected_run_minutes"] == 2.5
    (row,) = gpu_proof.atari100k_rows(record)
    assert row["met"] == "reported" and row["measured"] == ("2.5 min (from 4,000 agent steps: 1,000 per s with "
                                                            "an update each, 5.0 s per evaluation of 100 episodes)")
    assert gpu_proof.atari100k_rows(None)[0]["met"] is None
    with pytest.raises(ValueError, match="1 iterations"):
        gpu_proof.atari100k_record(rows[:1], 2_000)


def test_results_are_rewritten_without_machine_paths(tmp_path):
    results = tmp_path / "h100_abc"
    (results / "logs").mkdir(parents=True)
    (results / "logs" / "kernels.log").write_bytes(b"$ /opt/venv/bin/python3 /srv/repo/bench/bench_kernels.py\n"
                                                     b"10%\r50%\r\r\n")  # a progress bar's carriage returns
    (results / "steps.json").write_text(json.dumps({"cmd": "/tmp/proof-x1/site and /tmp/pytest-of-root/t0"}))
    (results / "kernels.png").write_bytes(b"\x89PNG /srv/repo/")  # not text: left alone
    gpu_proof.portable_paths(results, {"/tmp/proof-x1": "<proof-tmp>", "/tmp": "<tmp>", "/opt/venv": "<python>",
                                       "/srv/repo/": ""})
    assert (results / "logs" / "kernels.log").read_bytes() == (b"$ <python>/bin/python3 bench/bench_kernels.py\n"
                                                              b"10%\r50%\r\r\n")
    assert json.loads((results / "steps.json").read_text()) == {"cmd": "<proof-tmp>/site and <tmp>/pytest-of-root/t0"}
    assert (results / "kernels.png").read_bytes() == b"\x89PNG /srv/repo/"
    # A checkout under the temporary directory is named as the checkout, whatever the order given.
    (results / "proof.log").write_text("/tmp/co/.venv/bin/python /tmp/co/bench/x.py /tmp/other")
    gpu_proof.portable_paths(results, {"/tmp": "<tmp>", "/tmp/co/.venv": "<python>", "/tmp/co/": ""})
    assert (results / "proof.log").read_text() == "<python>/bin/python bench/x.py <tmp>/other"


# --- the wheel list ---------------------------------------------------------------------------------------------------


def _imported_modules() -> set[str]:
    """Top-level modules that the project's code (including the tests `pytest -m gpu` collects) imports."""
    local = {"agents", "kernels", "bench", "tests"}
    scripts = {path.stem for path in (ROOT / "bench").glob("*.py")}  # bench scripts import each other by name
    found = set()
    for folder in local:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    found |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return found - local - scripts - set(sys.stdlib_module_names) - {"__future__"}


def _extras_outside_the_proof() -> set[str]:
    """Distributions of pyproject's optional extras other than test/dev (e.g. ray for cluster sweeps): code
    that imports them is not run by the GPU proof."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {canonical(Requirement(r).name) for name, reqs in extras.items() if name not in ("test", "dev")
            for r in reqs}


def test_every_runtime_import_is_on_the_gpu_image_or_in_the_wheel_list():
    image, carried = gpu_wheels.image_packages(), {canonical(n) for n in gpu_wheels.WHEELS}
    by_module = md.packages_distributions()
    missing = {}
    for module in sorted(_imported_modules()):
        dists = {canonical(d) for d in by_module.get(module, [])}
        assert dists, f"cannot tell which distribution provides module {module!r}: is it installed here?"
        if not dists & (image | carried | _extras_outside_the_proof()):
            missing[module] = sorted(dists)
    assert not missing, f"imported by the project, but neither on the GPU image nor carried: {missing}"
    assert {"envpool", "ale-py", "tyro"} <= carried and not carried & image


def test_every_wheel_is_needed_and_its_dependencies_are_carried_on_the_image_or_not_needed():
    image, carried = gpu_wheels.image_packages(), {canonical(n) for n in gpu_wheels.WHEELS}
    by_module = md.packages_distributions()
    imported = {canonical(d) for m in _imported_modules() for d in by_module.get(m, [])}
    required_by_wheels = set()
    for name in gpu_wheels.WHEELS:
        try:
            requirements = md.requires(name) or []
        except md.PackageNotFoundError:
            pytest.fail(f"{name} (in the wheel list) is not installed here, so its dependencies cannot be checked")
        for text in requirements:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(GPU_MARKER_ENV):
                continue
            dep = canonical(req.name)
            required_by_wheels.add(dep)
            assert dep in image | carried | set(gpu_wheels.NOT_NEEDED), (
                f"{name} needs {text}: carry it in bench/gpu_wheels.py or say in NOT_NEEDED why it stays behind")
    unneeded = carried - imported - required_by_wheels
    assert not unneeded, f"carried but neither imported nor required by another wheel: {sorted(unneeded)}"
    assert not set(gpu_wheels.NOT_NEEDED) & (carried | image)


def test_wheel_pins_satisfy_the_project_requirements():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = {canonical(n): v for n, (v, _) in gpu_wheels.WHEELS.items()}
    checked = 0
    for text in pyproject["project"]["dependencies"]:
        req = Requirement(text)
        if canonical(req.name) in pins and (req.marker is None or req.marker.evaluate(GPU_MARKER_ENV)):
            assert SpecifierSet(str(req.specifier)).contains(pins[canonical(req.name)]), (text, pins)
            checked += 1
    assert checked >= 4  # gymnasium, ale-py, envpool, tyro


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def test_trimmed_wheel_keeps_only_what_is_listed_and_installs(tmp_path):
    source = tmp_path / "src" / "fake_assets-1.2.0-py3-none-any.whl"
    source.parent.mkdir()
    payload = {"fake_assets/__init__.py": b"", "fake_assets/atari/roms/pong.bin": os.urandom(3000),
               "fake_assets/atari/roms/breakout.bin": os.urandom(2000),
               "fake_assets/vizdoom/maps/basic.wad": os.urandom(500), "fake_assets/mujoco/a.xml": b"<mujoco/>",
               "fake_assets-1.2.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: fake-assets\nVersion: 1.2.0\n",
               "fake_assets-1.2.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{p},{_record_hash(d)},{len(d)}\n" for p, d in payload.items())
    with zipfile.ZipFile(source, "w") as z:
        for path, data in payload.items():
            z.writestr(path, data)
        z.writestr("fake_assets-1.2.0.dist-info/RECORD", record + "fake_assets-1.2.0.dist-info/RECORD,,\n")
    out = gpu_wheels.trim_wheel(source, tmp_path, "fake-assets-atari",
                                ("fake_assets/__init__.py", "fake_assets/atari/"), ("fake_assets/vizdoom/maps",))
    assert out.name == "fake_assets_atari-1.2.0-py3-none-any.whl"
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        info = "fake_assets_atari-1.2.0.dist-info/"
        assert names == {"fake_assets/__init__.py", "fake_assets/atari/roms/pong.bin",
                         "fake_assets/atari/roms/breakout.bin", "fake_assets/vizdoom/maps/.placeholder",
                         info + "METADATA", info + "WHEEL", info + "RECORD"}
        assert z.read("fake_assets/atari/roms/pong.bin") == payload["fake_assets/atari/roms/pong.bin"]
        assert "Name: fake-assets-atari\n" in z.read(info + "METADATA").decode()
        rows = [line.split(",") for line in z.read(info + "RECORD").decode().splitlines()]
        assert {r[0] for r in rows} == names
        for path, digest, size in rows:
            if path != info + "RECORD":
                data = z.read(path)
                assert digest == _record_hash(data) and int(size) == len(data)
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                           "--target", str(site), str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (site / "fake_assets" / "atari" / "roms" / "breakout.bin").stat().st_size == 2000
    assert (site / "fake_assets" / "vizdoom" / "maps").is_dir() and not (site / "fake_assets" / "mujoco").exists()
    with pytest.raises(SystemExit, match="nothing of"):
        gpu_wheels.trim_wheel(source, tmp_path, "x", ("no_such_package/",))


def test_downloaded_wheel_folder_is_checked_against_the_list(tmp_path, monkeypatch):
    """`download` keeps exactly the listed wheels (stale versions removed) and enforces the size limit."""
    expected = gpu_wheels.expected_wheels()

    def fake_pip_download(specs, dest):
        for spec in specs:
            name, version = spec.split("==")
            size = 2**20 if name == "envpool" else 1000
            (dest / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(os.urandom(size))

    def fake_trim(source, dest_dir, new_name, keep, placeholders=()):
        (dest_dir / gpu_wheels.wheel_name(new_name, source.name.split("-")[1])).write_bytes(b"x")

    monkeypatch.setattr(gpu_wheels, "pip_download", fake_pip_download)
    monkeypatch.setattr(gpu_wheels, "trim_wheel", fake_trim)
    (tmp_path / "tyro-0.1.0-py3-none-any.whl").write_bytes(b"old")  # a stale version: two would stop the install
    wheels = gpu_wheels.download(tmp_path, max_mib=60)
    assert {gpu_wheels.wheel_filename_name(p) for p in wheels} == set(expected)
    assert not (tmp_path / "tyro-0.1.0-py3-none-any.whl").exists()
    assert {p.name for p in tmp_path.iterdir()} == {p.name for p in wheels}
    with pytest.raises(SystemExit, match="over the 0.5 MiB limit"):
        gpu_wheels.download(tmp_path, max_mib=0.5)


def test_every_gpu_test_is_in_the_proofs_test_dirs():
    """The correctness step runs only GPU_TEST_DIRS (in that order): a `gpu` test elsewhere would never run."""
    root = pathlib.Path(gpu_proof.__file__).resolve().parents[1]
    marked = {p.relative_to(root).as_posix() for p in (root / "tests").rglob("test_*.py")
              if re.search(r"mark\.gpu\b", p.read_text())}
    assert marked and all(path.startswith(tuple(d + "/" for d in gpu_proof.GPU_TEST_DIRS)) for path in marked), marked



def test_e2e_selection_picks_the_planned_runs():
    """The proof's -k expressions select what their comments say (pytest -k matches substrings of test ids)."""
    root = pathlib.Path(gpu_proof.__file__).resolve().parents[1]

    def collected(selection):
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                              str(root / "bench" / "bench_e2e.py"), "-k", selection], cwd=root, capture_output=True,
                             text=True, timeout=300)
        return sorted(line.split("[", 1)[1].rstrip("]") for line in out.stdout.splitlines() if "::" in line)

    runs = collected(gpu_proof.E2E_SELECTION)
    assert len(runs) == 11 and {r for r in runs if r.startswith("impala_w3-gmp95_after")} == {
        f"impala_w3-gmp95_after-{p}" for p in ("fp32", "bf16", "nhwc_bf16", "tf32")}, runs
    assert {r for r in runs if r.startswith("impala_w1")} == {
        f"impala_w1-{s}-fp32" for s in ("dense", "gmp95_window", "gmp95_after", "naive")}, runs
    assert all("nature" not in r for r in runs)
    dry = collected(gpu_proof.DRY_E2E_SELECTION)
    assert len(dry) == 5 and {r.rsplit("-", 1)[1] for r in dry} == {"fp32", "bf16", "nhwc_bf16", "tf32"}, dry


def test_install_into_runs_the_proofs_install_command(tmp_path, monkeypatch):
    """`gpu_wheels.py --install-into` (make gpu-image-rehearsal) installs exactly as the proof's install step."""
    (tmp_path / "a-1.0-py3-none-any.whl").write_bytes(b"")
    ran = []
    done = types.SimpleNamespace(returncode=0)
    monkeypatch.setattr(gpu_wheels.subprocess, "run", lambda cmd: ran.append(cmd) or done)
    assert gpu_wheels.main(["--dest", str(tmp_path), "--install-into", str(tmp_path / "site")]) == 0
    assert ran == [gpu_wheels.install_command(tmp_path, tmp_path / "site")]


@pytest.mark.parametrize("budget", ["0", "-5", "nan", "inf"])
def test_a_budget_that_is_not_a_positive_number_is_a_usage_error(capsys, budget):
    # NaN passed the `<= 0` check and scaled every step's window to NaN seconds.
    with pytest.raises(SystemExit) as e:
        gpu_proof.parse_args(["--dry-run", "--budget-s", budget])
    assert e.value.code == 2 and "--budget-s must be > 0 and finite" in capsys.readouterr().err


def test_a_verdict_shows_the_digits_that_decide_it():
    """The H200 summary read "1.02 | MISSED" against "<= 1.02": the measured 1.0201 rounded onto the bound."""
    assert gpu_proof._measured_cell(1.0201, "<= 1.02") == "1.0201"
    assert gpu_proof._measured_cell(0.98, "<= 1.02") == "0.98" and gpu_proof._measured_cell(11.02, "<= 1.02") == "11"
    assert gpu_proof._measured_cell("no data", "<= 1.02") == "no data"
