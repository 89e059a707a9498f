"""CPU checks of the GPU bench suite's pure-Python parts: problem shapes, byte counts, the summary script."""

import importlib.util
import json
import pathlib
import re

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
    op, prov = bench_kernels.adam_op_bytes, bench_kernels.adam_provider_bytes
    assert op([n], [True], 0.0, frozen=False) == 29 * n
    assert op([n], [False], 0.9, frozen=True) == 28 * n  # an unmasked bias is plain Adam
    assert op([n], [True], 0.9, frozen=True, pruned_are_zero=True) == n + 100 * 28
    assert op([n], [True], 0.9, frozen=True) == n + 100 * 28 + 900 * 4
    assert op([n], [True], 0.9, frozen=False, pruned_are_zero=True) == n + 100 * 28 + 900 * 20
    assert op([n], [True], 0.5, frozen=False, grad_bytes=2) == n * 27
    assert prov([n], [True], 0.9, "torch_fused_mask") == 37 * n
    assert prov([n], [True], 0.9, "torch_fused_nomask") == 28 * n
    # Our kernel skips per 8-element sector: at random masks a fraction 1 - s^8 of the elements is in a live one.
    live = n * (1 - 0.9**8)
    # Frozen mode's live-sector list: per live element, its entry's share written and read (1 byte) and the
    # mask byte read again.
    assert prov([n], [True], 0.9, "triton_frozen_pz") == round(n + live * (28 + 2))
    assert prov([n], [True], 0.9, "triton_frozen") == round(n + live * (28 + 2) + (n - live) * 4)
    assert prov([n], [True], 0.9, "triton_faithful_pz") == round(n + live * 28 + (n - live) * 20)
    assert prov([n], [True], 0.9, "triton_faithful") == op([n], [True], 0.9, frozen=False)  # skips nothing
    assert prov([n], [True], 0.0, "triton_frozen") == op([n], [True], 0.0, frozen=True) + 2 * n
    assert prov([n], [False], 0.9, "triton_frozen") == 29 * n  # an unmasked tensor: every sector listed
    assert bench_kernels.adam_model_bytes([n], [True], 0.99, frozen=True) == pytest.approx(
        n + 0.0773 * n * 30 + 0.9227 * n * 4, rel=1e-3)
    # The block walk (FROZEN_LIVE_LIST = False) moves no list.
    assert bench_kernels.adam_model_bytes([n], [True], 0.99, frozen=True, live_list=False) == pytest.approx(
        n + 0.0773 * n * 28 + 0.9227 * n * 4, rel=1e-3)


def test_mask_traffic_model():
    n = 10**6
    assert bench_kernels.mask_op_bytes(n) == 5 * n
    warm, cold = (bench_kernels.mask_model_bytes(n, 0.01, warm=w) for w in (True, False))
    # warm: one read + mask + 1% candidates (a 4-byte slot written, read 3 times) + the mask sectors written again
    assert warm == pytest.approx(5 * n + 10**4 * (4 + 12) + n * (1 - 0.995**32), abs=1)
    assert cold - warm == pytest.approx(4 * n - 4 * 10**4, abs=1)  # a second full read, not a re-read of c


def test_launch_anatomy_times_each_launch_of_a_call():
    """The per-launch timing helper on the CPU (interpreted kernels; fake events count ticks between records)."""
    import torch

    from kernels import topk_mask

    clock = [0]

    class FakeEvent:
        def record(self):
            clock[0] += 1
            self.t = clock[0]

        def elapsed_time(self, end):  # ms, like torch.cuda.Event
            return (end.t - self.t) * 1e-3

    weights = [torch.randn(300), torch.randn(7, 9)]
    keep = [30, 10]
    want = topk_mask.topk_magnitude_masks_triton(weights, keep, block=64)
    calls = []

    def fn():
        calls.append(topk_mask.topk_magnitude_masks_triton(weights, keep, block=64))

    with bench_kernels.timed_launches(topk_mask, FakeEvent) as records:
        fn()
    assert [name for name, _, _ in records] == ["prepare", "guess", "cold", "digit2", "digit3", "tie", "fixup"]
    assert len(records) == topk_mask.LAUNCHES
    delays = []  # (seconds, the clock then): each call must be queued behind a delay of twice its host time

    def delay(seconds):
        delays.append((seconds, clock[0]))

    anatomy = bench_kernels.launch_anatomy_us(fn, topk_mask, reps=3, event=FakeEvent, delay=delay)
    assert list(anatomy) == [name for name, _, _ in records] and all(us == 1.0 for us in anatomy.values())
    assert len(delays) == 3 and all(seconds > 0 for seconds, _ in delays)
    # the two untimed calls first (warm, host time), then each timed call's 14 records right after its delay
    assert [tick for _, tick in delays] == [clock[0] - 14 * (3 - i) for i in range(3)]
    assert all(torch.equal(a, b) for masks in calls for a, b in zip(masks, want))  # the kernels really ran
    assert topk_mask._guess_kernel is not None and hasattr(topk_mask._guess_kernel, "fn")  # and are restored


def test_proof_subset_covers_every_target():
    """The subset the GPU proof runs (PRUNERL_BENCH_SUBSET=proof) measures everything `target_rows` needs."""
    mask, adam = bench_kernels.mask_params("proof"), bench_kernels.adam_params("proof")
    assert set(mask) <= set(bench_kernels.mask_params("all")) and set(adam) <= set(bench_kernels.adam_params("all"))
    assert len(mask) + len(adam) <= 40  # ~90 s on an H100
    for case, s, p in [("synthetic_50M", 0.95, q) for q in ("triton", "topk_loop", "sort")] + [
            ("impala_w3", 0.95, "triton")]:
        assert (case, s, p) in mask
    for s, p in [(0.0, "triton_faithful"), (0.0, "torch_fused_nomask"), (0.95, "triton_frozen"),
                 (0.95, "torch_fused_mask"), (0.99, "triton_frozen"), (0.99, "torch_fused_mask")]:
        assert ("flat_50M", s, p) in adam


def test_rehearsal_subset_runs_the_proofs_benchmarks_and_every_provider_on_small_stand_ins():
    """PRUNERL_BENCH_SUBSET=rehearsal (the dry run's kernels step): every (case, sparsity, provider) of the proof,
    under the same case names (the summary's targets read them), and each other provider once."""
    for params, providers, stand_ins in (
            (bench_kernels.mask_params, bench_kernels.MASK_PROVIDERS, bench_kernels.REHEARSAL_MASK_CASES),
            (bench_kernels.adam_params, bench_kernels.ADAM_PROVIDERS, bench_kernels.REHEARSAL_ADAM_CASES)):
        rehearsal = params("rehearsal")
        assert rehearsal[:len(params("proof"))] == params("proof") and len(set(rehearsal)) == len(rehearsal)
        assert {p for _, _, p in rehearsal} == set(providers)
        assert {c for c, _, _ in rehearsal} == set(stand_ins)
        assert all(sum(bench_kernels.numel(s) for s in shapes) < 2_000 for shapes in stand_ins.values())
    assert any(s == (3, 5) for s in bench_kernels.REHEARSAL_MASK_CASES["impala_w3"])  # a keep count of 1 at 95%


def test_wall_clock_stand_ins_answer_as_the_cuda_timing_does():
    """The CPU rehearsal's do_bench and events give what the measurement reads from triton's and CUDA's."""
    calls = []

    def fn():
        calls.append(1)

    median, p20, p80 = bench_kernels.wall_clock_do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
    assert all(isinstance(x, float) and x >= 0 for x in (median, p20, p80)) and p20 <= median <= p80
    assert isinstance(bench_kernels.wall_clock_do_bench(fn, quantiles=[0.5]), float)
    assert isinstance(bench_kernels.wall_clock_do_bench(fn, return_mode="median"), float)
    assert len(calls) == 3 * (1 + bench_kernels.REPS)  # one warm-up call each
    start, end = bench_kernels.WallClockEvent(), bench_kernels.WallClockEvent()
    start.record()
    end.record()
    assert 0 <= start.elapsed_time(end) < 1e3  # ms


def _fake_results(path, mask_params, adam_params, ms_of=None, call_host_us=None, cpu_rehearsal=False):
    benches = []
    facts = dict(device="cpu", copy_gbps=None) if cpu_rehearsal else dict(device="fake GPU", copy_gbps=3000.0)
    for op, params in (("mask_selection", mask_params), ("masked_adam", adam_params)):
        for i, (case, s, p) in enumerate(params):
            ms = ms_of(op, case, s, p) if ms_of else 0.1 * (i % 7 + 1)
            info = dict(op=op, case=case, sparsity=s, provider=p, ms=ms, ms_graph=ms * 0.9, frac_of_copy=0.8,
                        one_read_ms=0.05, op_bytes=10**6, ideal_ms=0.01, **facts)
            if cpu_rehearsal:  # what bench_kernels.measure records without CUDA
                info.update(ms_graph=None, graph_error="no CUDA (CPU rehearsal)", frac_of_copy=None, one_read_ms=None,
                            ideal_ms=None, frac_of_copy_graph=None)
            if p.startswith("triton"):
                info.update(model_bytes=2 * 10**6, launches=6)
                if op == "mask_selection":
                    info.update(anatomy_us=dict(prepare=2.0, guess=30.0, cold=3.0))
                    if call_host_us is not None:
                        info.update(call_host_us=call_host_us)
            benches.append({"name": f"{op}-{case}-{s}-{p}", "extra_info": info, "stats": {}})
    for p, us in (("triton_topk", 12.0), ("triton_adam", 41.0)):
        benches.append({"name": p, "extra_info": dict(op="host_cost", case="impala_w3", sparsity=0.0, provider=p,
                                                      us_per_call=us, ms=us * 1e-3, **facts), "stats": {}})
    path.write_text(json.dumps({"benchmarks": benches}))


def test_summarize_writes_markdown_and_plot(tmp_path, capsys):
    src = tmp_path / "fake.json"
    _fake_results(src, bench_kernels.mask_params("all"), bench_kernels.adam_params("all"))
    summarize.main([str(src), "--out-dir", str(tmp_path / "out")])
    text = (tmp_path / "out" / "fake.md").read_text()
    assert "## Mask selection" in text and "## Masked Adam" in text and "## Targets" in text
    assert "traffic model against achieved" in text and "| impala_w5 | 0.99 |" in text and "MISSED" in text
    assert "| case | sparsity | provider | prepare | guess | cold | sum | graph |" in text
    assert "| 2 | 30 | 3 | 35 |" in text and "CPU REHEARSAL" not in text
    assert (tmp_path / "out" / "fake.png").stat().st_size > 10_000
    assert "Kernel benchmarks" in capsys.readouterr().out


@pytest.mark.parametrize("text,message", [
    ("{}", "has no list 'benchmarks'"), ("[1, 2]", "has no list 'benchmarks'"), ('{"benchm', "cannot read"),
    ('{"benchmarks": "x"}', "has no list 'benchmarks'"), ('{"benchmarks": [3]}', "benchmarks[0] is not a benchmark"),
    ('{"benchmarks": [{"name": "b", "extra_info": {"op": "topk_mask", "ms": "fast", "case": "x", "sparsity": 0.9, '
     '"provider": "triton"}}]}', "got ms='fast'"),
    # bench_e2e.py's JSON: its kernel tables were silently empty
    ('{"benchmarks": [{"name": "e2e", "extra_info": {"frames_per_second": 3000.0}}]}', "holds no kernel benchmark")])
def test_summarize_names_what_is_wrong_with_a_json(tmp_path, capsys, text, message):
    # Each was a traceback (KeyError, TypeError, AttributeError, JSONDecodeError, ValueError from float()).
    src = tmp_path / "bad.json"
    src.write_text(text)
    with pytest.raises(SystemExit) as e:
        summarize.main([str(src), "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and str(src) in err


def test_summarize_says_how_the_anatomy_was_timed(tmp_path):
    """Results with the host's time per call come from anatomies queued behind a device delay (device time
    alone); older ones timed the host's launch cost too, and their table says so."""
    queued = "each call queued behind a device delay"
    for host, how, header in ((None, "the host's launch cost included", "| cold | sum | graph |"),
                              (480.0, queued, "| cold | sum | graph | host per call |")):
        src = tmp_path / f"r{host}.json"
        _fake_results(src, bench_kernels.mask_params("proof"), bench_kernels.adam_params("proof"),
                      call_host_us=host)
        summarize.main([str(src), "--out-dir", str(tmp_path / f"out{host}")])
        text = (tmp_path / f"out{host}" / f"r{host}.md").read_text()
        assert how in text and header in text
        assert host is None or re.search(r"\| 2 \| 30 \| 3 \| 35 \| [0-9.]+ \| 480 \|", text)


def test_summarize_labels_a_cpu_rehearsal_and_reads_its_missing_values(tmp_path):
    """A CPU rehearsal's results (no copy bandwidth, no graph) are tabulated under a heading saying they are no
    speed; the targets that need what it lacks have no data."""
    src = tmp_path / "cpu.json"
    _fake_results(src, bench_kernels.mask_params("rehearsal"), bench_kernels.adam_params("rehearsal"),
                  call_host_us=480.0, cpu_rehearsal=True)
    summarize.main([str(src), "--out-dir", str(tmp_path / "out")])
    text = (tmp_path / "out" / "cpu.md").read_text()
    assert "CPU REHEARSAL, not a measurement" in text and "copy bandwidth - GB/s" in text
    assert "the host's clock around each interpreted launch" in text and "a CPU rehearsal, not measured" in text
    assert "| impala_w3 | 0.95 | triton_cold | 1.0 | 2.0 | 6 | - | - |" in text  # no ideal or design time
    rows = {r["target"]: r for r in summarize.target_rows(src)}
    assert rows["mask selection, 50M at 95%: time / one fp32 read of the weights"]["met"] is None
    assert rows["mask selection, 50M at 95%: speedup over the per-layer torch.topk loop"]["measured"] is not None


def test_target_rows_judge_each_target(tmp_path):
    # Times chosen so that each target's verdict is known: the Triton providers take 1 ms, baselines vary.
    base = {"topk_loop": 5.0, "sort": 10.0, "torch_fused_nomask": 0.99, "torch_fused_mask": 2.5, "triton": 1.0}

    def ms_of(op, case, s, p):
        if op == "masked_adam" and p == "torch_fused_mask":
            return 6.0 if s == 0.99 else 2.5
        return base.get(p, 1.0)

    src = tmp_path / "r.json"
    _fake_results(src, bench_kernels.mask_params("proof"), bench_kernels.adam_params("proof"), ms_of)
    rows = summarize.target_rows(src)
    assert len(rows) == 10 and all(set(r) == {"target", "goal", "measured", "met"} for r in rows)
    verdicts = [r["met"] for r in rows]
    # one read: 1 ms / 0.05 ms = 20 (missed twice); 5x over the loop (met); 10x over sort (missed);
    # 80% of copy bandwidth (missed); 1/0.99 > 1.02? no: 1.0101 (met); 2.5x at 95% (met); 6x at 99% (met);
    # host costs 12 us (met) and 41 us (missed).
    assert verdicts == [False, True, False, False, False, True, True, True, True, False], rows
    assert rows[0]["measured"] == pytest.approx(20.0) and rows[0]["goal"] == "<= 1.5"
    assert rows[2]["measured"] == pytest.approx(0.9 / 0.05)  # the graph time, as the target says
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"benchmarks": []}))
    assert all(r["met"] is None and r["measured"] is None for r in summarize.target_rows(empty))


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


def test_end_to_end_speed_spans_every_measured_iteration():
    """Iterations are the warm-up's length: a measurement twice as long is two iterations, and both count (only
    the last one did, so the proof timed half the window its summary stated)."""
    bench_e2e = _load("bench_e2e")
    rows = [{"agent_steps": "1600", "frames": "6400", "fps": "5000"},  # the warm-up, not measured
            {"agent_steps": "3200", "frames": "12800", "fps": "1000"},  # 6.4 s
            {"agent_steps": "4800", "frames": "19200", "fps": "4000"}]  # 1.6 s
    fps, steps = bench_e2e.measured_speed(rows)
    assert steps == 3200 and fps == pytest.approx(12800 / 8.0)
    assert bench_e2e.measured_speed(rows[:1]) == (5000.0, 1600)  # no warm-up iteration to leave out


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


@pytest.mark.parametrize("argv,message", [(["--preset", "nope"], "unknown preset 'nope'"),
                                          (["--minutes", "0"], "max_minutes must be > 0"),
                                          (["--total-steps", "0"], "total_steps and iteration_steps must be >= 1"),
                                          (["--min-replay", "-5"], "agent.min_replay")])
def test_pong_check_refuses_a_bad_option_in_one_line(tmp_path, capsys, argv, message):
    # Its fields were set after the preset was built, past every check: a traceback, or a run that did not run.
    with pytest.raises(SystemExit) as exc:
        _load("pong_check").main([*argv, "--out-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs")])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
