"""End-to-end training speed (GPU only): steady-state env frames/s of DQN, dense vs pruned vs naive pruning.

For DQN-Impala at widths 1, 3, 5 and the Nature CNN at width 1, four setups, all measured in one run:
- `dense`: the dense twin (no masks);
- `gmp95_window`: GMP to 95% with the measured steps inside the pruning window (a mask update every 1,000
  gradient steps, as in the paper);
- `gmp95_after`: GMP to 95% after the window (masks fixed, pruned weights re-masked every step);
- `naive`: the window setup through the plain-PyTorch reference ops (`PRUNERL_KERNELS=torch`: per-layer
  sorted top-k masks, per-tensor Adam then `p *= mask`) and without CUDA graphs, the JaxPruner-equivalent
  baseline.

The other three setups use the defaults: Triton kernels, replay on the GPU, and the learner step in CUDA
graphs. Every setup runs in fp32; `dense` and `gmp95_after` also with `--bf16`, with `--bf16 --channels-last`
(precision `nhwc_bf16`: cuDNN's tensor-core convolutions want NHWC activations) and with `--tf32`.

Each run warms up for `WARMUP` agent steps (the replay fills and learning starts: iteration 1), then measures
`MEASURE` agent steps (the iterations after it, each `WARMUP` long); their frames/s is the result. The full loop
is timed: env stepping, acting, replay, learning, pruning; `loop_split` says where the last iteration's time went
(the host blocked on the envs, blocked on the GPU, or working: `Trainer._log_loop_split`), and `model_tflops`
how close the run came to the GPU's arithmetic limit: frames/s x the matmul and convolution FLOPs per frame
(`Trainer.model_flops`, counted at the run's end: the learner step's at the replay ratio, plus the acting
forward's). Results:
`pytest bench/bench_e2e.py --benchmark-json=bench/results/<name>.json`; each benchmark's extra_info holds the
setup, frames/s, the phases captured in CUDA graphs and the env backend, so a run that silently took a slow path
shows.

Environment variables (set by `bench/gpu_proof.py`): PRUNERL_E2E_WARMUP / PRUNERL_E2E_MEASURE (agent steps),
PRUNERL_E2E_JSONL (also append each result to this JSON-lines file, which survives a killed pytest), and
PRUNERL_E2E_DEVICE=cpu (the proof's dry run: the same runs on the CPU, with 4 envs and batch 4).
"""

import contextlib
import json
import os
import tempfile
from pathlib import Path

import pytest

import kernels
from agents.config import get_preset
from agents.train import Trainer, read_iterations

CASES = [("impala", 1), ("impala", 3), ("impala", 5), ("nature", 1)]
PRECISIONS = ("fp32", "bf16", "nhwc_bf16", "tf32")  # (no "bf16" prefix in the last two: -k matches substrings)
SETUPS = ("dense", "gmp95_window", "gmp95_after", "naive")
# Every setup in fp32 first, then the numeric options on the setups a long run spends its time in.
RUNS = ([(arch, width, setup, "fp32") for arch, width in CASES for setup in SETUPS]
        + [(arch, width, setup, precision) for precision in ("bf16", "nhwc_bf16", "tf32") for arch, width in CASES
           for setup in ("dense", "gmp95_after")])
WARMUP = int(os.environ.get("PRUNERL_E2E_WARMUP", 15_000))  # agent steps: by default one run is 160k frames
MEASURE = int(os.environ.get("PRUNERL_E2E_MEASURE", 25_000))
DEVICE = os.environ.get("PRUNERL_E2E_DEVICE", "cuda")
if DEVICE not in ("cuda", "cpu"):
    raise ValueError(f"PRUNERL_E2E_DEVICE={DEVICE!r}; expected cuda or cpu")
CPU_SIZES = {"env.num_envs": 4, "agent.batch_size": 4}  # the CPU rehearsal: exercises every run, measures nothing
RESULTS_JSONL = os.environ.get("PRUNERL_E2E_JSONL")


def e2e_config(arch: str, width: int, setup: str, warmup: int = WARMUP, measure: int = MEASURE,
               precision: str = "fp32", **overrides):
    """The preset of (arch, width, setup), shortened to warm-up + measurement, with logging kept out of the way;
    `precision` is one of PRECISIONS: fp32, bf16 (`--bf16`), nhwc_bf16 (`--bf16 --channels-last`) or tf32 (`--tf32`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}; expected one of {PRECISIONS}")
    cfg = get_preset(f"dqn_{arch}_w{width}_{'dense' if setup == 'dense' else 'gmp95'}")
    cfg.bf16, cfg.tf32 = precision in ("bf16", "nhwc_bf16"), precision == "tf32"
    cfg.channels_last = precision == "nhwc_bf16"
    cfg.total_steps, cfg.iteration_steps = warmup + measure, warmup
    cfg.agent.min_replay = min(cfg.agent.min_replay, warmup // 2)
    # Epsilon at its final 0.01 by the measurement, as for 97% of a 40M-frame run: greedy actions (a forward
    # pass and a device-to-host copy) on nearly every step, not on the few a near-random policy takes.
    cfg.agent.epsilon_decay_steps = min(cfg.agent.epsilon_decay_steps, warmup - cfg.agent.min_replay)
    cfg.replay_capacity = min(cfg.replay_capacity, 4 * (warmup + measure))
    cfg.log_every, cfg.tensorboard, cfg.progress = 10**12, False, False
    cfg.device, cfg.replay_device = ("cuda", "auto") if overrides.pop("gpu", True) else ("cpu", "cpu")
    if setup != "dense":
        # In the window: masks update every update_freq gradient steps throughout. After: pruned at step 0.
        cfg.pruning.start_step, cfg.pruning.end_step = 0, (10**12 if setup in ("gmp95_window", "naive") else 0)
    if setup == "naive":
        cfg.cuda_graphs = "off"
    for key, value in overrides.items():
        target, _, name = key.rpartition(".")
        setattr(getattr(cfg, target) if target else cfg, name, value)
    return cfg


@contextlib.contextmanager
def kernel_backend(naive: bool):
    """PRUNERL_KERNELS for one run, as it was afterwards: the plain-PyTorch reference ops for the naive setup,
    the default (Triton on CUDA) for the others."""
    previous = os.environ.get("PRUNERL_KERNELS")
    os.environ["PRUNERL_KERNELS"] = "torch" if naive else "auto"
    try:
        yield
    finally:
        os.environ.pop("PRUNERL_KERNELS")
        if previous is not None:
            os.environ["PRUNERL_KERNELS"] = previous


def measure_frames_per_second(cfg, naive: bool = False) -> dict:
    """Train `cfg` in a temporary run directory; frames/s of the last iteration (after the warm-up)."""
    with kernel_backend(naive), tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")
        summary = trainer.run()
        backend = kernels.backend_for(trainer.device)
        rows = read_iterations(Path(tmp) / "run" / "iterations.csv")
    fps, measured_steps = measured_speed(rows)
    flops = summary.get("model_flops_per_frame")  # counted at the run's end (None, with a warning, if it failed)
    return {"frames_per_second": fps, "measured_agent_steps": measured_steps,
            "grad_steps": summary["grad_steps"], "total_sparsity": summary["total_sparsity"],
            "cuda_graphs": sorted(trainer.graphs.captured), "env_backend": trainer.env.backend,
            "kernels": backend, "loop_split": trainer.last_loop_split,
            "flops_per_frame": flops, "model_tflops": None if flops is None else fps * flops / 1e12}


def measured_speed(rows: list[dict]) -> tuple[float, int]:
    """(frames/s, agent steps) of every iteration after the first (the warm-up). Iterations are `warmup` agent
    steps long, so a measurement longer than the warm-up spans several; each one's frames/s excludes the
    checkpoint between them. (Only the last one was once taken: half the stated window at the proof's sizes.)"""
    ends = [0] + [int(r["frames"]) for r in rows]
    iterations = [(end - begin, float(r["fps"])) for begin, end, r in zip(ends, ends[1:], rows)]
    measured = iterations[1:] or iterations
    seconds = sum(frames / fps for frames, fps in measured)
    start = int(rows[0]["agent_steps"]) if len(rows) > 1 else 0
    return sum(frames for frames, _ in measured) / seconds, int(rows[-1]["agent_steps"]) - start


@pytest.mark.parametrize("arch,width,setup,precision", RUNS, ids=[f"{a}_w{w}-{s}-{p}" for a, w, s, p in RUNS])
def test_end_to_end(benchmark, run_info, arch, width, setup, precision):
    cfg = e2e_config(arch, width, setup, precision=precision, gpu=DEVICE == "cuda",
                     **(CPU_SIZES if DEVICE == "cpu" else {}))
    result = benchmark.pedantic(measure_frames_per_second, args=(cfg, setup == "naive"), rounds=1, iterations=1)
    info = {**run_info, "provider": setup, "case": f"dqn_{arch}_w{width}", "precision": precision,
            "channels_last": cfg.channels_last, "sparsity": cfg.pruning.final_sparsity, "num_envs": cfg.env.num_envs,
            "replay_ratio": cfg.replay_ratio, "warmup_agent_steps": cfg.iteration_steps, **result}
    benchmark.extra_info.update(info)
    if RESULTS_JSONL:
        with open(RESULTS_JSONL, "a") as f:
            f.write(json.dumps(info) + "\n")
