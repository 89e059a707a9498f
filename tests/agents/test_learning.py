"""Dense and pruned agents must clearly learn the chain MDP through the real training loop.

A broken TD target (no bootstrapping, wrong discount, wrong sign) or a broken mask (pruning the wrong
weights, masks not applied) makes the agent settle for the near 0.2 reward or not learn at all.
"""

import csv
import dataclasses
import math

import pytest
import torch

from agents.config import AgentConfig, TrainConfig, paper_agent
from agents.networks import NetworkConfig
from agents.pruning import PruningConfig
from agents.train import Trainer
from tests.agents.chain_env import ChainEnv


def chain_config(agent: AgentConfig, sparsity: float, total_steps: int = 5000) -> TrainConfig:
    return TrainConfig(
        network=NetworkConfig(arch="impala", width=1), agent=agent,
        pruning=PruningConfig(final_sparsity=sparsity, start_step=100, end_step=700, update_freq=50),
        total_steps=total_steps, iteration_steps=1000, replay_capacity=20_000, log_every=1000,
        tensorboard=False, progress=False, device="cpu", seed=0)


def learn_chain(tmp_path, agent: AgentConfig, sparsity: float, total_steps: int = 5000, threads: int = 1):
    torch.set_num_threads(threads)
    trainer = Trainer(chain_config(agent, sparsity, total_steps), tmp_path / "run", env=ChainEnv(num_envs=4))
    summary = trainer.run()
    with open(tmp_path / "run" / "iterations.csv") as f:
        scores = [float(r["score"]) for r in csv.DictReader(f)]
    return trainer, summary, scores


def fast_dqn(**overrides) -> AgentConfig:
    base = dict(lr=1e-3, min_replay=400, epsilon_decay_steps=1500, target_update_period=200, gamma=0.9)
    return AgentConfig(**{**base, **overrides})


@pytest.mark.slow
@pytest.mark.parametrize("sparsity", [0.0, 0.9])
def test_dqn_learns_chain(tmp_path, sparsity):
    trainer, summary, scores = learn_chain(tmp_path, fast_dqn(), sparsity)
    # Random play from state 2 scores about 0.43; the myopic policy 0.2; the optimum 1.0.
    assert scores[0] < 0.7, scores
    assert scores[-1] > 0.9, f"DQN (sparsity {sparsity}) did not learn the chain: scores per iteration {scores}"
    if sparsity:
        prunable = summary["sparsity/prunable"]
        assert math.isclose(prunable, sparsity, abs_tol=0.01), prunable
        for w, m in zip(trainer.pruner.weights, trainer.pruner.masks):
            assert torch.all(w[~m] == 0), "a pruned weight is not zero"
        # The target network copies masked weights, so it is as sparse (synced after pruning ended).
        for (name, t), m in zip([(n, p) for n, p in trainer.target.named_parameters() if p.dim() > 1],
                                trainer.pruner.masks):
            assert torch.all(t[~m] == 0), name


def fast_agent(name: str) -> AgentConfig:
    """fast_dqn settings for the other agents, with their paper n-step (3), replay and C51 support. IQN and
    M-IQN use N = 16, N' = 24, K = 8 quantile samples (paper: 64, 64, 32): cheaper, and N != N' on purpose."""
    if name == "rainbow":
        return fast_dqn(name="rainbow", n_step=3, replay="prioritized")
    if name in ("der", "drq_eps", "cql", "cql_c51"):  # their own settings (n-step, double DQN, augmentation, ...)
        return dataclasses.replace(paper_agent(name), lr=1e-3, min_replay=400, epsilon_decay_steps=1500, gamma=0.9)
    if name in ("iqn", "miqn"):
        return fast_dqn(name=name, n_step=3, num_tau_samples=16, num_tau_prime_samples=24, num_quantile_samples=8)
    return fast_dqn(name=name)


@pytest.mark.slow
@pytest.mark.parametrize("sparsity", [0.0, 0.9])
@pytest.mark.parametrize("name", ["rainbow", "iqn", "miqn"])
def test_agents_learn_chain(tmp_path, name, sparsity):
    # One thread: 4,000 steps (900 gradient steps, the last 200 at the final sparsity) take ~15-30 s each.
    trainer, summary, scores = learn_chain(tmp_path, fast_agent(name), sparsity, total_steps=4000, threads=1)
    assert type(trainer.replay).__name__ == ("PrioritizedReplayBuffer" if name == "rainbow" else "ReplayBuffer")
    assert scores[0] < 0.7, scores
    assert scores[-1] > 0.9, f"{name} (sparsity {sparsity}) did not learn the chain: scores per iteration {scores}"
    if sparsity:
        assert math.isclose(summary["sparsity/prunable"], sparsity, abs_tol=0.01), summary["sparsity/prunable"]
        prunable = [(n, p) for n, p in trainer.online.named_parameters() if p.dim() > 1]
        assert [n for n, _ in prunable] == trainer.pruner.layer_names  # every weight, tau embedding included
        for (layer, w), t, m in zip(prunable, [p for p in trainer.target.parameters() if p.dim() > 1],
                                     trainer.pruner.masks, strict=True):
            assert torch.all(w[~m] == 0) and torch.all(t[~m] == 0), layer
