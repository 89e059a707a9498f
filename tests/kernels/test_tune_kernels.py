"""CPU checks of bench/tune_kernels.py, the GPU knob sweep: its dry run end to end, and that a configuration
whose results are wrong is recorded as wrong and never reported as the best."""

import argparse
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_tune_test_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tune = _load("tune_kernels")
bench_kernels = _load("bench_kernels")


def test_configs_change_one_knob_at_a_time_from_the_defaults():
    defaults = dict(a=1, b=2)
    out = tune.configs(defaults, {"a": (1, 3), "b": (4,)})
    assert out == [("default", None, dict(a=1, b=2)), ("a", 3, dict(a=3, b=2)), ("b", 4, dict(a=1, b=4)),
                   ("default", "again", dict(a=1, b=2))]


def test_the_combination_takes_each_knobs_best_alternative_that_beat_the_defaults():
    def row(knob, value, ms, correct=True, name="case"):
        return dict(name=name, knob=knob, value=value, ms=ms, correct=correct)

    defaults = dict(a=1, b=2, c=3)
    alternatives = {"a": (4, 5), "b": (6,), "c": (7,)}
    rows = [row("default", None, 1.2), row("a", 4, 0.9), row("a", 5, 0.8), row("b", 6, 0.97),
            row("c", 7, 0.5, correct=False), row("default", "again", 1.0), row("b", 6, 0.1, name="other")]
    # a=5 (the faster of a's two), b=6 (3% faster than the defaults' faster time); c=7 was wrong.
    assert tune.combined_config(rows, "case", defaults, alternatives) == ("a=5, b=6", dict(a=5, b=6, c=3))
    # One knob that beats the defaults by more than the margin is not a combination.
    rows[3] = row("b", 6, 0.99)
    assert tune.combined_config(rows, "case", defaults, alternatives) is None
    # The dry run combines every knob's first alternative.
    assert tune.combined_config([], "case", defaults, alternatives, dry=True)[1] == dict(a=4, b=6, c=7)
    md = tune.summary_markdown([dict(row("default", None, 1.0), config={}, error=None, regs={}, spills={}),
                                dict(row("combined", "a=5, b=6", 0.7), config={}, error=None, regs={}, spills={})],
                               {"device": "cpu"}, [])
    assert "Best: combined: a=5, b=6, 0.700x" in md and "| combined: a=5, b=6 | 0.7000 |" in md


def test_the_baseline_is_the_faster_of_the_defaults_two_measurements():
    # A first measurement slowed by warm-up must not make every alternative look faster.
    def row(knob, value, ms):
        return dict(name="case", knob=knob, value=value, config=dict(a=1), ms=ms, correct=True, error=None,
                    regs={}, spills={})

    rows = [row("default", None, 0.9), row("a", 2, 0.6), row("default", "again", 0.5)]
    md = tune.summary_markdown(rows, {"device": "cpu"}, [])
    assert "Best: the defaults, 1.000x" in md and "0.9000 and 0.5000 ms" in md
    assert "| a=2 | 0.6000 | 1.200 |" in md and "| defaults (again) | 0.5000 | 1.000 |" in md


def test_adam_cases_time_the_targets_baseline_in_the_same_run(tmp_path, monkeypatch):
    # On the GPU each masked-Adam case first times what its target compares with (fused Adam alone at 0%,
    # fused Adam + mask when pruned); the summary gives the defaults and the best against it, and never ranks it.
    sweep = _sweep(tmp_path)
    monkeypatch.setattr(sweep, "dry", False)  # (the baseline is skipped in dry runs)
    monkeypatch.setattr(sweep, "time_ms", lambda fn, graph: 2.0)
    torch.manual_seed(0)
    masked, params, grads, masks = bench_kernels.adam_problem("flat_50M", [(64,)], 0.95, "cpu")
    before = [p.clone() for p in params]
    sweep.adam_baseline("adam_case", params, grads, masks, 0.95)
    (row,) = sweep.rows
    assert (row["knob"], row["value"], row["ms"], row["error"]) == ("baseline", "torch_fused_mask", 2.0, None)
    assert all(torch.equal(a, b) for a, b in zip(params, before))  # it steps copies, not the sweep's weights
    sweep.adam_baseline("adam_s0", params, grads, masks, 0.0)
    assert sweep.rows[-1]["value"] == "torch_fused_nomask"
    rows = [row, dict(name="adam_case", knob="default", value=None, config={}, ms=1.0, correct=True, error=None,
                      regs={}, spills={}),
            dict(name="adam_case", knob="block", value=512, config={}, ms=0.5, correct=True, error=None,
                 regs={}, spills={})]
    md = tune.summary_markdown(rows, {"device": "cpu"}, [])
    assert "Baseline `torch_fused_mask` in the same run: 2.0000 ms; the defaults take 0.500x its time, the best " \
           "0.250x." in md and "| baseline" not in md and "Best: block=512" in md


def test_dry_run_measures_every_case_and_configuration(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "tune_kernels.py"), "--dry-run", "--out",
                           str(tmp_path), "--budget-s", "300"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "tune.jsonl").read_text().splitlines()]
    per_case = {}
    for r in rows:
        per_case.setdefault(r["name"], []).append(r)
    # The defaults first and last, and (in a dry run, always) the combination of alternatives.
    n_topk = 3 + sum(len(v) for v in tune.TOPK_ALTERNATIVES.values())
    n_adam = {mode: 3 + sum(len(v) for v in tune.adam_alternatives(mode).values()) for mode in ("faithful", "frozen")}
    # The live-sector list: off, its build's rows, warps and persistent grids, its chunks.
    assert n_adam["frozen"] == n_adam["faithful"] + 10
    assert {name: len(v) for name, v in per_case.items()} == {
        **{c[0]: n_topk for c in tune.TOPK_CASES}, **{c[0]: n_adam[c[3]] for c in tune.ADAM_CASES}}
    assert all(r["correct"] and r["ms"] > 0 and r["error"] is None for r in rows)
    md = (tmp_path / "tune.md").read_text()
    assert "DRY RUN" in md and all(f"## {name}" in md for name in per_case)


def _sweep(tmp_path, budget_s=300.0):
    args = argparse.Namespace(dry_run=True, budget_s=budget_s, out=tmp_path)
    return tune.Sweep(args, torch, bench_kernels)


def test_a_wrong_adam_configuration_is_recorded_and_never_the_best(tmp_path, monkeypatch):
    from kernels import masked_adam

    real = masked_adam.masked_adam_triton_

    def wrong_at_block_2048(params, *args, block, **kwargs):
        real(params, *args, block=block, **kwargs)
        if block == 2048:  # a knob that computes a different step for one weight (by a normal number: the
            params[0].view(-1)[7] += 1e-3  # suite may run with denormals flushed, as the trainer sets them)

    monkeypatch.setattr(masked_adam, "masked_adam_triton_", wrong_at_block_2048)
    sweep = _sweep(tmp_path)
    sweep.adam_case("adam_case", "flat_50M", 0.95, "faithful")  # (fewer knobs than frozen mode: quicker)
    wrong = [r for r in sweep.rows if not r["correct"]]
    assert [(r["knob"], r["value"]) for r in wrong] == [("block", 2048)]
    # Make the wrong one the fastest: the summary still must not pick it.
    for r in sweep.rows:
        r["ms"] = 0.001 if not r["correct"] else 0.5 if r["knob"] == "default" else 1.0
    md = tune.summary_markdown(sweep.rows, {"device": "cpu"}, [])
    assert "Best: the defaults" in md and "| block=2048 |" in md and "NO" in md


def test_a_wrong_mask_configuration_is_recorded(tmp_path, monkeypatch):
    from kernels import topk_mask

    real = topk_mask.topk_magnitude_masks_triton

    def drops_one_kept_entry_with_four_warps(weights, keep, *, out, block, slots):
        real(weights, keep, out=out, block=block, slots=slots)
        if topk_mask.CAND_WARPS == 4:
            flat = out[0].view(-1)
            flat[int(flat.nonzero()[0])] = False

    monkeypatch.setattr(topk_mask, "topk_magnitude_masks_triton", drops_one_kept_entry_with_four_warps)
    sweep = _sweep(tmp_path)
    sweep.topk_case("topk_case", "synthetic_50M", 0.95)
    assert [(r["knob"], r["value"]) for r in sweep.rows if not r["correct"]] == [("cand_warps", 4)]
    assert topk_mask.CAND_WARPS == 1 and len(topk_mask._plans) == 0  # the knobs and caches are restored


def test_a_configuration_that_raises_is_a_row_not_the_end(tmp_path, monkeypatch):
    from kernels import masked_adam

    real = masked_adam.masked_adam_triton_

    def fails_at_sixteen_warps(*args, **kwargs):
        if masked_adam.NUM_WARPS == 16:
            raise RuntimeError("out of resources")
        real(*args, **kwargs)

    monkeypatch.setattr(masked_adam, "masked_adam_triton_", fails_at_sixteen_warps)
    sweep = _sweep(tmp_path)
    sweep.adam_case("adam_case", "flat_50M", 0.0, "faithful")
    failed = [r for r in sweep.rows if r["error"]]
    assert [(r["knob"], r["value"], r["correct"]) for r in failed] == [("num_warps", 16, False)]
    assert "out of resources" in failed[0]["error"]
    assert len(sweep.rows) == 3 + sum(len(v) for v in tune.adam_alternatives("faithful").values())  # (+ combined)


def test_the_budget_stops_the_sweep_and_says_so(tmp_path):
    sweep = _sweep(tmp_path, budget_s=0.6)
    sweep.run()
    assert sweep.skipped and len(sweep.rows) < 10
    assert "Not measured in full (budget)" in tune.summary_markdown(sweep.rows, {"device": "cpu"}, sweep.skipped)


@pytest.mark.parametrize("bad", ["0", "-5"])
def test_bad_budget_is_a_usage_error(bad, capsys):
    with pytest.raises(SystemExit) as e:
        tune.main(["--budget-s", bad, "--dry-run"])
    assert e.value.code == 2 and "--budget-s must be > 0" in capsys.readouterr().err


def test_registers_and_spills_come_from_the_kernels_the_calls_launched():
    import types

    class FakeKernel:  # what `kernel[grid](...)` returns on a GPU: the compiled kernel, with its resources
        fn = None

        def __getitem__(self, grid):
            return lambda *args, **kwargs: types.SimpleNamespace(n_regs=96, n_spills=4)

    module = types.SimpleNamespace(_guess_kernel=FakeKernel(), _other_kernel=FakeKernel())
    with tune.compiled_kernels(bench_kernels, module) as compiled:
        module._guess_kernel[(1,)](0)
    assert {k: (c.n_regs, c.n_spills) for k, c in compiled.items()} == {"guess": (96, 4)}
    assert isinstance(module._guess_kernel, FakeKernel)  # put back
