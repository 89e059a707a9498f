"""Offline training end to end: a run's replay exported in the DQN Replay format matches what the replay holds,
an offline trainer learns the chain MDP from exported random-policy data with CQL and CQL+C51, dense and pruned,
and offline runs resume, refuse data of another game and name missing data."""

import csv
import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch

from agents.checkpoint import latest_checkpoint
from agents.config import OfflineConfig, get_preset, paper_agent
from agents.export_dataset import dopamine_order, export_replay
from agents.export_dataset import main as export_main
from agents.networks import NetworkConfig
from agents.offline import DATASET_INFO, OfflineTrainer
from agents.offline_data import DatasetError, load_fixed_replay
from agents.replay import ReplayBuffer
from agents.train import Trainer, parse_args, trainer_class
from tests.agents.chain_env import ChainEnv
from tests.agents.test_learning import chain_config
from tests.agents.test_replay import expected, fill

pytestmark = pytest.mark.usefixtures("one_thread")
H = W = 6


def unique_frame(t: int, e: int) -> np.ndarray:
    f = np.full((H, W), 200, np.uint8)
    f[0, 0], f[0, 1], f[0, 2] = t % 256, t // 256 + 1, e
    return f


def source_of(frame: np.ndarray) -> tuple[int, int] | None:
    return None if not frame.any() else ((int(frame[0, 1]) - 1) * 256 + int(frame[0, 0]), int(frame[0, 2]))


@pytest.mark.parametrize("capacity", [10_000, 3 * 150])  # not wrapped, and wrapped (oldest steps overwritten)
def test_exported_replay_loads_back_as_the_replays_transitions(tmp_path, capacity):
    rng = np.random.default_rng(capacity)
    buf = ReplayBuffer(capacity, 3, n_step=3, gamma=0.9, frame_shape=(H, W))
    tl = fill(buf, 400, rng, end_prob=0.1, frame=unique_frame)  # frames that name their (t, env)
    steps = export_replay(buf, tmp_path / "data")
    slot, env = dopamine_order(buf)
    assert steps == slot.size and (slot >= 0).sum() < 3 * min(400, capacity // 3)
    data = load_fixed_replay(tmp_path / "data", "all", 1.0, 1, 0, stack=4, n_step=3, gamma=0.9, frame_shape=(H, W))
    truncated_end = tl["executed"] & ~np.roll(tl["executed"], -1, axis=0) & ~tl["terminal"]  # last step, no terminal
    truncated_end[-1] = False
    checked = touching_truncation = padding_starts = 0
    for m in range(len(data.actions)):
        source = source_of(data.frames[data.state[m][-1]])
        if source is None:  # Dopamine's old format: after a cut episode its sampler accepts the padding steps
            assert data.actions[m] == 0
            padding_starts += 1
            continue
        t, e = source
        assert tl["executed"][t, e] and t >= 400 - capacity // 3
        if truncated_end[t:t + 3, e].any():  # Dopamine's old format: bootstraps into the next episode's padding
            touching_truncation += 1
            continue
        if t + 3 >= 400:  # a terminal at the newest steps: the reference needs a step after the horizon
            continue
        obs, ret, disc, next_obs = expected(tl, t, e, 3, 0.9)
        np.testing.assert_array_equal(data.frames[data.state[m]], obs)
        assert data.returns[m] == pytest.approx(ret, abs=1e-5) and data.discounts[m] == pytest.approx(disc)
        assert data.actions[m] == tl["action"][t, e]
        if disc:
            np.testing.assert_array_equal(data.frames[data.next_state[m]], next_obs)
        checked += 1
    assert checked > 200 and touching_truncation > 0 and padding_starts > 0
    # Every executed step of a complete episode is a transition once, but Dopamine's invalid ones: the first
    # stack at the very start and the last n steps before the cursor.
    sources = [source_of(data.frames[data.state[m][-1]]) for m in range(len(data.actions))]
    real = [x for x in sources if x is not None]
    assert len(set(real)) == len(real)
    assert (slot >= 0).sum() - 3 - 4 <= len(real) <= (slot >= 0).sum()


def test_export_refuses_an_empty_replay(tmp_path):
    buf = ReplayBuffer(100, 1, frame_shape=(H, W))
    with pytest.raises(ValueError, match="no complete episode"):
        export_replay(buf, tmp_path)


# --- train, export, load, train offline -------------------------------------------------------------------------
def offline_config(agent_name: str, sparsity: float, data, total: int = 600):
    agent = dataclasses.replace(paper_agent(agent_name), lr=1e-3, gamma=0.9, target_update_period=100)
    cfg = chain_config(agent, sparsity, total_steps=total)
    cfg.network = NetworkConfig(arch="nature", scale_dense=True, dueling=agent_name == "cql_c51")
    cfg.offline = OfflineConfig(data=str(data), fraction=1.0, chunk=1)
    cfg.replay_ratio, cfg.evaluate, cfg.eval_episodes, cfg.iteration_steps = 1.0, True, 40, total // 2
    cfg.pruning.start_step, cfg.pruning.end_step, cfg.pruning.update_freq = 50, 350, 50
    cfg.log_every, cfg.seed = 100, 0  # seed 0: every initial network's greedy policy takes the near reward
    return cfg


@pytest.fixture(scope="module")
def chain_dataset(tmp_path_factory):
    """A run of the trainer on the chain that only explores (epsilon 1), its replay saved and exported."""
    root = tmp_path_factory.mktemp("chain_data")
    cfg = chain_config(paper_agent("dqn"), 0.0, total_steps=3000)
    cfg.agent.min_replay, cfg.save_replay, cfg.iteration_steps = 10**6, True, 3000
    Trainer(cfg, root / "run", env=ChainEnv(num_envs=4)).run()
    assert export_main([str(root / "run")]) == 0
    return root / "run" / "dataset"


def test_exported_run_names_its_game(chain_dataset):
    info = json.loads((chain_dataset / DATASET_INFO).read_text())
    assert info["game"] == "Pong" and info["num_actions"] == 2  # chain_config keeps the default game name


def test_one_checkpoint_of_a_run_is_exported_once_into_a_folder(tmp_path, chain_dataset, capsys):
    """The same replay under a second --suffix was written again: the folder's dataset then held it twice, sampled
    twice as often as any other checkpoint there. A re-export under the same suffix overwrites, as before."""
    run, out = chain_dataset.parent, tmp_path / "data"
    assert export_main([str(run), "--out", str(out)]) == 0
    assert export_main([str(run), "--out", str(out)]) == 0
    assert export_main([str(run), "--out", str(out), "--suffix", "1"]) == 2
    assert "holds this replay already, as checkpoint 0" in capsys.readouterr().err
    assert not list(out.glob("*ckpt.1.gz"))
    sources = json.loads((out / DATASET_INFO).read_text())["sources"]
    assert list(sources) == ["0"] and sources["0"]["run"] == str(run.resolve()) and sources["0"]["agent_steps"] > 0


def test_export_errors_say_what_could_not_be_exported(tmp_path, capsys):
    """They read "cannot resume ..." (the trainer's words), and a file given as the run read "no such directory"."""
    (tmp_path / "file").write_text("")
    for run, what in ((tmp_path / "missing", "no such directory"), (tmp_path / "file", "not a directory")):
        assert export_main([str(run)]) == 2
        assert f"error: cannot export {run}: {what}" in capsys.readouterr().err


def test_a_negative_suffix_is_a_usage_error(tmp_path, chain_dataset, capsys):
    # It wrote $store$_observation_ckpt.-1.gz and the rest, files no dataset reader lists (checkpoints are N >= 0).
    with pytest.raises(SystemExit) as e:
        export_main([str(chain_dataset.parent), "--out", str(tmp_path / "data"), "--suffix", "-1"])
    assert e.value.code == 2 and "--suffix must be >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_an_export_into_a_folder_of_another_game_is_refused(tmp_path, chain_dataset, capsys):
    """Several runs export into one folder as its checkpoints (--suffix): one of another game relabelled the whole
    folder, so an offline run of that game trained on both games' data, and one of the first game was refused."""
    cfg = chain_config(paper_agent("dqn"), 0.0, total_steps=600)
    cfg.agent.min_replay, cfg.iteration_steps, cfg.env.game = 10**6, 600, "Breakout"
    Trainer(cfg, tmp_path / "breakout", env=ChainEnv(num_envs=2)).run()
    shutil.copytree(chain_dataset, tmp_path / "data")
    before = {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()}
    assert export_main([str(tmp_path / "breakout"), "--out", str(tmp_path / "data"), "--suffix", "1"]) == 2
    assert "holds Pong data" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()} == before


@pytest.mark.slow
@pytest.mark.parametrize("sparsity", [0.0, 0.9])
@pytest.mark.parametrize("name", ["cql", "cql_c51"])
def test_offline_agents_learn_the_chain_from_exported_random_play(tmp_path, chain_dataset, name, sparsity):
    """Random play rarely reaches the far reward (random scores ~0.43); CQL and CQL+C51 learn the optimal policy
    from its data alone, evaluated greedily (epsilon 0.001) in the chain after every iteration."""
    cfg = offline_config(name, sparsity, chain_dataset)
    trainer = OfflineTrainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=4))
    assert trainer.evaluate().score < 0.5, "the untrained policy already takes the far reward: nothing to learn"
    summary = trainer.run()
    with open(tmp_path / "run" / "iterations.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["agent_steps"]) for r in rows] == [300, 600] and all(r["frames"] == "0" for r in rows)
    assert [int(r["eval_episodes"]) for r in rows] == [40, 40] and all(r["score"] == "nan" for r in rows)
    assert float(rows[-1]["eval_score"]) > 0.9, f"{name} (sparsity {sparsity}): {[r['eval_score'] for r in rows]}"
    assert summary["grad_steps"] == 600 and summary["final_eval_score"] == float(rows[-1]["eval_score"])
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("losses/cql" in m for m in metrics)
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["offline_dataset"]["transitions"] == len(trainer.replay)
    if sparsity:
        assert math.isclose(summary["sparsity/prunable"], sparsity, abs_tol=0.01)


def test_offline_run_resumes_exactly(tmp_path, chain_dataset):
    """Killed after its first iteration's checkpoint, an offline run continues with the same updates: the
    dataset is reloaded, the sampler's and the networks' states come from the checkpoint."""
    def config(total):
        cfg = offline_config("cql", 0.9, chain_dataset, total=200)
        cfg.total_steps, cfg.eval_episodes = total, 4
        cfg.pruning.start_step, cfg.pruning.end_step, cfg.pruning.update_freq = 20, 80, 20
        return cfg

    whole = OfflineTrainer(config(200), tmp_path / "whole", env=ChainEnv(num_envs=2))
    whole.run()
    shutil.copytree(tmp_path / "whole", tmp_path / "part")
    for path in (latest_checkpoint(tmp_path / "part" / "checkpoints"), tmp_path / "part" / "summary.json"):
        path.unlink()  # as if killed after the first iteration's checkpoint
    resumed = OfflineTrainer.resume(tmp_path / "part", config(200), env=ChainEnv(num_envs=2))
    assert resumed.agent_steps == resumed.grad_steps == 100
    summary = resumed.run()
    assert summary["resumed_without_replay"] is False  # the dataset is reloaded: the report must not flag it
    for a, b in zip(whole.online.parameters(), resumed.online.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_offline_run_stops_at_max_minutes_with_a_checkpoint(tmp_path, chain_dataset, capsys):
    cfg = offline_config("cql", 0.9, chain_dataset, total=200)
    cfg.max_minutes = 1e-9  # out of time after the first update
    trainer = OfflineTrainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=2))
    summary = trainer.run()
    assert trainer.stopped_early and summary["finished"] is False and trainer.agent_steps == 1
    assert ("stopping after --max-minutes 1e-09 at update 1, with a checkpoint; continue with --resume"
            in capsys.readouterr().out)
    cfg.max_minutes = None
    resumed = OfflineTrainer.resume(tmp_path / "run", cfg, env=ChainEnv(num_envs=2))
    assert resumed.agent_steps == 1
    assert resumed.run()["finished"] is True and resumed.agent_steps == 200


def test_offline_profile_counts_the_updates_flops_and_no_acting(tmp_path, chain_dataset):
    cfg = offline_config("cql", 0.0, chain_dataset, total=40)
    cfg.profile, cfg.eval_episodes = True, 2
    OfflineTrainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=2)).run()
    flops = json.loads((tmp_path / "run" / "profile.json").read_text())["model_flops"]
    assert flops["learner_flops"] > 0 and flops["act_flops"] > 0
    assert flops["flops_per_frame"] == round(flops["learner_flops"] / cfg.env.frame_skip)  # per update, no acting


def test_offline_runs_name_missing_or_foreign_data(tmp_path, chain_dataset):
    cfg = offline_config("cql", 0.0, chain_dataset)
    cfg.offline.data = None
    with pytest.raises(ValueError, match="--offline.data DIR"):
        OfflineTrainer(cfg, tmp_path / "a", env=ChainEnv(num_envs=2))
    cfg = offline_config("cql", 0.0, tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="does not exist"):
        OfflineTrainer(cfg, tmp_path / "b", env=ChainEnv(num_envs=2))
    cfg = offline_config("cql", 0.0, chain_dataset)
    cfg.env.game = "Breakout"
    with pytest.raises(DatasetError, match="holds Pong data .* but the run plays Breakout"):
        OfflineTrainer(cfg, tmp_path / "c", env=ChainEnv(num_envs=2))

    class OneAction(ChainEnv):
        num_actions = 1

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for f in chain_dataset.iterdir():
        if f.name != DATASET_INFO:
            (foreign / f.name).write_bytes(f.read_bytes())
    with pytest.raises(DatasetError, match="holds action 1, but Pong has 1 actions"):
        OfflineTrainer(offline_config("cql", 0.0, foreign), tmp_path / "d", env=OneAction(num_envs=2))

    # The DQN Replay Dataset names its game only in its path ($GAME/$RUN/replay_logs): Breakout's data for a Pong
    # run was caught only if an action went past Pong's count.
    published = tmp_path / "dqn_replay" / "Breakout" / "1" / "replay_logs"
    published.mkdir(parents=True)
    for f in foreign.iterdir():
        (published / f.name).write_bytes(f.read_bytes())
    with pytest.raises(DatasetError, match="Dataset's Breakout data .* but the run plays Pong"):
        OfflineTrainer(offline_config("cql", 0.0, published.parent), tmp_path / "e", env=ChainEnv(num_envs=2))
    cfg = offline_config("cql", 0.0, published)
    cfg.env.game = "breakout"  # the same game, spelled otherwise
    OfflineTrainer(cfg, tmp_path / "f", env=ChainEnv(num_envs=2)).close()


def test_offline_presets_and_command_line(tmp_path):
    cfg = get_preset("cql_c51_impala_w3_gmp99")
    a = cfg.agent
    assert (a.name, a.lr, a.adam_eps, a.n_step, a.double_dqn, a.cql_coefficient) == ("cql_c51", 6.25e-5, 1.5e-4, 3,
                                                                                     True, 0.1)
    assert (a.replay, a.num_atoms, cfg.network.dueling, cfg.network.width, cfg.network.scale_dense) == \
        ("uniform", 51, True, 3, True)
    assert (cfg.total_steps, cfg.iteration_steps, cfg.replay_ratio, cfg.offline.fraction) == (12_500_000, 62_500,
                                                                                             1.0, 0.05)
    assert cfg.pruning.window(cfg.nominal_grad_steps, cfg.min_grad_steps(8)) == (2_500_000, 10_000_000)
    assert cfg.evaluate and cfg.eval_epsilon == 0.001 and cfg.pruning.final_sparsity == 0.99
    cql = get_preset("cql_impala_w1_dense").agent
    assert (cql.lr, cql.adam_eps, cql.n_step, cql.double_dqn, cql.loss) == (5e-5, 3.125e-4, 1, False, "huber")
    parsed, _ = parse_args(["--preset", "cql_impala_w1_gmp95", "--offline.data", str(tmp_path)])
    assert parsed.offline.enabled and parsed.offline.data == str(tmp_path) and trainer_class(parsed) is OfflineTrainer
    online, _ = parse_args(["--preset", "dqn_impala_w1_dense"])
    assert trainer_class(online) is Trainer
    with pytest.raises(ValueError, match="keep --replay-ratio 1 and --evaluate"):
        dataclasses.replace(get_preset("cql_impala_w1_dense"), replay_ratio=0.25)


@pytest.mark.slow
def test_command_line_train_export_and_train_offline_on_pong(tmp_path, capsys):
    """The real pipeline on Atari frames: a short Pong run, `python -m agents.export_dataset`, then an offline CQL
    run of the preset on that data, evaluated in Pong; another game's run on it is a usage error (exit 2)."""
    from agents.train import main as train_main

    common = ["--runs-dir", str(tmp_path), "--no-progress", "--no-tensorboard", "--device", "cpu"]
    assert train_main(["--preset", "demo", "--env.game", "Pong", "--env.num-envs", "1", "--total-steps", "2500",
                       "--iteration-steps", "2500", "--agent.min-replay", "100000", "--run-name", "data",
                       *common]) == 0  # random play: Pong episodes of ~800 agent steps
    assert export_main([str(tmp_path / "data")]) == 0
    offline = ["--preset", "cql_impala_w1_gmp95", "--env.num-envs", "1", "--offline.data",
               str(tmp_path / "data" / "dataset"), "--offline.fraction", "0.5", "--offline.chunk", "50",
               "--total-steps", "40", "--iteration-steps", "20", "--eval-episodes", "1", "--log-every", "20", *common]
    capsys.readouterr()
    assert train_main([*offline, "--env.game", "Pong", "--run-name", "cql"]) == 0
    with open(tmp_path / "cql" / "iterations.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["grad_steps"] for r in rows] == ["20", "40"] and all(r["eval_episodes"] == "1" for r in rows)
    assert -21 <= float(rows[-1]["eval_score"]) <= 21
    # its last line gives the evaluation's score (it once said "none": an offline run ends no training episode)
    assert f"evaluation score {float(rows[-1]['eval_score']):.2f}, total sparsity" in capsys.readouterr().out
    meta = json.loads((tmp_path / "cql" / "config.json").read_text())
    assert meta["config"]["offline"]["fraction"] == 0.5 and 0 < meta["offline_dataset"]["transitions"] < 2500
    assert train_main([*offline, "--env.game", "Breakout", "--run-name", "wrong"]) == 2
    assert "holds Pong data" in capsys.readouterr().err
