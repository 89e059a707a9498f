"""The lottery ticket (--pruning.fixed-mask, Fig. 13): every run saves its initial weights; a fixed-mask run starts
from a finished pruned run's initial weights under its final masks and never changes the masks."""

import json

import pytest
import torch

from agents.checkpoint import latest_checkpoint, load_checkpoint
from agents.pruning import FixedMask, PruningConfig
from agents.train import Trainer, main
from tests.agents.chain_env import ChainEnv
from tests.agents.test_learning import chain_config, fast_dqn
from tests.agents.test_plasticity import run_then_resume


def _config(total_steps=400, **pruning):
    cfg = chain_config(fast_dqn(min_replay=100), sparsity=0.9, total_steps=total_steps)
    cfg.iteration_steps = 100
    cfg.pruning.start_step, cfg.pruning.end_step, cfg.pruning.update_freq = 0, 40, 10
    for k, v in pruning.items():
        setattr(cfg.pruning, k, v)
    return cfg


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished GMP run (90%) on the chain."""
    run = tmp_path_factory.mktemp("source") / "gmp"
    Trainer(_config(), run, env=ChainEnv(num_envs=2)).run()
    return run


def test_every_run_saves_the_weights_it_starts_from(tmp_path, source):
    initial = torch.load(source / "initial_weights.pt", weights_only=True)
    again = Trainer(_config(), tmp_path / "again", env=ChainEnv(num_envs=2))  # same seed: same initialisation
    assert initial.keys() == again.online.state_dict().keys()
    for k, v in again.online.state_dict().items():
        assert torch.equal(initial[k], v), k
    again.close()
    final = load_checkpoint(latest_checkpoint(source / "checkpoints"))["online"]
    assert any(not torch.equal(initial[k], final[k]) for k in initial)  # it is the start, not the end


def test_fixed_mask_run_starts_from_the_ticket_and_keeps_its_masks(tmp_path, source):
    initial = torch.load(source / "initial_weights.pt", weights_only=True)
    pruner_state = load_checkpoint(latest_checkpoint(source / "checkpoints"))["pruner"]
    cfg = _config(fixed_mask=str(source))
    cfg.seed = 3  # the ticket's weights come from the source run, whatever this run's seed
    trainer = Trainer(cfg, tmp_path / "ticket", env=ChainEnv(num_envs=2))
    p = trainer.pruner
    assert isinstance(p, FixedMask)
    masks = [pruner_state[f"mask{i}"] for i in range(len(p.masks))]
    sd = trainer.online.state_dict()
    for name, m, buf in zip(p.layer_names, masks, p.masks, strict=True):
        assert torch.equal(buf, m)
        assert torch.equal(sd[name], initial[name] * m), name  # original initialisation, final mask
    for name in sd:
        if name not in p.layer_names:
            assert torch.equal(sd[name], initial[name]), name  # biases: the original initialisation too
    for t, o in zip(trainer.target.parameters(), trainer.online.parameters()):
        assert torch.equal(t, o)
    assert sum(p.layer_sparsities(0)) > 0
    total = sum(m.numel() for m in masks)
    assert p.scheduled_sparsity(0) == p.scheduled_sparsity(10**6) == 1 - sum(int(m.sum()) for m in masks) / total
    trainer.run()
    assert trainer.grad_steps > 50
    for buf, m, w in zip(p.masks, masks, p.weights, strict=True):
        assert torch.equal(buf, m) and torch.all(w[~m] == 0)
    assert any(not torch.equal(w, initial[n] * m) for n, w, m in zip(p.layer_names, p.weights, masks))  # it learned


def test_fixed_mask_survives_a_resume_without_its_source(tmp_path, source):
    import shutil

    cfg = _config(total_steps=450, fixed_mask=str(tmp_path / "copy"))
    shutil.copytree(source, tmp_path / "copy")
    masks = [m.clone() for m in Trainer(cfg, tmp_path / "probe", env=ChainEnv()).pruner.masks]
    full, resumed, at = run_then_resume(tmp_path, cfg)  # reads the source when it starts
    shutil.rmtree(tmp_path / "copy")  # a resume reads the masks from its own checkpoint
    state = load_checkpoint(latest_checkpoint(tmp_path / "full" / "checkpoints"))
    again = Trainer(cfg, tmp_path / "full", checkpoint=state, env=ChainEnv(num_envs=2))
    for trainer in (full, resumed, again):
        for buf, m in zip(trainer.pruner.masks, masks, strict=True):
            assert torch.equal(buf, m)
    assert 0 < at < resumed.grad_steps
    again.close()


def test_bad_tickets_are_clear_errors(tmp_path, source, capsys):
    def error_of(cfg):
        with pytest.raises(ValueError) as e:
            Trainer(cfg, tmp_path / "bad", env=ChainEnv())
        return str(e.value)

    assert "has not finished" in error_of(_config(fixed_mask=str(_unfinished(source, tmp_path))))
    assert "not a finished run directory" in error_of(_config(fixed_mask=str(tmp_path / "nowhere")))
    wider = _config(fixed_mask=str(source))
    wider.network.width = 2
    assert "network is" in error_of(wider)
    below = _unfinished(source, tmp_path, below_target_sparsity=True, finished=True)
    assert "short of its target sparsity 0.9 (below_target_sparsity" in error_of(_config(fixed_mask=str(below)))
    sparser = _config(fixed_mask=str(source), final_sparsity=0.95)
    assert "pruning.final_sparsity is 0.9 in that run but 0.95 here" in error_of(sparser)
    # the run's config describes its masks: not ERK masks under a uniform run's name, nor RigL's as GMP's
    uniform = _config(fixed_mask=str(source), distribution="uniform")
    assert "pruning.distribution is 'erk' in that run but 'uniform' here" in error_of(uniform)
    rigl = _unfinished(source, tmp_path, finished=True)
    config = json.loads((rigl / "config.json").read_text())
    config["config"]["pruning"]["method"] = "rigl"
    (rigl / "config.json").write_text(json.dumps(config))
    assert "pruning.method is 'rigl' in that run but 'gmp' here" in error_of(_config(fixed_mask=str(rigl)))
    with pytest.raises(ValueError, match="--pruning.method gmp"):
        PruningConfig(final_sparsity=0.9, fixed_mask=str(source), method="rigl")
    # through the CLI: exit code 2 and one line naming the problem
    code = main(["--preset", "dqn_impala_w1_gmp90", "--pruning.fixed-mask", str(tmp_path / "nowhere"),
                 "--runs-dir", str(tmp_path), "--run-name", "cli", "--device", "cpu", "--no-progress",
                 "--env.num-envs", "1"])
    assert code == 2 and "--pruning.fixed-mask" in capsys.readouterr().err


def _unfinished(source, tmp_path, **summary_keys):
    """A copy of the source run whose summary.json says it did not finish, or what summary_keys say."""
    import shutil

    copy = tmp_path / f"unfinished{len(summary_keys)}"
    shutil.copytree(source, copy)
    summary = json.loads((copy / "summary.json").read_text())
    (copy / "summary.json").write_text(json.dumps({**summary, "finished": False, **summary_keys}))
    return copy
