"""The paper's comparisons learn the chain MDP through the real training loop (DQN, Impala x1), and their presets
are the paper's baselines: each differs from its dense twin in the method's fields only, at the paper's values."""

import math

import pytest
import torch

from agents.config import PRESETS, experiment_fields
from agents.plasticity import ReDoConfig, ResetConfig
from agents.rigl import RigLConfig
from agents.train import Trainer
from tests.agents.chain_env import ChainEnv
from tests.agents.test_learning import chain_config, fast_dqn


def _learn(tmp_path, cfg, name="run"):
    torch.set_num_threads(1)
    trainer = Trainer(cfg, tmp_path / name, env=ChainEnv(num_envs=4))
    summary = trainer.run()
    import csv

    with open(tmp_path / name / "iterations.csv") as f:
        scores = [float(r["score"]) for r in csv.DictReader(f)]
    return trainer, summary, scores


def _assert_learned(scores, what):
    # Random play from state 2 scores about 0.43; the myopic policy 0.2; the optimum 1.0.
    assert scores[0] < 0.7, scores
    assert scores[-1] > 0.9, f"{what} did not learn the chain: scores per iteration {scores}"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["redo", "reset", "l2", "rigl", "wd"])
def test_methods_learn_the_chain(tmp_path, method):
    cfg = chain_config(fast_dqn(), sparsity=0.9 if method == "rigl" else 0.0, total_steps=4000)
    if method == "wd":
        cfg.agent.weight_decay = 1e-5
    elif method == "redo":
        cfg.redo = ReDoConfig(enabled=True, period=100, batch_size=64)
    elif method == "reset":  # both layers, twice, then time to relearn them
        cfg.reset = ResetConfig(enabled=True, period=250, layers="both", end_fraction=0.6)
    elif method == "l2":
        cfg.network.feature_norm = True
    else:
        cfg.pruning.method = "rigl"
        cfg.rigl = RigLConfig(update_freq=100)
    trainer, summary, scores = _learn(tmp_path, cfg)
    _assert_learned(scores, method)
    if method == "rigl":
        assert math.isclose(summary["sparsity/prunable"], 0.9, abs_tol=0.01), summary["sparsity/prunable"]


@pytest.mark.slow
def test_the_lottery_ticket_of_a_pruned_run_learns_the_chain(tmp_path):
    # The source only has to finish pruning: its masks and initial weights are the ticket.
    source = chain_config(fast_dqn(), sparsity=0.9, total_steps=1200)
    source.pruning.start_step, source.pruning.end_step, source.pruning.update_freq = 0, 100, 20
    _learn(tmp_path, source, "gmp")
    cfg = chain_config(fast_dqn(), sparsity=0.9, total_steps=4000)
    cfg.pruning.fixed_mask = str(tmp_path / "gmp")
    trainer, summary, scores = _learn(tmp_path, cfg, "ticket")
    _assert_learned(scores, "the lottery ticket")
    assert math.isclose(summary["sparsity/prunable"], 0.9, abs_tol=0.01)


def test_baseline_presets_are_their_dense_twin_plus_the_method():
    expected = {
        "redo": {"redo.enabled": True},
        "reset": {"reset.enabled": True},
        "wd": {"agent.weight_decay": 1e-5},
        "l2": {"network.feature_norm": True},
        "rigl90": {"pruning.method": "rigl", "pruning.final_sparsity": 0.9},
        "rigl95": {"pruning.method": "rigl", "pruning.final_sparsity": 0.95},
        "rigl99": {"pruning.method": "rigl", "pruning.final_sparsity": 0.99},
    }
    for width in (1, 2, 3, 4, 5):
        dense = experiment_fields(PRESETS[f"dqn_impala_w{width}_dense"].to_dict())
        for tag, diff in expected.items():
            fields = experiment_fields(PRESETS[f"dqn_impala_w{width}_{tag}"].to_dict())
            assert {k: v for k, v in fields.items() if dense[k] != v} == diff, (width, tag)
    redo, reset, rigl = PRESETS["dqn_impala_w3_redo"].redo, PRESETS["dqn_impala_w3_reset"].reset, RigLConfig()
    assert (redo.tau, redo.period, redo.batch_size) == (0.1, 1000, 256)
    assert (reset.period, reset.layers) == (100_000, "last")
    assert (rigl.update_freq, rigl.drop_fraction, rigl.end_fraction) == (5000, 0.3, 0.8)


@pytest.mark.parametrize("agent", ["rainbow", "iqn"])
def test_the_methods_compose_with_the_other_agents(tmp_path, agent):
    """RigL, ReDo, Reset and L2 together on Rainbow's and IQN's networks: every event happens, sparsity holds."""
    import json

    from tests.agents.test_learning import fast_agent

    cfg = chain_config(fast_agent(agent), sparsity=0.9, total_steps=500)
    cfg.agent.min_replay, cfg.iteration_steps = 100, 250
    cfg.pruning.method, cfg.rigl = "rigl", RigLConfig(update_freq=10)
    cfg.redo = ReDoConfig(enabled=True, period=10, batch_size=16)
    cfg.reset = ResetConfig(enabled=True, period=25, layers="penultimate")
    cfg.network.feature_norm = True
    trainer = Trainer(cfg, tmp_path / agent, env=ChainEnv(num_envs=2))
    trainer.run()
    rows = [json.loads(line) for line in (tmp_path / agent / "metrics.jsonl").read_text().splitlines()]
    last = trainer.grad_steps - 1
    assert [r["grad_steps"] for r in rows if "redo/recycled" in r] == list(range(10, last + 1, 10))
    assert [r["grad_steps"] for r in rows if "reset/events" in r] == list(range(25, last + 1, 25))
    for w, m, n in zip(trainer.pruner.weights, trainer.pruner.masks, trainer.pruner.active, strict=True):
        assert int(m.sum()) == n and torch.all(w[~m] == 0)


def test_weight_decay_is_coupled_and_reaches_the_trainers_adam(tmp_path):
    """--agent.weight-decay: wd * w joins the gradient before Adam's moments (torch.optim.Adam's weight_decay,
    the ReDo lab's add_decayed_weights then Adam), in the trainer's own optimizer."""
    cfg = chain_config(fast_dqn(weight_decay=1e-2), sparsity=0.0, total_steps=10**6)
    trainer = Trainer(cfg, tmp_path / "wd", env=ChainEnv(num_envs=2))
    assert all(g["weight_decay"] == 1e-2 for g in trainer.optimizer.param_groups)
    net = trainer.online
    ref = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    adam = torch.optim.Adam(ref, lr=cfg.agent.lr, eps=cfg.agent.adam_eps, weight_decay=1e-2)
    torch.manual_seed(1)
    for _ in range(3):
        for p, q in zip(net.parameters(), ref, strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        trainer.optimizer.step()
        adam.step()
    for p, q in zip(net.parameters(), ref, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-7)
    trainer.close()
