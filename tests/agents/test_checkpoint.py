"""Exact resumption on the chain MDP: a resume restores the state its checkpoint was written from (replay
included, written incrementally), a resumed run keeps its schedule, and damaged checkpoints, killed writes and
a full disk lose nothing that a kept checkpoint holds."""

import copy
import errno
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import agents.checkpoint as checkpoint_module
from agents.checkpoint import (
    CheckpointError,
    checkpoint_step,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
)
from agents.train import Trainer
from tests.agents.chain_env import ChainEnv
from tests.agents.test_learning import chain_config, fast_dqn

NUM_ENVS = 2


def config(replay="uniform", capacity=600, total_steps=800, sparsity=0.9, save_replay=True):
    """Checkpoints at agent steps 300, 600 and 800; about 150 gradient steps, pruned to 90% by step 120."""
    agent = fast_dqn(min_replay=200, batch_size=16) if replay == "uniform" else \
        fast_dqn(name="rainbow", n_step=3, replay="prioritized", min_replay=200, batch_size=16)
    cfg = chain_config(agent, sparsity=sparsity, total_steps=total_steps)
    cfg.iteration_steps, cfg.replay_capacity, cfg.save_replay = 300, capacity, save_replay
    cfg.pruning.start_step, cfg.pruning.end_step, cfg.pruning.update_freq = 0, 120, 20
    return cfg


class Recorder:
    """Trainer.save that also keeps a deep copy of the whole state (replay included) of every checkpoint."""

    def __init__(self, monkeypatch):
        self.states = {}
        save = Trainer.save

        def recording_save(trainer):
            path = save(trainer)
            self.states[path.name] = copy.deepcopy(trainer.state_dict(with_replay=True))
            return path

        monkeypatch.setattr(Trainer, "save", recording_save)


def resume(cfg, run_dir):
    return Trainer(cfg, run_dir, checkpoint=load_latest_checkpoint(run_dir / "checkpoints", cfg.to_dict()),
                   env=ChainEnv(num_envs=NUM_ENVS))


def assert_same(a, b, where="state"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            if k not in ("resumes", "resumed_without_replay"):  # what a resume adds
                assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu()), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    else:
        assert a == b, where


def test_replay_state_is_the_rows_since_a_step_in_wrap_free_chunks():
    from agents.replay import ReplayBuffer

    buf = ReplayBuffer(24, 2, frame_shape=(3, 3), n_step=1)  # T = 12 slots per env
    rng = np.random.default_rng(0)
    for _ in range(29):
        buf.add(rng.integers(0, 255, (2, 3, 3), dtype=np.uint8), rng.integers(0, 4, 2), rng.random(2),
                rng.random(2) < 0.2, rng.random(2) < 0.2, rng.random(2) < 0.9)
    state = buf.state_dict(since=10)  # steps 10..16 are overwritten: [17, 24) then [24, 29) after the wrap
    assert [(c["start"], c["end"]) for c in state["chunks"]] == [(17, 24), (24, 29)]
    assert buf.chunk_ranges(since=10, max_bytes=3 * 2 * 9) == [(17, 20), (20, 23), (23, 24), (24, 27), (27, 29)]
    whole = buf.state_dict()
    assert [(c["start"], c["end"]) for c in whole["chunks"]] == [(17, 24), (24, 29)]
    other = ReplayBuffer(24, 2, frame_shape=(3, 3), n_step=1)
    other.load_state_dict({**whole, "chunks": whole["chunks"][::-1]})
    assert_same(other.state_dict(), whole)
    with pytest.raises(ValueError, match="chunks hold vector steps up to 24"):
        other.load_state_dict({**whole, "chunks": whole["chunks"][:1]})


@pytest.mark.parametrize("replay", ["uniform", "prioritized"])
@pytest.mark.parametrize("capacity", [600, 160])  # wraps once in the run; wraps within every iteration
def test_resume_restores_the_state_of_its_checkpoint(tmp_path, monkeypatch, replay, capacity):
    recorder = Recorder(monkeypatch)
    cfg = config(replay, capacity)
    trainer = Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=NUM_ENVS))
    trainer.run()
    assert trainer.replay.t > trainer.replay.T, "the replay never wrapped around"
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in ckpts] == sorted(recorder.states)[-2:]  # 3 written, the last 2 kept

    # Each checkpoint wrote only the replay rows added since the previous one, and the chunks on disk are
    # exactly those the kept checkpoints need.
    saved = [load_checkpoint(p)["replay"] for p in ckpts]
    needed = set()
    for previous, current in zip(saved, saved[1:]):
        first_new = max(previous["t"], current["t"] - current["T"])
        new = [n for n in current["chunk_names"] if n not in previous["chunk_names"]]
        assert sorted((c["start"], c["end"]) for c in current["chunks"] if c["start"] >= first_new) == \
            sorted(tuple(int(x) for x in n[len("replay_"):-len(".pt")].split("_")) for n in new)
        assert min(int(n.split("_")[1]) for n in new) == first_new
    for state in saved:
        needed |= set(state["chunk_names"])
    on_disk = {p.name for p in (tmp_path / "run" / "checkpoints").glob("replay_*.pt")}
    assert on_disk == needed

    resumed = resume(cfg, tmp_path / "run")
    assert_same(resumed.state_dict(with_replay=True), recorder.states[ckpts[-1].name])
    # The restored RNG streams and replay sample what the original would have sampled next.
    assert_same(resumed.replay.sample(32).__dict__, trainer.replay.sample(32).__dict__)
    assert resumed.resumes == 1 and not resumed.resumed_without_replay
    resumed.close()


def _interrupt_after(monkeypatch, iterations):
    end_iteration = Trainer._end_iteration

    def end_then_die(trainer, *args):
        result = end_iteration(trainer, *args)
        if trainer.iteration == iterations:
            raise KeyboardInterrupt  # killed right after this iteration's checkpoint
        return result

    monkeypatch.setattr(Trainer, "_end_iteration", end_then_die)


def killed_after(monkeypatch, cfg, run_dir, iterations) -> Trainer:
    """A run killed right after its checkpoint at the end of `iterations` (closed)."""
    with monkeypatch.context() as m:
        _interrupt_after(m, iterations)
        killed = Trainer(cfg, run_dir, env=ChainEnv(num_envs=NUM_ENVS))
        with pytest.raises(KeyboardInterrupt):
            killed.run()
        killed.close()
    return killed


@pytest.mark.parametrize("save_replay", [True, False])
def test_a_resumed_run_keeps_its_schedule(tmp_path, monkeypatch, save_replay):
    cfg = config(save_replay=save_replay)
    whole = Trainer(cfg, tmp_path / "whole", env=ChainEnv(num_envs=NUM_ENVS))
    whole_summary = whole.run()

    killed_after(monkeypatch, cfg, tmp_path / "killed", 2)
    resumed = resume(cfg, tmp_path / "killed")
    summary = resumed.run()
    assert summary["resumed"] == 1 and summary["resumed_without_replay"] is (not save_replay)
    kept = [int(m.sum()) for m in resumed.pruner.masks]
    if save_replay:  # envs restart, so auto-reset steps (not counted) can shift the last update by one
        assert abs(resumed.grad_steps - whole.grad_steps) <= 1, (resumed.grad_steps, whole.grad_steps)
        assert kept == [int(m.sum()) for m in whole.pruner.masks]
        assert whole_summary["sparsity/prunable"] > 0.89  # the schedule ended within the run
        assert summary["below_target_sparsity"] is False
    else:  # without the replay, min_replay steps are collected again without learning, and pruning falls short
        assert resumed.grad_steps < whole.grad_steps - 40
        assert summary["sparsity/prunable"] < whole_summary["sparsity/prunable"] - 0.002
        assert summary["below_target_sparsity"] is True


def test_a_kill_during_a_checkpoint_write_resumes_from_the_previous_one(tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    cfg = config()
    save = checkpoint_module._save

    def killed_while_writing_the_third_checkpoint(path, obj):
        if path.name.startswith("ckpt_") and len(recorder.states) == 2:
            (path.parent / f".{path.name}.tmp-4242").write_bytes(b"half a checkpoint")
            raise KeyboardInterrupt
        save(path, obj)

    monkeypatch.setattr(checkpoint_module, "_save", killed_while_writing_the_third_checkpoint)
    trainer = Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=NUM_ENVS))
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    trainer.close()
    ckpt_dir = tmp_path / "run" / "checkpoints"
    chunks_before = {p.name for p in ckpt_dir.glob("replay_*.pt")}
    last = list_checkpoints(ckpt_dir)[-1]
    orphans = chunks_before - set(load_checkpoint(last)["replay"]["chunk_names"])
    assert orphans, "the killed write did not leave its new replay chunk"
    (tmp_path / "run" / ".config.json.tmp-4243").write_bytes(b"{")  # named as before 2026-11
    (tmp_path / "run" / ".summary.json.tmp-4243-0a1b2c3d").write_bytes(b"{")

    resumed = resume(cfg, tmp_path / "run")
    assert_same(resumed.state_dict(with_replay=True), recorder.states[last.name])
    left = {p.name for p in (tmp_path / "run").rglob(".*.tmp-*")}
    assert not left, left
    assert not orphans & {p.name for p in ckpt_dir.glob("replay_*.pt")}
    resumed.close()


def test_two_writers_of_one_file_with_one_pid_use_two_temporary_files(tmp_path, monkeypatch):
    """Processes on two nodes can share a pid and write one shared file (a Slurm array's sweep.json): with one
    temporary name, one's rename took the other's half-written file, and the other's rename failed."""
    names = []
    monkeypatch.setattr(checkpoint_module.os, "replace", lambda src, dst: names.append(src))
    for _ in range(2):
        checkpoint_module.atomic_write_bytes(tmp_path / "sweep.json", lambda f: f.write(b"{}"))
    assert len(set(names)) == 2 and all(checkpoint_module._TEMPORARY.match(n.name) for n in names)


@pytest.mark.parametrize("damage", ["checkpoint", "replay chunk"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, monkeypatch, damage):
    recorder = Recorder(monkeypatch)
    cfg = config()
    Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=NUM_ENVS)).run()
    ckpt_dir = tmp_path / "run" / "checkpoints"
    older, newest = list_checkpoints(ckpt_dir)
    if damage == "checkpoint":
        bad = newest
    else:  # the chunk only the newest checkpoint needs
        bad = ckpt_dir / sorted(load_checkpoint(newest)["replay"]["chunk_names"])[-1]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # truncated

    with pytest.warns(UserWarning, match=f"{bad.name}.*corrupt.*resuming from the older {older.name} instead "
                                         rf"\(set aside as {newest.name}.unreadable\)"):
        resumed = Trainer.resume(tmp_path / "run", cfg, env=ChainEnv(num_envs=NUM_ENVS))  # as agents.train does
    assert_same(resumed.state_dict(with_replay=True), recorder.states[older.name])
    # The unreadable checkpoint is no longer one: kept, it counted among the newest two, so the next checkpoint
    # deleted the one resumed from and left a single readable checkpoint.
    assert list_checkpoints(ckpt_dir) == [older] and (ckpt_dir / f"{newest.name}.unreadable").exists()
    resumed.agent_steps += 1  # a checkpoint of its own, before it writes newest's name again
    resumed.save()
    assert [load_checkpoint(p)["agent_steps"] for p in list_checkpoints(ckpt_dir)] == [
        checkpoint_step(older), checkpoint_step(older) + 1]
    resumed.agent_steps -= 1
    resumed.run()  # and it carries on to the end, writing consistent checkpoints
    state = load_checkpoint(list_checkpoints(ckpt_dir)[-1])
    assert state["agent_steps"] >= cfg.total_steps and state["replay"]["t"] == resumed.replay.t

    for path in list_checkpoints(ckpt_dir):
        path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        resume(cfg, tmp_path / "run")


def test_a_full_disk_during_a_checkpoint_is_a_clear_error_and_keeps_the_previous_one(tmp_path, monkeypatch):
    cfg = config(total_steps=300)
    trainer = Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=NUM_ENVS))
    trainer.run()
    ckpt_dir = tmp_path / "run" / "checkpoints"
    previous = list_checkpoints(ckpt_dir)[-1]
    before = {p.name: p.read_bytes() for p in ckpt_dir.iterdir()}

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.os, "fsync", disk_full)
    trainer.agent_steps += 10  # a later checkpoint
    with pytest.raises(CheckpointError) as error:
        trainer.save()
    message = str(error.value)
    assert "ENOSPC" in message and "No space left on device" in message and str(ckpt_dir) in message
    assert f"previous checkpoint {previous} is kept" in message
    assert {p.name: p.read_bytes() for p in ckpt_dir.iterdir()} == before  # no temporary file, nothing lost
    monkeypatch.undo()
    assert load_latest_checkpoint(ckpt_dir)["agent_steps"] == trainer.agent_steps - 10


class FillsUp:
    """A file on a disk that fills up after `room` bytes: write raises ENOSPC, as a real full disk does."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_a_disk_filling_up_inside_torch_save_is_the_same_clear_error(tmp_path, monkeypatch):
    """torch.save turns the OSError of a failed write into a RuntimeError ('unexpected pos'): the error must still
    be the CheckpointError naming ENOSPC and the file, not a traceback."""
    cfg = config(total_steps=300)
    trainer = Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=NUM_ENVS))
    trainer.run()
    ckpt_dir = tmp_path / "run" / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpt_dir.iterdir()}
    monkeypatch.setattr(checkpoint_module, "open", lambda path, mode: FillsUp(open(path, mode), 10_000),
                        raising=False)
    trainer.agent_steps += 10
    with pytest.raises(CheckpointError, match="ENOSPC: No space left on device"):
        trainer.save()
    assert {p.name: p.read_bytes() for p in ckpt_dir.iterdir()} == before


def test_an_io_error_reading_a_checkpoint_back_deletes_none_of_its_replay(tmp_path, monkeypatch):
    """One EIO (a network filesystem's hiccup) while the store read back the checkpoint it had just written made
    it delete that checkpoint's newest replay chunk, which every later checkpoint also names: two iterations later
    no checkpoint could be read and the run could not be resumed at all."""
    cfg = config(total_steps=900, capacity=900)
    cfg.agent.min_replay = 10_000  # no learning: only the checkpoints matter here
    load = torch.load

    def hiccup(path, *args, **kwargs):
        if str(path).endswith("ckpt_000000000300.pt") and kwargs.get("mmap"):
            raise OSError(errno.EIO, "Input/output error")
        return load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", hiccup)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=NUM_ENVS)).run()
    monkeypatch.undo()
    assert load_latest_checkpoint(tmp_path / "run" / "checkpoints", cfg.to_dict())["agent_steps"] >= 900
    assert any("kept every replay chunk" in str(w.message) and "Input/output error" in str(w.message)
               for w in caught)


def test_temporary_files_of_killed_writes_are_removed_on_start(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    leftovers = [run / "checkpoints" / ".ckpt_000000000400.pt.tmp-31337", run / ".summary.json.tmp-7",
                 run / "checkpoints" / ".replay_000000000000_000000000200.pt.tmp-31337"]
    for p in leftovers:
        p.write_bytes(b"x" * 100)
    keep = run / "notes.txt"
    keep.write_text("mine")
    trainer = Trainer(config(total_steps=100), run, env=ChainEnv(num_envs=NUM_ENVS))
    trainer.close()
    assert not any(p.exists() for p in leftovers) and keep.read_text() == "mine"


def test_restored_rngs_continue_the_same_streams(tmp_path):
    cfg = config(total_steps=300)
    trainer = Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=NUM_ENVS))
    trainer.run()
    draws = (random.random(), np.random.rand(), torch.rand(1).item(), trainer.action_rng.random())
    resumed = resume(cfg, tmp_path / "run")
    assert (random.random(), np.random.rand(), torch.rand(1).item(), resumed.action_rng.random()) == draws
    resumed.close()


def test_a_checkpoint_unreadable_for_an_io_error_is_not_set_aside(tmp_path, monkeypatch):
    """EIO from the storage says nothing about the file (it may read next time): skipped, but left in place."""
    cfg = config()
    Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=NUM_ENVS)).run()
    ckpt_dir = tmp_path / "run" / "checkpoints"
    older, newest = list_checkpoints(ckpt_dir)
    real_load = torch.load

    def flaky(path, *args, **kwargs):
        if Path(path) == newest:
            raise OSError(errno.EIO, "Input/output error")
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "load", flaky)
    with pytest.warns(UserWarning, match=rf"{newest.name}.*Input/output error.*resuming from the older {older.name} "
                                         "instead$"):
        Trainer.resume(tmp_path / "run", cfg, env=ChainEnv(num_envs=NUM_ENVS))
    assert list_checkpoints(ckpt_dir) == [older, newest]


@pytest.mark.parametrize("replay", ["uniform", "prioritized"])
def test_a_resume_ends_the_cut_episodes_instead_of_joining_them_to_the_new_ones(tmp_path, monkeypatch, replay):
    """The envs restart on a resume, so the episodes in progress at the checkpoint are cut. Their last transitions
    must not bootstrap from (nor sum the rewards of) the first steps of the restarted envs' new episodes: the
    resumed run stores the envs' observations after the checkpoint's last step in an auto-reset row, as a
    truncation."""
    cfg = config(replay, capacity=2000, total_steps=400)
    killed = killed_after(monkeypatch, cfg, tmp_path / "run", 1)
    after_step = killed.env.obs[:, -1].copy()  # what the envs showed after the checkpoint's last step
    resumed = resume(cfg, tmp_path / "run")
    cut = resumed.replay.t
    resumed.run()
    rp = resumed.replay
    lo, hi = rp.sample_range()
    assert lo <= cut - 1 and cut + 1 <= hi
    # Anywhere in the replay, an episode's first observation follows an auto-reset row or a terminal step.
    for t in range(lo, hi):
        joined = rp.executed[t % rp.T] & ~rp.terminal[t % rp.T] & rp.first[(t + 1) % rp.T]
        assert not joined.any(), f"vector step {t} (cut at {cut}) runs into a new episode in envs {joined.tolist()}"
    # The cut episodes' last transitions bootstrap from the observation that followed them.
    envs = torch.arange(NUM_ENVS)
    _, _, next_t = rp._n_step(torch.full((NUM_ENVS,), cut - 1), envs)
    assert next_t.tolist() == [cut] * NUM_ENVS
    assert np.array_equal(rp._stacks(next_t, envs)[:, -1].numpy(), after_step)
    if replay == "prioritized":  # the auto-reset row is never drawn
        assert (rp.priorities().view(rp.T, NUM_ENVS)[cut % rp.T] == 0).all()


def test_a_resume_on_another_env_backend_is_refused(tmp_path, monkeypatch):
    """`env.backend = auto` resolves to ale-py where envpool is not importable: a run started on envpool and
    resumed on such a machine would go on in another environment, so the resume refuses and names both."""
    cfg = config(total_steps=600)
    killed_after(monkeypatch, cfg, tmp_path / "run", 1)

    class OtherBackend(ChainEnv):
        backend = "ale"

    with pytest.raises(CheckpointError, match=r"started on the chain env backend and would go on with ale"):
        Trainer.resume(tmp_path / "run", cfg, env=OtherBackend(num_envs=NUM_ENVS))
    Trainer.resume(tmp_path / "run", cfg, env=ChainEnv(num_envs=NUM_ENVS)).close()  # the same backend resumes
