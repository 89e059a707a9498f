"""Write a run's saved replay as a DQN Replay Dataset checkpoint, for offline training on data the project made.

    python -m agents.export_dataset runs/<run>                  # -> runs/<run>/dataset/
    python -m agents.export_dataset runs/<run> --out data/Breakout/1/replay_logs --suffix 0
    python -m agents.train --preset cql_impala_w1_dense --env.game Breakout --offline.data runs/<run>/dataset

The replay comes from the run's newest readable checkpoint (runs save it there unless --no-save-replay).
The output is one checkpoint in Dopamine's on-disk format (`agents/offline_data.py`), written as Dopamine's
replay buffer would have stored the same experience: per env, every complete episode in time order, each after
stack - 1 all-zero padding steps, with its actions, rewards and terminal flags; the envs one after another. The
buffer is full with its cursor at 0. Left out: the steps before each env's first episode start still in the
replay (their stacks are gone) and each env's unfinished last episode. As in the published dataset, an episode
cut by the step cap ends without a terminal (Dopamine's old format has no episode-end marker): Dopamine's
sampler, and so the loader, bootstraps its last steps from the next episode's padding and also accepts the
padding steps themselves (action 0) as transitions; on Atari the cap (27,000 steps) is rarely hit. Rewards are
the raw game rewards (the published data holds clipped ones; the learner clips either way).
`prunerl_dataset.json` names the game, action count and each checkpoint's source run and agent step, so an
offline run on another game is refused, and so is a second export of one run's checkpoint into the folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from agents.checkpoint import CheckpointError, atomic_write_bytes, load_latest_checkpoint
from agents.offline import DATASET_INFO, _same_game
from agents.offline_data import write_checkpoint
from agents.replay import ReplayBuffer
from agents.train import make_replay, read_run_config

ROWS_PER_BLOCK = 4096  # frames gathered and compressed at a time


def dopamine_order(replay: ReplayBuffer) -> tuple[np.ndarray, np.ndarray]:
    """(slot, env) of each step of the Dopamine-format sequence, slot -1 for a padding step: every complete
    episode of every env, in time order, each after stack - 1 padding steps."""
    t_end, T = replay.t, replay.T
    t_start = max(0, t_end - T)
    executed, first = replay.executed.cpu().numpy(), replay.first.cpu().numpy()
    terminal = replay.terminal.cpu().numpy()
    slots, envs = [], []
    pad = np.full(replay.stack - 1, -1)
    steps = np.arange(t_start, t_end)
    for e in range(replay.num_envs):
        ex, fi, te = executed[steps % T, e], first[steps % T, e], terminal[steps % T, e]
        # An episode runs over executed steps until a terminal, or until an auto-reset step follows (a
        # truncation). The newest step's successor is unknown: an episode ending there only by a terminal.
        next_is_reset = np.append(~ex[1:], False)
        ends = np.flatnonzero(te | next_is_reset)
        for s in np.flatnonzero(fi & ex):
            k = np.searchsorted(ends, s)
            if k < ends.size:
                episode = steps[s:ends[k] + 1] % T
                slots += [pad, episode]
                envs.append(np.full(pad.size + episode.size, e))
    if not slots:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(slots).astype(np.int64), np.concatenate(envs).astype(np.int64)


def export_replay(replay: ReplayBuffer, out_dir: Path, suffix: int = 0) -> int:
    """Write `replay` as checkpoint `suffix` of a DQN Replay folder; returns the number of steps written."""
    slot, env = dopamine_order(replay)
    if slot.size == 0:
        raise ValueError("the replay holds no complete episode to export")
    real = slot >= 0
    s, e = np.where(real, slot, 0), env

    def pick(tensor: torch.Tensor, dtype) -> np.ndarray:
        return np.where(real, tensor.cpu().numpy()[s, e], 0).astype(dtype)

    frames = replay.frames.cpu()
    h, w = frames.shape[2:]

    def blocks():
        for i in range(0, slot.size, ROWS_PER_BLOCK):
            j = slice(i, i + ROWS_PER_BLOCK)
            block = frames[torch.from_numpy(s[j]), torch.from_numpy(e[j])].numpy()
            block[~real[j]] = 0
            yield block

    write_checkpoint(out_dir, suffix, blocks(), pick(replay.actions, np.int32), pick(replay.rewards, np.float32),
                     pick(replay.terminal, np.uint8), frame_shape=(h, w), stack=replay.stack,
                     update_horizon=replay.n_step)
    return int(slot.size)


def load_run_replay(run_dir: Path) -> tuple[ReplayBuffer, dict, int]:
    """The replay saved in a run's newest checkpoint, on the CPU, the run's config.json and the checkpoint's
    agent step."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir, purpose="export")
    try:
        state = load_latest_checkpoint(run_dir / "checkpoints", config=cfg.to_dict())
    except CheckpointError as e:
        raise CheckpointError(f"cannot export {run_dir}: {e}") from e
    if state.get("replay") is None:
        raise CheckpointError(f"the checkpoint of {run_dir} holds no replay: the run was trained with "
                              "--no-save-replay")
    frame_shape = _frame_shape(state["replay"])
    replay = make_replay(cfg, torch.device("cpu"), int(state["replay"]["num_envs"]), (4, *frame_shape))
    replay.load_state_dict(state["replay"])
    return replay, json.loads((run_dir / "config.json").read_text()), int(state["agent_steps"])


def _frame_shape(replay_state: dict) -> tuple[int, int]:
    frames = replay_state["chunks"][0]["frames"] if "chunks" in replay_state else replay_state["frames"]
    return tuple(frames.shape[2:])


def _check_folder(out: Path, game: str, num_actions: int | None, source: dict, suffix: int) -> dict:
    """The checkpoints already exported to `out` (suffix -> source), checked against this export. A folder holds
    one game's data: an export of another game there would relabel it all, and an offline run of that game would
    train on both games' checkpoints. And one checkpoint of a run is exported once: the same replay under a second
    suffix would be sampled twice as often as the folder's other checkpoints."""
    path = out / DATASET_INFO
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
        theirs = (info["game"], info["num_actions"])
        sources = dict(info.get("sources", {}))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} cannot be read ({e}); export into another --out") from e
    if not _same_game(theirs[0], game) or theirs[1] != num_actions:
        raise ValueError(f"{out} holds {theirs[0]} data ({theirs[1]} actions; {path}), not {game}'s "
                         f"({num_actions} actions): export into another --out")
    for other, theirs_source in sources.items():
        if theirs_source == source and other != str(suffix):
            raise ValueError(f"{out} holds this replay already, as checkpoint {other} ({source['run']} at agent step "
                             f"{source['agent_steps']:,}): a second copy would double its weight in the dataset")
    return sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.export_dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run directory whose checkpoints hold the replay")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR/dataset)")
    parser.add_argument("--suffix", type=int, default=0, help="checkpoint number N of the files written (default 0)")
    args = parser.parse_args(argv)
    if args.suffix < 0:  # $store$_observation_ckpt.-1.gz: no dataset reader would see the files
        parser.error(f"--suffix must be >= 0, got {args.suffix}")
    out = args.out or args.run_dir / "dataset"
    try:
        replay, meta, agent_steps = load_run_replay(args.run_dir)
        source = {"run": str(Path(args.run_dir).resolve()), "agent_steps": agent_steps}
        sources = _check_folder(out, meta["config"]["env"]["game"], meta.get("num_actions"), source, args.suffix)
        steps = export_replay(replay, out, args.suffix)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sources[str(args.suffix)] = source
    info = {"game": meta["config"]["env"]["game"], "num_actions": meta.get("num_actions"),
            "sources": dict(sorted(sources.items(), key=lambda kv: int(kv[0]))),  # checkpoint -> run, agent step
            "git_sha": meta.get("git_sha"), "rewards": "raw (unclipped)"}
    atomic_write_bytes(out / DATASET_INFO, lambda f: f.write((json.dumps(info, indent=2) + "\n").encode()))
    print(f"wrote {steps:,} steps (checkpoint {args.suffix}) of {info['game']} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
