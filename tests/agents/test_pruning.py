import math
import re

import numpy as np
import pytest
import torch
from torch import nn

import kernels
from agents.config import get_preset
from agents.networks import NetworkConfig, make_network
from agents.pruning import (
    MaskedAdam,
    Pruner,
    PruningConfig,
    count_mask_updates,
    erk_sparsities,
    gmp_sparsity,
    is_mask_update,
    keep_count,
    last_mask_update,
    prunable_parameters,
    uniform_sparsities,
)


# --- the schedule ---------------------------------------------------------------------------------------------
def test_gmp_schedule_boundaries():
    start, end, s_f = 500_000, 2_000_000, 0.95
    assert gmp_sparsity(0, s_f, start, end) == 0.0
    assert gmp_sparsity(start - 2, s_f, start, end) == 0.0
    # The +1 of JaxPruner: at step == start, progress is already 1 / (end - start).
    assert gmp_sparsity(start, s_f, start, end) == pytest.approx(s_f * (1 - (1 - 1 / (end - start)) ** 3))
    assert gmp_sparsity(start - 1, s_f, start, end) == 0.0
    assert gmp_sparsity(end - 1, s_f, start, end) == pytest.approx(s_f)
    assert gmp_sparsity(end, s_f, start, end) == pytest.approx(s_f)
    assert gmp_sparsity(10 * end, s_f, start, end) == pytest.approx(s_f)
    mid = (start + end) // 2 - 1  # progress exactly 1/2
    assert gmp_sparsity(mid, s_f, start, end) == pytest.approx(s_f * (1 - 0.5**3))
    values = [gmp_sparsity(t, s_f, start, end) for t in range(0, 2_100_000, 1000)]
    assert all(a <= b for a, b in zip(values, values[1:])), "schedule must be monotone"


def test_gmp_schedule_start_equals_end_is_a_step():
    assert gmp_sparsity(9, 0.9, 10, 10) == 0.0
    assert gmp_sparsity(10, 0.9, 10, 10) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="start <= end"):
        gmp_sparsity(0, 0.9, 20, 10)


def test_mask_update_steps_inclusive_window():
    net = nn.Linear(4, 4)
    pruner = Pruner(net, PruningConfig(final_sparsity=0.5), start=500_000, end=2_000_000)
    updates = [t for t in range(0, 2_100_000, 1000) if pruner.is_update_step(t)]
    assert updates[0] == 500_000 and updates[-1] == 2_000_000 and len(updates) == 1501
    assert not pruner.is_update_step(500_001)


def test_paper_window_for_40m_frames():
    assert PruningConfig(final_sparsity=0.95).window(round(10_000_000 * 0.25)) == (500_000, 2_000_000)
    assert PruningConfig(final_sparsity=0.95).window(round(10_000_000 * 1.0)) == (2_000_000, 8_000_000)
    with pytest.raises(ValueError, match="start"):
        PruningConfig(final_sparsity=0.95, start_step=10, end_step=5).window(100)


def test_masks_are_also_updated_at_the_window_end():
    net = nn.Linear(4, 4)
    # The shortened preset: [200, 800] holds no multiple of update_freq = 1000.
    pruner = Pruner(net, PruningConfig(final_sparsity=0.5), start=200, end=800)
    assert [t for t in range(3000) if pruner.is_update_step(t)] == [800]
    pruner = Pruner(net, PruningConfig(final_sparsity=0.5, update_freq=50), start=150, end=499)
    assert [t for t in range(1000) if pruner.is_update_step(t)] == [*range(150, 451, 50), 499]
    rng = np.random.default_rng(0)
    for _ in range(300):  # counts and last updates against brute force over the steps
        freq = int(rng.integers(1, 30))
        start = int(rng.integers(0, 80))
        end = start + int(rng.integers(0, 80))
        updates = [t for t in range(end + 50) if start <= t <= end and (t % freq == 0 or t == end)]
        assert [t for t in range(end + 50) if is_mask_update(t, start, end, freq)] == updates
        assert count_mask_updates(start, end, freq) == len(updates)
        for done in range(end + 50):
            before = [t for t in updates if t < done]
            assert last_mask_update(done, start, end, freq) == (before[-1] if before else None), (start, end, freq)


def test_window_ends_by_the_runs_last_gradient_step():
    # The paper's runs keep JaxPruner's 500k / 2M: 80% of 2.5M, well before their 2,495,000th step.
    paper = get_preset("dqn_impala_w3_gmp95")
    run_steps = paper.min_grad_steps(num_envs=paper.env.num_envs)
    assert run_steps == len(range(20_004, 10_000_001, 4)) == 2_495_000  # Dopamine: j > 20k, j % 4 == 0
    assert paper.pruning.window(paper.nominal_grad_steps, run_steps) == (500_000, 2_000_000)
    # `--preset demo --total-steps 3000`: 750 nominal steps, but 1,000 of the 3,000 agent steps do not learn.
    demo = get_preset("demo")
    demo.total_steps = 3000
    run_steps = demo.min_grad_steps(num_envs=demo.env.num_envs)
    assert run_steps == 500 and demo.pruning.window(demo.nominal_grad_steps, run_steps) == (150, 499)
    warnings = demo.pruning.window_warnings(demo.nominal_grad_steps, run_steps)
    assert len(warnings) == 2 and "600" in warnings[0] and "499" in warnings[0]  # 8 updates: also too few
    assert "[150, 499] holds 8 mask update(s)" in warnings[1]
    # An explicit end is the user's: kept, with a warning saying where the schedule stops.
    explicit = PruningConfig(final_sparsity=0.95, end_step=600)
    assert explicit.window(750, 500) == (150, 600)
    assert "--pruning.end-step 600" in explicit.window_warnings(750, 500)[0]
    assert "never prunes" in PruningConfig(final_sparsity=0.95, start_step=600).window_warnings(750, 500)[0]
    assert PruningConfig(final_sparsity=0.0).window_warnings(750, 500) == []


def test_window_with_few_mask_updates_is_warned_with_its_numbers():
    cfg = get_preset("dqn_impala_w1_gmp95")  # the shortened paper preset
    cfg.total_steps, cfg.agent.min_replay, cfg.env.num_envs = 4000, 500, 4
    run_steps = cfg.min_grad_steps(cfg.env.num_envs)
    assert cfg.pruning.window(cfg.nominal_grad_steps, run_steps) == (200, 800)
    (warning,) = cfg.pruning.window_warnings(cfg.nominal_grad_steps, run_steps)
    assert "[200, 800] holds 1 mask update(s) (every 1,000 gradient steps and at its end)" in warning
    assert get_preset("dqn_impala_w1_gmp95").pruning.window_warnings(2_500_000, 2_495_000) == []


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_scheduled_sparsity_is_what_the_masks_hold(scope):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 7))
    cfg = PruningConfig(final_sparsity=0.8, update_freq=5, scope=scope)
    pruner = Pruner(net, cfg, start=3, end=17)
    assert pruner.scheduled_sparsity(0) == pruner.scheduled_sparsity(3) == 0.0
    for step in range(25):  # a stand-in for training: noisy weights, masks on the schedule, re-masking
        with torch.no_grad():
            for w in pruner.weights:
                w.add_(0.01 * torch.randn_like(w))
        if pruner.is_update_step(step):
            pruner.update_masks(step)
        pruner.apply_masks()
        assert pruner.sparsity_report()["sparsity/prunable"] == pruner.scheduled_sparsity(step + 1), step
    n = [w.numel() for w in pruner.weights]
    final = [keep_count(sum(n), 0.8)] if scope == "global" else [keep_count(k, t) for k, t in zip(n, pruner.targets)]
    assert pruner.scheduled_sparsity(18) == pruner.scheduled_sparsity(10**6) == (sum(n) - sum(final)) / sum(n)
    assert pruner.scheduled_sparsity(18) == pytest.approx(0.8, abs=0.01)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_unit_interval_is_rejected(bad):
    with pytest.raises(ValueError, match="sparsity"):
        PruningConfig(final_sparsity=bad)
    with pytest.raises(ValueError, match="sparsity"):
        erk_sparsities([(3, 3)], bad)
    with pytest.raises(ValueError, match="sparsity"):
        uniform_sparsities([(3, 3)], bad)
    if bad != 1.0:  # keep_count(n, 1.0) keeps one weight; -0.1 kept 110 of 100, 1.5 kept 1, NaN a bare round() error
        with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\]"):
            keep_count(100, bad)


# --- layer targets ----------------------------------------------------------------------------------------------
def _shapes(arch, width, outputs=18):
    return [tuple(p.shape) for _, p in prunable_parameters(make_network(NetworkConfig(arch, width), outputs))]


@pytest.mark.parametrize("arch,width,outputs,first,convs,dense,final", [
    # The spec's table (paper.md section 2.3), ERK at 0.95 with 18 actions.
    ("impala", 1, 18, 0.18, (0.70, 0.86), 0.960, 0.0),
    ("impala", 3, 18, 0.23, (0.89, 0.95), 0.953, 0.0),
    ("impala", 3, 18 * 51, 0.23, (0.89, 0.95), 0.953, 0.93),  # Rainbow's 512 -> 18 x 51 output layer
    ("nature", 1, 18, 0.86, (0.92, 0.93), 0.953, 0.0),
])
def test_erk_matches_spec_table(arch, width, outputs, first, convs, dense, final):
    shapes = _shapes(arch, width, outputs)
    s = erk_sparsities(shapes, 0.95)
    assert s[0] == pytest.approx(first, abs=0.006)
    assert all(convs[0] - 0.006 <= x <= convs[1] + 0.006 for x in s[1:-2])
    assert s[-2] == pytest.approx(dense, abs=0.0006)
    assert s[-1] == pytest.approx(final, abs=0.006)
    n = [math.prod(sh) for sh in shapes]
    kept = sum(keep_count(k, x) for k, x in zip(n, s))
    assert 1 - kept / sum(n) == pytest.approx(0.95, abs=1e-4), "ERK must keep the global budget"


def test_uniform_and_zero_sparsity():
    assert uniform_sparsities([(2, 3), (4, 5, 1, 1)], 0.9) == [0.9, 0.9]
    assert erk_sparsities([(2, 3), (4, 5)], 0.0) == [0.0, 0.0]


def test_keep_count_rounds_half_to_even_and_keeps_one():
    assert keep_count(10, 0.0) == 10
    assert keep_count(10, 0.95) == 1  # round(0.5) == 0, but at least one weight is kept
    assert keep_count(10, 0.75) == 2  # round(2.5) == 2 (half to even)
    assert keep_count(10, 0.65) == 4  # round(3.5) == 4
    assert keep_count(1000, 0.999999) == 1


# --- the pruner and the optimizer ---------------------------------------------------------------------------
def test_pruner_masks_exact_counts_and_ties():
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([0.5, -0.5, 0.25, 0.5, 0.0, 1.0] * 5).view(5, 6))
    pruner = Pruner(net, PruningConfig(final_sparsity=0.5, distribution="uniform"), start=0, end=0)
    pruner.update_masks(0)
    for w, m in zip(pruner.weights, pruner.masks):
        assert int(m.sum()) == keep_count(w.numel(), 0.5)
    m0 = pruner.masks[0].flatten()
    # 15 kept of 30: the five 1.0s, then ten of the fifteen |0.5|s in flat order (lower index first).
    halves = [i for i, v in enumerate(net[0].weight.flatten().abs().tolist()) if v == 0.5]
    assert m0[halves[:10]].all() and not m0[halves[10:]].any()
    assert pruner.mask0.data_ptr() == pruner.masks[0].data_ptr(), "masks must be updated in place"


def test_pruner_global_scope_uses_one_threshold():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 30), nn.Linear(30, 20))
    with torch.no_grad():
        net[1].weight.mul_(10)  # the second layer dominates by magnitude
    pruner = Pruner(net, PruningConfig(final_sparsity=0.5, scope="global"), start=0, end=0)
    pruner.update_masks(0)
    kept = sum(int(m.sum()) for m in pruner.masks)
    assert kept == keep_count(40 * 30 + 30 * 20, 0.5)
    assert pruner.masks[1].float().mean() > 0.9 > 0.5 > pruner.masks[0].float().mean()
    weights = [w.detach() for w in pruner.weights]
    threshold = min(float(w[m].abs().min()) for w, m in zip(weights, pruner.masks))
    assert all(float(w[~m].abs().max()) <= threshold for w, m in zip(weights, pruner.masks) if (~m).any())


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_pruner_mask_updates_warm_start_from_the_previous_threshold(monkeypatch, scope):
    """The top-k kernels keep a weight set's previous threshold by the identity of its tensors; the pruner
    passed new detached views at every update, so every mask update of a training run took the cold path (a
    second read of the weights and the full histogram). Its inputs are now the same tensors at every call."""
    from kernels import topk_mask

    monkeypatch.setenv("PRUNERL_KERNELS", "triton")  # (under TRITON_INTERPRET on a CPU)
    built, init = [], topk_mask._Workspace.__init__

    def counted_init(workspace, *args, **kwargs):
        built.append(workspace)
        init(workspace, *args, **kwargs)

    monkeypatch.setattr(topk_mask._Workspace, "__init__", counted_init)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 30), nn.Linear(30, 20))
    pruner = Pruner(net, PruningConfig(final_sparsity=0.9, scope=scope, update_freq=10), start=0, end=100)
    for step in range(0, 60, 10):
        with torch.no_grad():  # training moves the weights a little between mask updates
            for w in pruner.weights:
                w.add_(0.01 * torch.randn_like(w))
        pruner.update_masks(step)
        assert sum(int(m.sum()) for m in pruner.masks) == sum(pruner.keep_counts_at(step))
        pruner.apply_masks()
    inputs = [pruner._flat[0]] if scope == "global" else pruner._selection_inputs()
    assert len(built) == 1 and all(topk_mask.select_stats(inputs)["warm"])
    # And still exact: the global copy holds the weights as selected; masking kept the layers' selections.
    reference = kernels.reference.topk_magnitude_masks_ref(inputs, pruner.keep_counts)
    got = [pruner._flat[1]] if scope == "global" else pruner.masks
    assert all(torch.equal(a, b) for a, b in zip(got, reference))


def test_sparsity_report_counts_biases_in_total():
    net = nn.Linear(10, 10)
    pruner = Pruner(net, PruningConfig(final_sparsity=0.9, distribution="uniform"), start=0, end=0)
    pruner.update_masks(0)
    pruner.apply_masks()
    r = pruner.sparsity_report()
    assert r["sparsity/weight"] == pytest.approx(0.9)
    assert r["sparsity/total"] == pytest.approx(90 / 110)


@pytest.mark.parametrize("moments", ["faithful", "reset", "frozen"])
def test_masked_adam_matches_torch_adam_then_mask(moments):
    torch.manual_seed(1)
    ref_net = nn.Sequential(nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 3))
    net = nn.Sequential(nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 3))
    net.load_state_dict(ref_net.state_dict())
    masks = {p: torch.rand_like(p) > 0.6 for p in net.parameters() if p.dim() > 1}
    ref_masks = [masks[p] for p in net.parameters() if p.dim() > 1]
    opt = MaskedAdam(net.parameters(), lr=1e-2, eps=1.5e-4, masks=masks, moments=moments)
    ref_opt = torch.optim.Adam(ref_net.parameters(), lr=1e-2, eps=1.5e-4)
    for _ in range(25):
        x = torch.randn(16, 7)
        for model, o in ((net, opt), (ref_net, ref_opt)):
            o.zero_grad()
            model(x).pow(2).mean().backward()
            o.step()
        with torch.no_grad():
            for p, m in zip([p for p in ref_net.parameters() if p.dim() > 1], ref_masks):
                p.mul_(m)
                if moments == "faithful":
                    continue
                st = ref_opt.state[p]
                if moments == "reset":
                    st["exp_avg"].mul_(m)
                    st["exp_avg_sq"].mul_(m)
        if moments != "faithful":
            break  # reset/frozen diverge from plain Adam on pruned moments after step 1; checked in kernels tests
    for p, q in zip(net.parameters(), ref_net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    for p, m in masks.items():
        assert torch.all(p[~m] == 0)


@pytest.mark.parametrize("resume", [False, True])
def test_masked_adam_gives_each_parameter_its_own_bias_correction(resume):
    """A parameter whose first gradient comes later than the others' has a smaller step count; the group was
    updated with the first parameter's count (4.5e-3 off torch.optim.Adam at lr 1e-2 for the late one)."""
    torch.manual_seed(2)
    a, b = nn.Parameter(torch.randn(5, 4)), nn.Parameter(torch.randn(6, 3))
    a_ref, b_ref = nn.Parameter(a.detach().clone()), nn.Parameter(b.detach().clone())
    opt = MaskedAdam([a, b], lr=1e-2, eps=1e-8)
    ref = torch.optim.Adam([a_ref, b_ref], lr=1e-2, eps=1e-8, foreach=False)
    for step in range(6):
        grads = [torch.randn_like(a), torch.randn_like(b)]
        for (p, q), g in zip(((a, a_ref), (b, b_ref)), grads):
            p.grad = q.grad = g.clone() if p is a or step >= 3 else None  # b's first gradient at step 3
        opt.step()
        ref.step()
        if resume and step == 4:  # a resumed run reads the loaded counts once
            state = opt.state_dict()
            opt = MaskedAdam([a, b], lr=1e-2, eps=1e-8)
            opt.load_state_dict(state)
    assert [float(opt.state[p]["step"]) for p in (a, b)] == [6.0, 3.0]
    torch.testing.assert_close(a, a_ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(b, b_ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kw,message", [(dict(lr=float("nan")), "lr > 0"), (dict(lr=float("inf")), "lr > 0"),
                                        (dict(betas=(1.0, 0.999)), "beta1 = 1.0"),
                                        (dict(weight_decay=-1.0), "weight_decay = -1.0"),
                                        (dict(moments="sticky"), "moments must be one of")])
def test_masked_adam_refuses_bad_hyperparameters_when_made(kw, message):
    # They were accepted here and refused at the first step (a NaN lr), as torch.optim.Adam refuses them at once.
    net = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=re.escape(message)):
        MaskedAdam(net.parameters(), **{"lr": 1e-3, **kw})


def test_masked_adam_step_calls_its_closure():
    net = nn.Linear(3, 1)
    opt = MaskedAdam(net.parameters(), lr=1e-3)

    def closure():
        opt.zero_grad()
        loss = net(torch.ones(2, 3)).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and float(opt.state[net.weight]["step"]) == 1.0


def test_masked_adam_state_is_checkpointable():
    net = nn.Linear(4, 4)
    mask = {net.weight: torch.rand(4, 4) > 0.5}
    opt = MaskedAdam(net.parameters(), lr=1e-3, masks=mask)
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    state = opt.state_dict()
    opt2 = MaskedAdam(net.parameters(), lr=1e-3, masks=mask)
    opt2.load_state_dict(state)
    assert float(opt2.state[net.weight]["step"]) == 1.0
    torch.testing.assert_close(opt2.state[net.weight]["exp_avg"], opt.state[net.weight]["exp_avg"])


def test_topk_reference_counts_ties_and_zero_keep():
    w = torch.tensor([[0.0, 1.0, -1.0], [1.0, 0.5, -0.0]])
    (m,) = kernels.topk_magnitude_masks([w], [2])
    assert m.tolist() == [[False, True, True], [False, False, False]]
    (m0,) = kernels.topk_magnitude_masks([w], [0])
    assert not m0.any()
    (mall,) = kernels.topk_magnitude_masks([w], [6])
    assert mall.all()
    with pytest.raises(ValueError, match="keep_counts"):
        kernels.topk_magnitude_masks([w], [7])
