"""A real learning check: DQN-Impala x1 on Pong for a fixed wall-clock budget (issue 6: about 8 minutes on a GPU).

    python bench/pong_check.py                          # 8 minutes, GMP-95, on the GPU if there is one
    python bench/pong_check.py --minutes 8 --preset dqn_impala_w1_dense

Trains with the preset's hyperparameters for at most `--total-steps` agent steps (the GMP schedule and the
epsilon decay are laid out over those) and stops at the time budget. Writes, next to each other under
bench/results/: pong_check_<device>_<sha>.json (every episode's frames and raw return, the frames reached,
frames/s, the final return as the mean of the last 10 episodes, device, versions, SHA, date) and a PNG of
the learning curve. Pong's random score is -21, its maximum +21.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import sys
import textwrap
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

RANDOM_SCORE = -20.7  # DQN Zoo's random score for Pong


def read_episodes(run_dir: Path) -> list[dict]:
    with open(run_dir / "episodes.csv", newline="") as f:
        return [{"frames": int(r["frames"]), "return": float(r["return"])} for r in csv.DictReader(f)]


def final_return(episodes: list[dict], last: int = 10) -> float | None:
    tail = [e["return"] for e in episodes[-last:]]
    return sum(tail) / len(tail) if tail else None


def plot(episodes: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    frames = [e["frames"] / 1e6 for e in episodes]
    returns = [e["return"] for e in episodes]
    ax.scatter(frames, returns, s=6, alpha=0.35, label="episode return")
    window = 10
    if len(returns) >= window:
        smooth = [sum(returns[i - window + 1:i + 1]) / window for i in range(window - 1, len(returns))]
        ax.plot(frames[window - 1:], smooth, color="C1", label=f"mean of last {window}")
    ax.axhline(RANDOM_SCORE, color="grey", linestyle=":", label="random")
    ax.set(xlabel="frames (millions)", ylabel="return", ylim=(-21.5, 21.5))
    ax.set_title(textwrap.fill(title, 60), fontsize=9)  # preset, game, frames, time and GPU: two lines
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python bench/pong_check.py")
    parser.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget (default 8)")
    parser.add_argument("--preset", default="dqn_impala_w1_gmp95", help="training preset (default dqn_impala_w1_gmp95)")
    parser.add_argument("--total-steps", type=int, default=2_500_000,
                        help="agent steps the schedules are laid out over (default 2.5M = 10M frames)")
    parser.add_argument("--min-replay", type=int, default=None, help="override the preset's warm-up steps")
    parser.add_argument("--replay-capacity", type=int, default=None,
                        help="override the preset's replay capacity (1M transitions = 7.1 GB)")
    parser.add_argument("--out-dir", type=Path, default=_ROOT / "bench" / "results")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    args = parser.parse_args(argv)

    import torch

    from agents.config import TrainConfig, get_preset
    from agents.train import Trainer, git_sha

    try:
        cfg = get_preset(args.preset)
        cfg.env.game, cfg.total_steps, cfg.max_minutes = "Pong", args.total_steps, args.minutes
        cfg.iteration_steps, cfg.tensorboard = 50_000, False
        if args.min_replay is not None:
            cfg.agent.min_replay = args.min_replay
        if args.replay_capacity is not None:
            cfg.replay_capacity = args.replay_capacity
        cfg = TrainConfig.from_dict(cfg.to_dict())  # agents.train's checks, on the fields set above
    except ValueError as e:  # an unknown preset, a budget of 0 minutes, ...: one line, exit 2
        parser.error(str(e))
    sha = git_sha() or "unknown"
    cfg.run_name = f"pong_check__{args.preset}__{sha[:8]}__{datetime.datetime.now():%Y%m%d-%H%M%S}"
    trainer = Trainer(cfg, args.runs_dir / cfg.run_name)
    start = time.perf_counter()
    summary = trainer.run()
    wall = time.perf_counter() - start
    episodes = read_episodes(args.runs_dir / cfg.run_name)

    device = torch.cuda.get_device_name() if trainer.device.type == "cuda" else "cpu"
    result = {"preset": args.preset, "game": "Pong", "minutes_budget": args.minutes, "wall_s": round(wall, 1),
              "frames": summary["frames"], "frames_per_second": round(summary["frames"] / wall, 1),
              "grad_steps": summary["grad_steps"], "total_sparsity": summary["total_sparsity"],
              # What the run pruned against what its schedule asked for by then (agents.train's verdict).
              **{k: summary.get(k) for k in ("sparsity/prunable", "target_sparsity", "scheduled_sparsity",
                                             "below_target_sparsity")},
              "final_return_last10": final_return(episodes), "episodes": episodes, "config": cfg.to_dict(),
              "device": device, "torch": torch.__version__, "git_sha": sha,
              "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"pong_check_{device.replace(' ', '-')}_{sha[:8]}"
    (args.out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(episodes, f"{args.preset} on Pong, {summary['frames'] / 1e6:.1f}M frames in {wall / 60:.1f} min ({device})",
         args.out_dir / f"{stem}.png")
    fr = result["final_return_last10"]
    print(f"Pong: {summary['frames']:,} frames in {wall / 60:.1f} min ({result['frames_per_second']:,.0f} frames/s), "
          f"{len(episodes)} episodes, mean return of the last 10: {'n/a' if fr is None else f'{fr:.1f}'} "
          f"-> {args.out_dir / stem}.json/.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
