"""Logs across stops and resumes: every logged episode counts in its iteration's score, and TensorBoard holds
exactly the points of the CSV / JSON-lines logs after any number of resumes."""

import csv
import json
import math
import time

import numpy as np
import pytest

import agents.train as train_module
from agents.checkpoint import CheckpointStore, latest_checkpoint, load_checkpoint, load_latest_checkpoint
from agents.train import Trainer
from tests.agents.chain_env import ChainEnv
from tests.agents.test_learning import chain_config, fast_dqn


def config(tensorboard=False):
    cfg = chain_config(fast_dqn(min_replay=200, batch_size=8), sparsity=0.0, total_steps=900)
    cfg.iteration_steps, cfg.log_every, cfg.tensorboard, cfg.max_minutes = 300, 50, tensorboard, 600
    return cfg


class ClockJumpingAt:
    """agents.train's `time`, with perf_counter jumping past any --max-minutes deadline from agent step `at`."""

    def __init__(self, trainer_box: list, at: int):
        self.box, self.at = trainer_box, at

    def perf_counter(self):
        trainer = self.box[0] if self.box else None
        jumped = trainer is not None and trainer.agent_steps >= self.at
        return time.perf_counter() + (1e9 if jumped else 0.0)

    def __getattr__(self, name):
        return getattr(time, name)


def stop_at(monkeypatch, cfg, run_dir, at, checkpoint=None):
    """Run until the first --max-minutes check at or after agent step `at` (a stop with a checkpoint)."""
    box = []
    with monkeypatch.context() as m:
        m.setattr(train_module, "time", ClockJumpingAt(box, at))
        trainer = Trainer(cfg, run_dir, checkpoint=checkpoint, env=ChainEnv(num_envs=2))
        box.append(trainer)
        summary = trainer.run()
    assert summary["finished"] is False and at <= summary["agent_steps"] < at + 2
    return summary


def resume(cfg, run_dir):
    return Trainer(cfg, run_dir, checkpoint=load_latest_checkpoint(run_dir / "checkpoints", cfg.to_dict()),
                   env=ChainEnv(num_envs=2))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_an_iteration_interrupted_by_max_minutes_scores_every_episode_logged_in_it(tmp_path, monkeypatch):
    cfg, run = config(), tmp_path / "run"
    stop_at(monkeypatch, cfg, run, 450)  # in the middle of iteration 2
    before_stop = [e for e in read_csv(run / "episodes.csv") if 300 < int(e["agent_steps"])]
    assert before_stop, "no episode ended in iteration 2 before the stop"
    assert resume(cfg, run).run()["finished"]

    iterations, episodes = read_csv(run / "iterations.csv"), read_csv(run / "episodes.csv")
    assert [int(r["iteration"]) for r in iterations] == [1, 2, 3]
    previous = 0
    for row in iterations:
        returns = [float(e["return"]) for e in episodes if previous < int(e["agent_steps"]) <= int(row["agent_steps"])]
        assert int(row["episodes"]) == len(returns), row
        assert float(row["score"]) == pytest.approx(np.mean(returns)), row
        previous = int(row["agent_steps"])
    assert sum(int(r["episodes"]) for r in iterations) == len(episodes)


def test_a_checkpoint_is_written_after_the_logs_it_covers(tmp_path, monkeypatch):
    """A --max-minutes stop checkpointed before flushing the episodes of its last steps: killed right after (or
    out of disk when flushing), the resumed iteration's score counted episodes that episodes.csv never got."""
    cfg, run = config(), tmp_path / "run"
    on_disk = {}
    save = CheckpointStore.save

    def recording_save(store, agent_steps, state, replay=None):
        on_disk[agent_steps] = (read_csv(run / "episodes.csv"), list(state["iteration_returns"]))
        return save(store, agent_steps, state, replay)

    monkeypatch.setattr(CheckpointStore, "save", recording_save)
    stop_at(monkeypatch, cfg, run, 489)  # (metrics rows, every 50 steps, flush the logs)
    for steps, (episodes, returns) in on_disk.items():
        logged = [float(e["return"]) for e in episodes if int(e["agent_steps"]) > steps // 300 * 300]
        assert logged == returns, steps


def test_a_run_resumed_from_an_iteration_end_scores_only_the_episodes_after_it(tmp_path):
    """A kill right after an iteration's checkpoint: the next iteration's score must not count the finished
    iteration's episodes again (its checkpoint once held them)."""
    cfg, run = config(), tmp_path / "run"
    cfg.keep_checkpoints = 3
    assert Trainer(cfg, run, env=ChainEnv(num_envs=2)).run()["finished"]
    for ckpt in sorted((run / "checkpoints").glob("ckpt_*.pt")):
        assert load_checkpoint(ckpt)["iteration_returns"] == [], ckpt.name
    first = read_csv(run / "iterations.csv")
    latest_checkpoint(run / "checkpoints").unlink()  # as if killed before the last checkpoint
    (run / "summary.json").unlink()
    assert resume(cfg, run).run()["finished"]

    iterations, episodes = read_csv(run / "iterations.csv"), read_csv(run / "episodes.csv")
    assert [int(r["iteration"]) for r in iterations] == [1, 2, 3] and iterations[:2] == first[:2]
    start = int(iterations[1]["agent_steps"])
    returns = [float(e["return"]) for e in episodes if int(e["agent_steps"]) > start]
    assert returns and int(iterations[2]["episodes"]) == len(returns)
    assert float(iterations[2]["score"]) == pytest.approx(np.mean(returns))


def _tensorboard_scalars(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _same(points, expected):
    assert [s for s, _ in points] == [s for s, _ in expected]
    for (_, a), (_, b) in zip(points, expected):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6)


def test_tensorboard_agrees_with_the_csv_logs_after_kills_and_stops(tmp_path, monkeypatch):
    cfg, run = config(tensorboard=True), tmp_path / "run"
    log_training = Trainer._log_training

    def log_then_die(trainer, *args):  # killed after logging points past its last checkpoint (at 300)
        log_training(trainer, *args)
        if trainer.agent_steps >= 500:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Trainer, "_log_training", log_then_die)
        killed = Trainer(cfg, run, env=ChainEnv(num_envs=2))
        with pytest.raises(KeyboardInterrupt):
            killed.run()
        killed.close()
    # Resumed at 300 (where iteration 1's score and a metrics row were logged), stopped at 700, resumed again.
    stop_at(monkeypatch, cfg, run, 700, checkpoint=load_latest_checkpoint(run / "checkpoints", cfg.to_dict()))
    resumed = resume(cfg, run)
    assert resumed.run()["finished"] and resumed.resumes == 2

    scalars = _tensorboard_scalars(run / "tb")
    iterations = read_csv(run / "iterations.csv")
    _same(scalars["charts/iteration_score"], [(int(r["agent_steps"]), float(r["score"])) for r in iterations])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first_checkpoint = int(iterations[0]["agent_steps"])
    assert any(r["agent_steps"] == first_checkpoint for r in rows), "no point at the first checkpoint's step"
    for tag in ("charts/epsilon", "charts/SPS", "losses/td_loss"):
        _same(scalars[tag], [(r["agent_steps"], r[tag]) for r in rows if tag in r])


def test_a_log_line_cut_short_by_a_kill_or_a_full_disk_is_dropped_on_resume(tmp_path, monkeypatch):
    """The process died (or hit ENOSPC) in the middle of a log row: the resume drops the cut row rather than
    failing on it (metrics.jsonl) or keeping it as a row of empty fields (the CSVs: the report then skips the run)."""
    cfg, run = config(), tmp_path / "run"
    stop_at(monkeypatch, cfg, run, 450)
    for name, cut in (("metrics.jsonl", '{"agent_steps": 4'), ("iterations.csv", "2,3"), ("episodes.csv", "4")):
        with open(run / name, "a") as f:
            f.write(cut)
    assert resume(cfg, run).run()["finished"]

    iterations, episodes = read_csv(run / "iterations.csv"), read_csv(run / "episodes.csv")
    assert [int(r["iteration"]) for r in iterations] == [1, 2, 3]
    assert all(all(v not in ("", None) for k, v in e.items()) for e in episodes), "a cut row was kept"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["agent_steps"] for r in rows] == sorted(r["agent_steps"] for r in rows)
    assert all(int(r["agent_steps"]) > 4 for r in episodes)


def test_a_malformed_log_row_is_an_error_naming_the_file(tmp_path, monkeypatch):
    cfg, run = config(), tmp_path / "run"
    stop_at(monkeypatch, cfg, run, 450)
    with open(run / "metrics.jsonl", "a") as f:
        f.write("not json\n")
    with pytest.raises(ValueError, match="metrics.jsonl holds a malformed row"):
        resume(cfg, run)


def test_a_full_disk_while_flushing_the_logs_names_the_log(tmp_path):
    import errno

    trainer = Trainer(config(), tmp_path / "run", env=ChainEnv(num_envs=2))
    real = trainer.metrics_file

    class FullDisk:
        name = real.name

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    trainer.metrics_file = FullDisk()
    with pytest.raises(OSError, match="No space left on device: .*metrics.jsonl") as caught:
        trainer._flush()
    assert caught.value.errno == errno.ENOSPC
    trainer.metrics_file = real
    trainer.close()
