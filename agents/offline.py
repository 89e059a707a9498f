"""Offline training (the paper's Fig. 8): gradient updates on a fixed dataset, no env steps for training.

    python -m agents.train --preset cql_impala_w1_gmp95 --env.game Pong --offline.data dqn_replay/Pong/1/replay_logs

`OfflineTrainer` is the `Trainer` of `agents/train.py` with a fixed replay (`agents/offline_data.py`: the DQN
Replay Dataset's format, e.g. its 5% protocol) in place of env stepping; the networks, the learner step (CUDA
graphs, augmentation, pruning, masked Adam), the target copies, logging, checkpoints and the evaluation phase
are the Trainer's. Step accounting: every step is one gradient update, so `total_steps` / `iteration_steps` /
`agent.target_update_period` / `log_every` count updates (the paper: 200 iterations x 62,500 updates, the
pruning window at 20% / 80% of the 12.5M updates, a target copy every 2,000 (CQL) or 100 (CQL+C51) updates).
After each iteration the evaluation phase plays the greedy policy (epsilon 0.001) in the real env: the
iteration's score is `eval_score` (`score` is empty: no training episodes; the report's `--score eval`).
iterations.csv's `agent_steps` column holds the updates, `frames` is 0 (no env frames were trained on).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from agents.config import TrainConfig
from agents.envs import make_env, resolve_game
from agents.offline_data import DatasetError, FixedReplay, load_fixed_replay, resolve_data_dir
from agents.train import EVAL_SEED_OFFSET, Trainer, _fmt_score, _progress_bar, _write_json

DATASET_INFO = "prunerl_dataset.json"  # written next to an exported dataset: its game and action set


class OfflineTrainer(Trainer):
    def __init__(self, cfg: TrainConfig, run_dir: Path, checkpoint: dict | None = None, env=None, eval_env=None):
        """`env` is the evaluation env (tests pass a tiny MDP); no env is stepped for training."""
        if cfg.offline.data is None:
            raise ValueError("offline training needs the dataset: --offline.data DIR (a game's replay_logs folder "
                             "of the DQN Replay Dataset, or one written by python -m agents.export_dataset)")
        if cfg.eval_num_envs is not None:
            raise ValueError("offline runs evaluate in env.num_envs envs; leave out --eval-num-envs")
        if env is None:  # one set of envs, for the evaluation phase only
            env = make_env(cfg.env, seed=cfg.seed + EVAL_SEED_OFFSET)
        super().__init__(cfg, run_dir, checkpoint, env=env, eval_env=env)
        self.resumed_without_replay = False  # a resumed offline run samples the same dataset: nothing was lost
        self._record_dataset(resumed=checkpoint is not None)

    @property
    def frames(self) -> int:
        return 0

    @staticmethod
    def resumed_env_seed(cfg: TrainConfig, iteration: int) -> int:
        """An offline run's one env is its evaluation env: after a resume it is seeded as an online run's
        evaluation env is (apart from any training env), not with the training envs' formula."""
        return cfg.seed + EVAL_SEED_OFFSET + 7919 * iteration

    def _make_replay(self, device, obs_shape):
        cfg, off = self.cfg, self.cfg.offline
        _check_dataset_game(resolve_data_dir(off.data), cfg.env.game, self.num_actions)
        data = load_fixed_replay(off.data, off.checkpoints, off.fraction, off.chunk, cfg.seed, stack=obs_shape[0],
                                 n_step=cfg.agent.n_step, gamma=cfg.agent.gamma, frame_shape=tuple(obs_shape[1:]),
                                 cache_dir=off.cache_dir)
        if int(data.actions.max()) >= self.num_actions:
            raise DatasetError(f"{off.data} holds action {int(data.actions.max())}, but {cfg.env.game} has "
                               f"{self.num_actions} actions: is it this game's data?")
        print(f"offline data: {data.info['transitions']:,} transitions ({data.info['frames']:,} frames) from "
              f"checkpoints {data.info['checkpoints']} of {data.info['data_dir']}")
        return FixedReplay(data, device, seed=cfg.seed)

    def _record_dataset(self, resumed: bool) -> None:
        """config.json names the data the run learns from; a resumed run must find the same sample."""
        path = self.run_dir / "config.json"
        meta = json.loads(path.read_text())
        info = {k: v for k, v in self.replay.info.items() if k != "files"}
        saved = meta.get("offline_dataset")
        if resumed and saved is not None:
            same = ("checkpoints", "transitions", "frames", "transitions_per_checkpoint")
            if any(json.dumps(saved.get(k)) != json.dumps(info.get(k)) for k in same):
                raise DatasetError(f"{self.cfg.offline.data} does not hold the sample this run was trained on "
                                   f"({saved.get('transitions')} transitions from checkpoints "
                                   f"{saved.get('checkpoints')} of {saved.get('data_dir')})")
            return
        meta["offline_dataset"] = info
        _write_json(path, meta)

    def save(self) -> Path:
        """Checkpoint without the replay: the dataset is reloaded from disk on resume (nothing is lost)."""
        return self.checkpoints.save(self.agent_steps, self.state_dict(with_replay=False))

    def close(self) -> None:
        self.eval_env = None  # the same env as self.env, closed once
        super().close()

    def run(self) -> dict:
        cfg, prof = self.cfg, self.profiler
        log_next = (self.agent_steps // cfg.log_every + 1) * cfg.log_every
        iter_start_time, iter_start_updates = time.perf_counter(), self.agent_steps
        run_start, run_start_updates = time.perf_counter(), self.agent_steps
        self.launch_start_steps = run_start_updates  # a resumed run's profile counts this launch's updates only
        sums: dict[str, float] = {}
        count = 0
        bar = _progress_bar(cfg, self.agent_steps)
        deadline = run_start + 60 * cfg.max_minutes if cfg.max_minutes else math.inf
        try:
            while self.agent_steps < cfg.total_steps:
                info = self.learn()
                self.agent_steps += 1
                for k, v in info.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                if cfg.analysis_every and self.grad_steps % cfg.analysis_every == 0:
                    self._log_analysis()
                if self.agent_steps % cfg.agent.target_update_period == 0:  # Dopamine: after the update
                    with prof.section("target_sync"):
                        self.sync_target()
                if self.agent_steps >= log_next or self.agent_steps >= cfg.total_steps:  # (a last row at the end)
                    log_next = (self.agent_steps // cfg.log_every + 1) * cfg.log_every
                    ups = (self.agent_steps - run_start_updates) / max(time.perf_counter() - run_start, 1e-9)
                    with prof.section("logging"):
                        self._log({**self._learner_row(sums, count), "charts/updates_per_second": ups})
                    sums, count = {}, 0
                if self.agent_steps % cfg.iteration_steps == 0 or self.agent_steps >= cfg.total_steps:
                    ups = (self.agent_steps - iter_start_updates) / max(time.perf_counter() - iter_start_time, 1e-9)
                    with prof.section("evaluation"):
                        evaluation = self.evaluate()
                    with prof.section("checkpoint"):
                        sparsity = self._end_iteration(float("nan"), 0, 0.0, evaluation)
                    bar.set_postfix(iter=self.iteration, eval_score=_fmt_score(evaluation.score),
                                    updates_per_s=f"{ups:.0f}", sparsity=f"{sparsity:.3f}")
                    iter_start_time, iter_start_updates = time.perf_counter(), self.agent_steps
                bar.update(1)
                if self._out_of_time(deadline, "update"):
                    break
        finally:
            bar.close()
            self._flush()
        if cfg.profile:
            self._write_profile()
        return self._finish()


def _check_dataset_game(data_dir: Path, game: str, num_actions: int) -> None:
    """A dataset written by agents.export_dataset names its game and action count: they must be the run's."""
    path = data_dir / DATASET_INFO
    if not path.is_file():  # the DQN Replay Dataset names its game only in its path: $GAME/$RUN/replay_logs
        named = data_dir.parent.parent.name if data_dir.name == "replay_logs" else ""
        if _is_game(named) and not _same_game(named, game):
            raise DatasetError(f"{data_dir} is the DQN Replay Dataset's {named} data (its path says so), but the "
                               f"run plays {game}: use --env.game {named}, or that game's folder")
        return
    info = json.loads(path.read_text())
    if not _same_game(info["game"], game) or info["num_actions"] != num_actions:
        raise DatasetError(f"{data_dir} holds {info['game']} data ({info['num_actions']} actions), but the run plays "
                           f"{game} ({num_actions} actions): use --env.game {info['game']}")



def _is_game(name: str) -> bool:
    try:
        resolve_game(name)
        return True
    except ValueError:
        return False


def _same_game(a: str, b: str) -> bool:
    try:
        return resolve_game(a) == resolve_game(b)
    except ValueError:  # not an Atari game name
        return a == b
