"""Each new agent's paper preset runs the real CLI on Atari (CPU) through a compressed pruning schedule."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from agents.checkpoint import latest_checkpoint, load_checkpoint
from tests.test_cli import ROOT, read_csv

# 1,200 agent steps of Pong, 100 gradient steps at batch 8, pruned to 95% between gradient steps 0 and 80.
SHORT = (
    "--env.game Pong --env.num-envs 4 --total-steps 1200 --iteration-steps 600 --agent.min-replay 400 "
    "--replay-ratio 0.125 --agent.batch-size 8 --agent.target-update-period 400 --pruning.start-step 0 "
    "--pruning.end-step 80 --pruning.update-freq 20 --replay-capacity 8000 --log-every 300 --no-progress "
    "--device cpu"
).split()


def run_cli(args):
    # One thread: two per process thrash badly when several test processes share two cores (~20x slower).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "agents.train", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "agent,replay,extra_layer",
    [
        ("rainbow", "prioritized", "out.weight"),
        ("iqn", "uniform", "tau_embedding.weight"),
        ("miqn", "uniform", "tau_embedding.weight"),
    ],
)
def test_agent_preset_runs_on_atari(tmp_path, agent, replay, extra_layer):
    # IQN's head runs once per quantile sample: N = 16, N' = 24, K = 8 (the presets' 64, 64, 32 took most of the
    # run's time on a CPU core). N != N' on purpose.
    quantiles = "--agent.num-tau-samples 16 --agent.num-tau-prime-samples 24 --agent.num-quantile-samples 8".split()
    proc = run_cli(["--preset", f"{agent}_impala_w1_gmp95", *SHORT, *(quantiles if "iqn" in agent else []),
                    "--runs-dir", str(tmp_path), "--run-name", agent])
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    run = tmp_path / agent
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["agent"]["name"] == agent and config["agent"]["replay"] == replay
    assert config["agent"]["n_step"] == 3 and config["pruning"]["final_sparsity"] == 0.95
    assert [int(r["iteration"]) for r in read_csv(run / "iterations.csv")] == [1, 2]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [m for m in metrics if "charts/SPS" in m][-1]  # the last training row (iteration ends add others)
    assert last["sparsity/prunable"] == pytest.approx(0.95, abs=1e-3), "sparsity did not reach its target"
    assert last[f"sparsity/{extra_layer}"] > 0.5, f"{extra_layer} was not pruned"
    losses = [m["losses/td_loss"] for m in metrics if "losses/td_loss" in m]
    assert losses and all(math.isfinite(v) and v >= 0 for v in losses)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["grad_steps"] == 100
    ckpt = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    weights = [w for w in ckpt["online"].values() if w.dim() > 1]
    masks = [ckpt["pruner"][f"mask{i}"] for i in range(len(weights))]
    for w, m in zip(weights, masks, strict=True):  # the saved network is actually pruned
        assert torch.all(w[~m] == 0)
