"""CUDA-graph learner steps and greedy actions on a GPU: same results as eager execution, and no host sync in
eager learner steps.

These run only where CUDA is available (`pytest -m gpu`); `test_graph_safe.py` checks the same properties
on the CPU as far as a CPU can.
"""

import pytest
import torch

from agents.rigl import RigLConfig
from agents.train import Trainer
from tests.agents.chain_env import ChainEnv
from tests.agents.test_graph_safe import trainer_ready_to_learn
from tests.agents.test_learning import chain_config, fast_agent

pytestmark = pytest.mark.gpu


def _train(tmp_path, name: str, agent: str, cuda_graphs: str) -> Trainer:
    cfg = chain_config(fast_agent(agent), sparsity=0.9, total_steps=1500)
    cfg.agent.min_replay = 200
    cfg.device, cfg.replay_device, cfg.cuda_graphs, cfg.torch_deterministic = "cuda", "auto", cuda_graphs, True
    cfg.pruning.start_step, cfg.pruning.end_step, cfg.pruning.update_freq = 0, 250, 20
    torch.manual_seed(0)
    trainer = Trainer(cfg, tmp_path / name, env=ChainEnv(num_envs=3, max_steps=12))
    trainer.run()
    return trainer


@pytest.fixture
def deterministic():
    """Bitwise-reproducible CUDA ops for one test: cuDNN's default weight-gradient algorithms accumulate with
    atomics, so two eager runs of 1,500 steps already differ (masks included) and could hide nothing. An op
    without a deterministic implementation raises, naming itself."""
    previous = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True)  # the trainers set cuDNN's flags from --torch-deterministic
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous


@pytest.mark.parametrize("agent", ["dqn", "rainbow", "iqn", "miqn", "der", "drq_eps"])  # drq_eps: augmentation
def test_graphed_learner_matches_eager(tmp_path, agent, deterministic):
    eager = _train(tmp_path, "eager", agent, "off")
    graphed = _train(tmp_path, "graphed", agent, "on")
    assert not eager.graphs.enabled and eager.graphs.captured == []
    prioritized = graphed.cfg.agent.replay == "prioritized"
    expected = {"act", "sample", "learner", "mask", "optimizer"} | ({"priorities"} if prioritized else set())
    assert set(graphed.graphs.captured) == expected
    assert graphed.grad_steps == eager.grad_steps > 250
    for name, m, n in zip(eager.pruner.layer_names, eager.pruner.masks, graphed.pruner.masks, strict=True):
        assert torch.equal(m, n), f"{name}: {(m != n).sum().item()} of {m.numel()} mask entries differ"
    for (name, p), q in zip(eager.online.named_parameters(), graphed.online.parameters()):
        torch.testing.assert_close(q, p, msg=name)


@pytest.mark.parametrize("agent", ["dqn", "rainbow", "iqn", "drq_eps"])
def test_eager_learner_step_never_syncs(tmp_path, agent):
    trainer = trainer_ready_to_learn(tmp_path, agent, device="cuda")
    trainer.learn()  # creates the Adam state
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.learn()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_loaded_optimizer_state_keeps_the_step_on_the_gpu():
    from agents.pruning import MaskedAdam

    w = torch.nn.Parameter(torch.randn(8, 8, device="cuda"))
    opt = MaskedAdam([w], lr=1e-3, masks={w: torch.ones_like(w, dtype=torch.bool)})
    w.grad = torch.randn_like(w)
    opt.step()
    state = opt.state_dict()
    state["state"][0]["step"] = state["state"][0]["step"].cpu()  # as torch.load(map_location="cpu") gives it
    fresh = MaskedAdam([w], lr=1e-3, masks={w: torch.ones_like(w, dtype=torch.bool)})
    fresh.load_state_dict(state)
    assert fresh.state[w]["step"].device == w.device and fresh.state[w]["step"].dtype == torch.float32
    fresh.step()


def test_graphed_rigl_matches_eager(tmp_path, deterministic):
    """RigL's drop counts change at every mask update (cosine decay): the graphed mask phase, captured at its 4th
    call, must read them from the device buffers the trainer writes, not replay the captured update's counts."""

    def train(name, cuda_graphs):
        cfg = chain_config(fast_agent("dqn"), sparsity=0.9, total_steps=1500)
        cfg.agent.min_replay = 200
        cfg.device, cfg.replay_device, cfg.cuda_graphs, cfg.torch_deterministic = "cuda", "auto", cuda_graphs, True
        cfg.pruning.method = "rigl"
        cfg.pruning.start_step = cfg.pruning.end_step = None
        cfg.pruning.update_freq = 1000
        cfg.rigl = RigLConfig(update_freq=20)
        torch.manual_seed(0)
        trainer = Trainer(cfg, tmp_path / name, env=ChainEnv(num_envs=3, max_steps=12))
        trainer.run()
        return trainer

    eager, graphed = train("eager", "off"), train("graphed", "on")
    assert "mask" in graphed.graphs.captured
    assert len({tuple(eager.pruner.drop_counts(s)) for s in range(0, eager.pruner.end + 1, 20)}) > 5
    for name, m, n in zip(eager.pruner.layer_names, eager.pruner.masks, graphed.pruner.masks, strict=True):
        assert torch.equal(m, n), f"{name}: {(m != n).sum().item()} of {m.numel()} mask entries differ"
    for (name, p), q in zip(eager.online.named_parameters(), graphed.online.parameters()):
        torch.testing.assert_close(q, p, msg=name)
