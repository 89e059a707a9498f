"""Requeue and resume through the real CLI (`main`) on Atari: a few dozen agent steps each, no learning."""

import copy
import csv
import json
import shutil

import pytest

import agents.train as train_module
from agents.train import Trainer, _keep_saved_spellings, canonical_spellings, main, parse_args
from tests.agents.chain_env import ChainEnv
from tests.agents.test_learning import chain_config, fast_dqn

# Two iterations of 32 agent steps; min_replay above the budget, so the agent only explores (no network calls).
TINY = ["--preset", "demo", "--env.num-envs", "2", "--total-steps", "64", "--iteration-steps", "32",
        "--agent.min-replay", "10000", "--replay-capacity", "1000", "--no-progress", "--device", "cpu"]
STOP_AT_ONCE = ["--max-minutes", "0.0001"]  # stops with a checkpoint after the first vector step


def command(tmp_path, *extra):
    return [*TINY, "--runs-dir", str(tmp_path), "--run-name", "r", *extra]


def run_main(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def summary(run):
    return json.loads((run / "summary.json").read_text())


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_same_command_resumes_a_stopped_run_then_says_already_finished(tmp_path, capsys):
    run = tmp_path / "r"
    code, out, _ = run_main(capsys, command(tmp_path, *STOP_AT_ONCE))
    assert code == 0 and "stopping after --max-minutes" in out
    stopped = summary(run)
    assert stopped["finished"] is False and stopped["agent_steps"] < 64

    # A runtime option may differ (a requeued job gets a new time limit).
    code, out, _ = run_main(capsys, command(tmp_path, "--max-minutes", "30"))
    assert code == 0 and f"resuming {run} at agent step {stopped['agent_steps']:,}" in out
    assert summary(run)["finished"] is True and summary(run)["agent_steps"] >= 64
    assert [int(r["iteration"]) for r in read_csv(run / "iterations.csv")] == [1, 2]

    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    code, out, _ = run_main(capsys, command(tmp_path))
    assert code == 0 and "already finished" in out
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before, "a finished run was touched"


def test_a_run_killed_before_its_first_checkpoint_starts_afresh(tmp_path, capsys):
    run = tmp_path / "r"
    cfg, _ = parse_args(command(tmp_path))
    killed = Trainer(cfg, run)  # writes config.json and the log files, as a run killed early leaves them
    killed.episodes_csv.write("5,20,0,12345.0,5\n")
    killed.close()
    (run / "tb" / "events.out.tfevents.stale").write_bytes(b"stale")
    (run / "checkpoints").mkdir()

    code, out, _ = run_main(capsys, command(tmp_path))
    assert code == 0 and f"run directory: {run}" in out and "resuming" not in out
    assert summary(run)["finished"] is True
    assert all(float(e["return"]) != 12345.0 for e in read_csv(run / "episodes.csv")), "stale rows kept"
    assert not (run / "tb" / "events.out.tfevents.stale").exists()


def test_the_same_run_name_with_another_experiment_is_an_error(tmp_path, capsys):
    run = tmp_path / "r"
    assert run_main(capsys, command(tmp_path, *STOP_AT_ONCE))[0] == 0
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    code, _, err = run_main(capsys, command(tmp_path, "--agent.lr", "0.001", "--seed", "3"))
    assert code == 2 and "different experiment" in err and "--agent.lr" in err and "--seed" in err
    assert "--max-minutes" not in err  # a runtime option is not a difference
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_a_run_another_process_trains_is_refused(tmp_path, capsys):
    """A second launch of a run (an orphaned trainer still running when its job is requeued) trained alongside
    the first: both appended iterations 4-6 to the same logs. Now the first holds RUN_DIR/.lock."""
    from agents.locks import run_lock

    run = tmp_path / "r"
    assert run_main(capsys, command(tmp_path, *STOP_AT_ONCE))[0] == 0
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    with run_lock(run / ".lock", wait=False) as fd:  # the other process
        assert fd is not None
        for argv in (command(tmp_path), ["--resume", str(run)]):
            code, _, err = run_main(capsys, argv)
            assert code == 75 and "is being trained by another process" in err and str(run / ".lock") in err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    code, out, _ = run_main(capsys, command(tmp_path))  # released: the same command continues the run
    assert code == 0 and "resuming" in out and summary(run)["finished"] is True
    with run_lock(run / ".lock", wait=False) as fd:
        assert fd is not None, "a finished launch kept its run's lock"


def test_a_run_that_fails_to_start_leaves_no_run_directory(tmp_path, capsys, monkeypatch):
    def failing(cfg):
        def build(*args, **kwargs):
            raise ValueError("no such thing")
        return build

    monkeypatch.setattr(train_module, "trainer_class", failing)
    code, _, err = run_main(capsys, command(tmp_path))
    assert code == 2 and "no such thing" in err
    assert not (tmp_path / "r").exists()  # not even its lock file


def test_a_run_saved_with_an_option_its_agent_does_not_read_still_resumes(tmp_path, capsys):
    """The command line refuses such options now; a run started with one before must not be stranded."""
    run = tmp_path / "r"
    cfg, _ = parse_args(command(tmp_path, *STOP_AT_ONCE))
    cfg.agent.num_atoms = 11  # DQN reads no atoms (as an older trainer accepted)
    Trainer(cfg, run).run()
    code, _, err = run_main(capsys, command(tmp_path, "--agent.num-atoms", "11"))
    assert code == 2 and "agent dqn does not read agent.num_atoms = 11" in err and "--resume RUN_DIR" in err
    with pytest.warns(UserWarning, match="does not read agent.num_atoms = 11") as caught:
        code, out, err = run_main(capsys, ["--resume", str(run), "--max-minutes", "30"])
    assert sum("agent.num_atoms" in str(w.message) for w in caught) == 1  # once, though config.json is read twice
    assert code == 0, err
    assert "resuming" in out and summary(run)["finished"] is True


def test_resume_accepts_runtime_options(tmp_path, capsys):
    run = tmp_path / "r"
    assert run_main(capsys, command(tmp_path, *STOP_AT_ONCE))[0] == 0
    code, out, err = run_main(capsys, ["--resume", str(run), "--max-minutes", "30", "--no-progress", "--device",
                                       "cpu", "--overlap-env", "off", "--no-compile", "--keep-checkpoints", "3"])
    assert code == 0, err
    assert "resuming" in out and summary(run)["finished"] is True


def test_resume_takes_the_runs_own_preset_and_refuses_another(tmp_path, capsys):
    """--preset with --resume used to replace the saved config with the preset's fields, so the run's own command
    line options (--total-steps 64, ...) came back as six 'differences'."""
    run = tmp_path / "r"
    assert run_main(capsys, command(tmp_path, *STOP_AT_ONCE))[0] == 0
    code, _, err = run_main(capsys, ["--resume", str(run), "--preset", "dqn_impala_w1_dense"])
    assert code == 2 and "from preset 'demo'; drop --preset dqn_impala_w1_dense" in err, err
    code, out, err = run_main(capsys, ["--resume", str(run), "--preset", "demo", "--max-minutes", "30"])
    assert code == 0 and "resuming" in out and summary(run)["finished"] is True, err


@pytest.mark.parametrize("option,value", [("--agent.lr", "0.001"), ("--total-steps", "128"),
                                          ("--pruning.final-sparsity", "0.5"), ("--env.game", "Pong")])
def test_resume_rejects_options_that_change_the_experiment(tmp_path, capsys, option, value):
    run = tmp_path / "r"
    assert run_main(capsys, command(tmp_path, *STOP_AT_ONCE))[0] == 0
    code, _, err = run_main(capsys, ["--resume", str(run), "--max-minutes", "30", option, value])
    assert code == 2 and option in err and "runtime options" in err
    assert "--max-minutes" in err  # the message lists what is accepted


@pytest.mark.parametrize("source", ["config.json edited", "checkpoints of another run"])
def test_a_checkpoint_of_another_experiment_is_refused(tmp_path, capsys, source):
    """The checkpoint records the options it was trained with: a config.json edited by hand (or checkpoints copied
    from another run) must not train on silently with another seed, learning rate or pruning window."""
    run = tmp_path / "r"
    if source == "config.json edited":
        assert run_main(capsys, command(tmp_path, *STOP_AT_ONCE))[0] == 0
        meta = json.loads((run / "config.json").read_text())
        meta["config"]["seed"], meta["config"]["agent"]["lr"] = 7, 0.01
        (run / "config.json").write_text(json.dumps(meta))
    else:
        assert run_main(capsys, command(tmp_path, *STOP_AT_ONCE, "--seed", "7", "--agent.lr", "0.01"))[0] == 0
        other = tmp_path / "other"
        assert run_main(capsys, [*TINY, "--runs-dir", str(tmp_path), "--run-name", "other", *STOP_AT_ONCE])[0] == 0
        shutil.rmtree(run / "checkpoints")
        shutil.copytree(other / "checkpoints", run / "checkpoints")
    before = {p: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    code, _, err = run_main(capsys, ["--resume", str(run)])
    assert code == 2 and "another experiment" in err, err
    assert "seed is 0 in the checkpoint but 7" in err and "agent.lr is 6.25e-05 in the checkpoint but 0.01" in err
    assert {p: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before


def test_resume_names_its_run_directory(tmp_path, capsys):
    run = tmp_path / "r"
    assert run_main(capsys, command(tmp_path, *STOP_AT_ONCE))[0] == 0
    code, _, err = run_main(capsys, ["--resume", str(run), "--run-name", "other"])
    assert code == 2 and "--run-name" in err


def test_a_game_has_one_spelling_in_runs_and_commands(tmp_path, monkeypatch):
    """'breakout' and 'ALE/Breakout-v5' name the same experiment as 'Breakout' (once, a run of 'breakout' refused
    its own command spelled 'Breakout'); a run started before this keeps its own spelling."""
    monkeypatch.setattr(train_module, "make_env", lambda cfg, seed: ChainEnv(num_envs=2))

    def config(game, name="n"):
        cfg = chain_config(fast_dqn(min_replay=200), sparsity=0.0, total_steps=400)
        cfg.env.game, cfg.runs_dir, cfg.run_name = game, str(tmp_path), name
        return cfg

    train_module.open_run(config("breakout")).close()
    saved = json.loads((tmp_path / "n" / "config.json").read_text())["config"]
    assert saved["env"]["game"] == "Breakout"
    train_module.open_run(config("ALE/Breakout-v5")).close()  # the same experiment: no error
    unnamed = train_module.open_run(config("space_invaders", name=None))
    assert unnamed.run_dir.name.startswith("SpaceInvaders__") and unnamed.cfg.env.game == "SpaceInvaders"
    unnamed.close()

    saved["env"]["game"] = "breakout"  # as an older trainer wrote it
    path = tmp_path / "n" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "config": saved}))
    trainer = train_module.open_run(config("Breakout"))
    assert trainer.cfg.env.game == "breakout"
    trainer.close()


@pytest.mark.parametrize("named", [True, False])
def test_ctrl_c_says_how_to_continue_without_a_traceback(tmp_path, monkeypatch, capsys, named):
    """Without --run-name the run's default name holds its start time: the same command would start a new run,
    so the message names --resume only (it said "the same command" there too)."""
    cfg = chain_config(fast_dqn(min_replay=200), sparsity=0.0, total_steps=400)
    cfg.runs_dir, cfg.run_name = str(tmp_path), "r" if named else None
    trainer = train_module.Trainer(cfg, tmp_path / "r", env=ChainEnv(num_envs=2))
    trainer.run()  # a checkpoint at its last step (400, or a little past it: a vector step of 2 envs) to continue from
    last = trainer.agent_steps

    def interrupted():
        trainer.agent_steps = 450
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "run", interrupted)
    monkeypatch.setattr(train_module, "open_run", lambda cfg, resume_dir: trainer)
    monkeypatch.setattr(train_module, "parse_args", lambda argv: (cfg, None))
    assert main([]) == 130
    err = capsys.readouterr().err
    how = (f"the same command (or --resume {tmp_path / 'r'}) continues" if named else
           f"--resume {tmp_path / 'r'} continues (the same command would start a new run: give --run-name")
    assert f"interrupted at agent step 450; {how}" in err and "Traceback" not in err
    assert f"from its last checkpoint, agent step {last}" in err
    assert trainer.iterations_csv.closed


def test_a_lottery_ticket_source_is_the_same_from_any_directory(tmp_path, monkeypatch):
    """--pruning.fixed-mask compared as text made 'runs/gmp' and '/abs/runs/gmp' two experiments: a requeued job
    started elsewhere could not continue its run. It is stored absolute; an older run's relative path is kept."""
    monkeypatch.chdir(tmp_path)
    cfg = chain_config(fast_dqn(min_replay=200), sparsity=0.9)
    cfg.env.game, cfg.pruning.fixed_mask = "Pong", "runs/gmp/"
    older = copy.deepcopy(cfg)  # as an older trainer saved it
    canonical_spellings(cfg)
    assert cfg.pruning.fixed_mask == str(tmp_path / "runs" / "gmp")
    _keep_saved_spellings(older, cfg)
    assert cfg.pruning.fixed_mask == "runs/gmp/"
    other = copy.deepcopy(cfg)
    other.pruning.fixed_mask = str(tmp_path / "runs" / "other")
    _keep_saved_spellings(older, other)
    assert other.pruning.fixed_mask == str(tmp_path / "runs" / "other")  # a different source stays different


def test_resume_of_a_missing_or_non_run_directory_says_which(tmp_path, capsys):
    code, _, err = run_main(capsys, ["--resume", str(tmp_path / "typo")])
    assert code == 2 and f"cannot resume {tmp_path / 'typo'}: no such directory" in err, err
    assert not (tmp_path / "typo").exists()
    code, _, err = run_main(capsys, ["--resume", str(tmp_path)])
    assert code == 2 and "it has no config.json (is it a run directory?)" in err, err
