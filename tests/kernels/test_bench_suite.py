"""CPU checks of the GPU bench suite's pure-Python parts: problem shapes, byte counts, the summary script."""

import importlib.util
import json
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_kernels = _load("bench_kernels")
summarize = _load("summarize")


@pytest.mark.parametrize("width, total", [(1, 2_089_954), (3, 6_830_978), (5, 12_346_146)])
def test_impala_shapes_match_the_spec_parameter_counts(width, total):
    shapes = bench_kernels.impala_param_shapes(width)
    assert sum(bench_kernels.numel(s) for s in shapes) == total
    assert len([s for s in shapes if len(s) > 1]) == 17  # 15 convs + dense + output


def test_synthetic_set_is_about_50m():
    assert abs(sum(bench_kernels.numel(s) for s in bench_kernels.SYNTHETIC_50M) - 50e6) < 0.01 * 50e6


def test_adam_bytes():
    n = 1000
    nb = bench_kernels.adam_bytes
    assert nb([n], [True], 0.0, "triton_faithful") == 29 * n
    assert nb([n], [False], 0.9, "triton_frozen") == 28 * n  # an unmasked bias is plain Adam
    assert nb([n], [True], 0.9, "torch_fused_mask") == 37 * n
    assert nb([n], [True], 0.9, "triton_frozen_pz") == n + 100 * 28
    assert nb([n], [True], 0.9, "triton_frozen") == n + 100 * 28 + 900 * 4


def _fake_results(path):
    benches = []
    for op, cases, sparsities, providers in (
            ("mask_selection", bench_kernels.MASK_CASES, bench_kernels.MASK_SPARSITIES,
             ["triton", "topk_loop", "sort", "kthvalue", "prune_l1"]),
            ("masked_adam", bench_kernels.ADAM_CASES, bench_kernels.ADAM_SPARSITIES, bench_kernels.ADAM_PROVIDERS)):
        for i, case in enumerate(cases):
            for s in sparsities:
                for j, p in enumerate(providers):
                    info = dict(op=op, case=case, sparsity=s, provider=p, ms=0.1 * (i + 1) * (j + 1),
                                frac_of_copy=0.8, one_read_ms=0.05, device="fake GPU", copy_gbps=3000.0)
                    benches.append({"name": f"{op}-{case}-{s}-{p}", "extra_info": info, "stats": {}})
    path.write_text(json.dumps({"benchmarks": benches}))


def test_summarize_writes_markdown_and_plot(tmp_path, capsys):
    src = tmp_path / "fake.json"
    _fake_results(src)
    summarize.main([str(src), "--out-dir", str(tmp_path / "out")])
    text = (tmp_path / "out" / "fake.md").read_text()
    assert "## Mask selection" in text and "## Masked Adam" in text and "## Targets" in text
    assert "| impala_w5 | 0.99 |" in text and "MISSED" in text  # fake data misses e.g. the 20x target
    assert (tmp_path / "out" / "fake.png").stat().st_size > 10_000
    assert "Kernel benchmarks" in capsys.readouterr().out


def test_end_to_end_bench_measures_a_tiny_cpu_run():
    """The e2e bench's config and measurement, on the CPU with a few hundred steps (the bench itself is GPU-only)."""
    bench_e2e = _load("bench_e2e")
    for setup in bench_e2e.SETUPS:
        cfg = bench_e2e.e2e_config("nature", 1, setup, warmup=300, measure=200, gpu=False)
        assert cfg.total_steps == 500 and cfg.iteration_steps == 300 and cfg.device == "cpu"
        assert (cfg.pruning.final_sparsity == 0) == (setup == "dense")
    cfg = bench_e2e.e2e_config("nature", 1, "gmp95_after", warmup=300, measure=200, gpu=False,
                               **{"env.num_envs": 4, "agent.batch_size": 4, "agent.min_replay": 100})
    result = bench_e2e.measure_frames_per_second(cfg)
    assert result["frames_per_second"] > 0 and result["measured_agent_steps"] >= 200
    assert result["total_sparsity"] > 0.9  # pruned to 95% at gradient step 0 (biases stay dense)


def test_pong_check_writes_curve_json_and_plot(tmp_path, monkeypatch):
    """The GPU learning check's pipeline on the CPU: a few seconds of Pong against the time budget."""
    pong_check = _load("pong_check")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    out = tmp_path / "results"
    pong_check.main(["--minutes", "0.1", "--total-steps", "100000", "--min-replay", "200", "--out-dir", str(out),
                     "--runs-dir", str(tmp_path / "runs"), "--preset", "dqn_nature_w1_gmp95"])
    (result_path,) = out.glob("pong_check_cpu_*.json")
    result = json.loads(result_path.read_text())
    assert 0 < result["frames"] < 400_000 and result["wall_s"] < 60 and result["grad_steps"] > 0
    assert result["game"] == "Pong" and result["device"] == "cpu" and isinstance(result["episodes"], list)
    assert result_path.with_suffix(".png").stat().st_size > 5_000
    episodes = [{"frames": 4 * i, "return": float(i % 5 - 21)} for i in range(30)]
    assert pong_check.final_return(episodes) == sum(e["return"] for e in episodes[-10:]) / 10
    assert pong_check.final_return([]) is None
    pong_check.plot(episodes, "synthetic", tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 5_000
