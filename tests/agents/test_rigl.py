"""RigL (agents/rigl.py) against a brute-force drop-and-grow, its initialisation and schedule, and inside the
training loop through a checkpoint and resume."""

import json
import math

import pytest
import torch
from torch import nn

from agents.pruning import MaskedAdam, PruningConfig, erk_sparsities, keep_count
from agents.rigl import RigL, RigLConfig, cosine_drop_fraction, sparse_init_
from agents.train import Trainer
from tests.agents.chain_env import ChainEnv
from tests.agents.test_learning import chain_config, fast_dqn
from tests.agents.test_plasticity import run_then_resume


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(40, 12)
        self.out = nn.Linear(12, 5)


def _rigl(sparsity=0.8, **kw):
    torch.manual_seed(0)
    model = Small()
    rigl = RigL(model, PruningConfig(final_sparsity=sparsity, method="rigl"), RigLConfig(**kw), end=1000)
    return model, rigl


def test_initial_masks_have_the_erk_counts_and_pruned_weights_are_zero():
    model, rigl = _rigl()
    shapes = [w.shape for w in rigl.weights]
    for w, m, s in zip(rigl.weights, rigl.masks, erk_sparsities(shapes, 0.8), strict=True):
        assert int(m.sum()) == keep_count(w.numel(), s)
        assert torch.all(w[~m] == 0) and torch.all(w[m] != 0)
    assert rigl.layer_sparsities(0) == rigl.layer_sparsities(10**6)  # constant
    total = sum(w.numel() for w in rigl.weights)
    assert rigl.scheduled_sparsity(0) == rigl.scheduled_sparsity(10**6) == 1 - sum(rigl.active) / total
    # another seed draws another topology
    torch.manual_seed(1)
    other = RigL(Small(), PruningConfig(final_sparsity=0.8, method="rigl"), RigLConfig(), end=1000)
    assert not torch.equal(other.masks[0], rigl.masks[0])


def test_sparse_init_scales_by_the_active_fans():
    torch.manual_seed(3)
    w = torch.empty(6, 4, 3, 3)
    mask = torch.rand(6, 4, 3, 3) < 0.3
    sparse_init_(w, mask)
    assert torch.all(w[~mask] == 0)
    for o in range(6):
        for i in range(4):
            fan_in = int(mask[o].sum())  # active weights into output unit o
            fan_out = int(mask[:, i].sum())  # active weights out of input unit i
            bound = math.sqrt(3 / max(1.0, (fan_in + fan_out) / 2))
            assert torch.all(w[o, i].abs() <= bound)
    assert w[mask].abs().max() > 0.5 * w[mask].abs().max()  # not degenerate
    dense = torch.empty(200, 300)
    sparse_init_(dense, torch.ones(200, 300, dtype=torch.bool))  # all active: Xavier-uniform, var 2/(in + out)
    assert dense.var().item() == pytest.approx(2 / 500, rel=0.05)


def _brute_force_update(weights, masks, grads, drops):
    """Per layer: keep the n - d active weights of largest |w|, grow d among the rest by largest |g| (ties by
    lower flat index); grown-where-inactive start at 0."""
    out = []
    for w, m, g, d in zip(weights, masks, grads, drops, strict=True):
        wf, mf, gf = w.detach().flatten(), m.flatten(), g.flatten()
        active = [i for i in range(len(mf)) if mf[i]]
        keep = sorted(active, key=lambda i: (-abs(float(wf[i])), i))[: len(active) - d]
        rest = [i for i in range(len(mf)) if i not in set(keep)]
        grow = sorted(rest, key=lambda i: (-abs(float(gf[i])), i))[:d]
        new_mask = torch.zeros_like(mf)
        new_mask[keep + grow] = True
        new_w = torch.where(new_mask, wf, torch.zeros_like(wf))
        fresh = torch.zeros_like(mf)
        fresh[[i for i in grow if not mf[i]]] = True
        out.append((new_mask.view_as(m), new_w.view_as(w), fresh.view_as(m)))
    return out


@pytest.mark.parametrize("dead_gradients", [False, True])
def test_drop_and_grow_match_brute_force(dead_gradients):
    model, rigl = _rigl(drop_fraction=0.3)
    opt = MaskedAdam(model.parameters(), lr=1e-2, masks=rigl.mask_for())
    rigl.optimizer = opt
    for _ in range(3):  # nonzero weights, moments everywhere
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
        if dead_gradients:  # most gradients exactly zero: grow counts must still be exact
            p.grad[torch.rand_like(p) < 0.9] = 0
    step = 250
    drops = rigl.drop_counts(step)
    assert drops == [math.floor(n * cosine_drop_fraction(step, 0.3, 1000)) for n in rigl.active] and min(drops) > 0
    want = _brute_force_update(rigl.weights, rigl.masks, [w.grad for w in rigl.weights], drops)
    moments = [(opt.state[w]["exp_avg"].clone(), opt.state[w]["exp_avg_sq"].clone()) for w in rigl.weights]
    rigl.set_keep_counts(step)
    rigl.select_masks()
    for w, m, n, (exp_avg, exp_avg_sq), (want_m, want_w, fresh) in zip(rigl.weights, rigl.masks, rigl.active,
                                                                       moments, want, strict=True):
        assert torch.equal(m, want_m) and int(m.sum()) == n
        assert torch.equal(w, want_w)
        state = opt.state[w]
        assert torch.all(state["exp_avg"][fresh] == 0) and torch.all(state["exp_avg_sq"][fresh] == 0)
        assert torch.equal(state["exp_avg"][~fresh], exp_avg[~fresh])
        assert torch.equal(state["exp_avg_sq"][~fresh], exp_avg_sq[~fresh])
        assert fresh.any()


def test_schedule_and_published_defaults():
    cfg = RigLConfig()
    assert (cfg.update_freq, cfg.drop_fraction, cfg.end_fraction, cfg.sparse_init) == (5000, 0.3, 0.8, True)
    assert cosine_drop_fraction(0, 0.3, 2_000_000) == pytest.approx(0.3)
    assert cosine_drop_fraction(1_000_000, 0.3, 2_000_000) == pytest.approx(0.15)
    assert cosine_drop_fraction(2_000_000, 0.3, 2_000_000) == pytest.approx(0.0)
    assert cosine_drop_fraction(3_000_000, 0.3, 2_000_000) == pytest.approx(0.0)
    _, rigl = _rigl()
    rigl.rigl.update_freq = 100
    assert [s for s in range(0, 1201) if rigl.is_update_step(s)] == list(range(0, 1001, 100))
    with pytest.raises(ValueError, match="final-sparsity"):
        PruningConfig(method="rigl")
    with pytest.raises(ValueError, match="scope layer"):
        RigL(Small(), PruningConfig(final_sparsity=0.9, method="rigl", scope="global"), RigLConfig(), end=10)


def test_rigl_in_the_loop_keeps_its_sparsity_and_survives_a_resume(tmp_path):
    cfg = chain_config(fast_dqn(min_replay=100), sparsity=0.9, total_steps=600)
    cfg.iteration_steps = 150
    cfg.pruning.method = "rigl"
    cfg.rigl = RigLConfig(update_freq=10, end_fraction=0.6)
    initial = [m.clone() for m in Trainer(cfg, tmp_path / "initial", env=ChainEnv()).pruner.masks]
    full, resumed, at = run_then_resume(tmp_path, cfg)
    for trainer in (full, resumed):
        p = trainer.pruner
        assert isinstance(p, RigL) and p.end == round(0.6 * cfg.nominal_grad_steps)
        updates = sum(p.is_update_step(s) for s in range(trainer.grad_steps))
        # every RigL update took the place of that step's Adam update, before and after the resume
        assert int(trainer.optimizer.state[p.weights[0]]["step"]) == trainer.grad_steps - updates > 0
        for w, m, n in zip(p.weights, p.masks, p.active, strict=True):
            assert int(m.sum()) == n and torch.all(w[~m] == 0)
        moved = sum(int((m != m0).sum()) for m, m0 in zip(p.masks, initial, strict=True))
        assert moved > 0, "no connection was dropped and regrown"
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["below_target_sparsity"] is False and summary["scheduled_sparsity"] == pytest.approx(0.9, abs=0.01)
    assert 0 < at < resumed.grad_steps


def test_trainer_puts_every_pruners_counts_on_its_device(tmp_path, monkeypatch):
    """The counts RigL's mask phase reads must be buffers on the training device, as GMP's are: left on the host
    (RigL was never moved with .to(device)), a CUDA-graph capture of that phase baked the counts of the update it
    was captured at into the graph, so every later drop-and-grow used them and the drop fraction stopped decaying
    (tests/agents/test_cuda_graphs.py::test_graphed_rigl_matches_eager checks the outcome on a GPU)."""
    moved = []
    real_to = nn.Module.to

    def spy(self, *args, **kwargs):
        if isinstance(self, RigL):
            moved.append(torch.device(args[0]) if args else kwargs.get("device"))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "to", spy)
    cfg = chain_config(fast_dqn(min_replay=100), sparsity=0.9, total_steps=600)
    cfg.pruning.method = "rigl"
    cfg.rigl = RigLConfig(update_freq=10)
    trainer = Trainer(cfg, tmp_path / "run", env=ChainEnv())
    assert moved == [trainer.device]
    buffers = [trainer.pruner.keep_counts, trainer.pruner.grow_counts, *trainer.pruner.masks]
    assert {b.device for b in buffers} == {trainer.pruner.weights[0].device}
