"""Fused masked Adam (Triton) vs the reference and vs torch.optim.Adam followed by masking.

On a CPU-only machine the launcher runs under TRITON_INTERPRET=1 (tests/conftest.py); `block` is shrunk so
that tensors span several programs.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernels
from kernels import masked_adam
from kernels.masked_adam import masked_adam_triton_
from kernels.reference import MOMENTS_MODES, masked_adam_ref_

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# fp32 tolerance: the kernel and PyTorch differ by FMA contraction and rounding of the scalar factors.
TOL = dict(rtol=1e-5, atol=1e-7)


def make_state(shapes, sparsity=0.7, grad_dtype=torch.float32, unmasked=(), gen=None):
    """params (pruned entries already 0), grads, moments, masks (None for indices in `unmasked`)."""
    params, grads, m, v, masks = [], [], [], [], []
    for i, s in enumerate(shapes):
        mask = None if i in unmasked else torch.rand(s, generator=gen) >= sparsity
        p = torch.randn(s, generator=gen)
        params.append((p if mask is None else p * mask).to(DEVICE))
        grads.append(torch.randn(s, generator=gen).to(DEVICE, grad_dtype))
        m.append((0.1 * torch.randn(s, generator=gen)).to(DEVICE))
        v.append((0.01 * torch.rand(s, generator=gen)).to(DEVICE))
        masks.append(None if mask is None else mask.to(DEVICE))
    return params, grads, m, v, masks


def clone_all(*lists):
    return [[t.clone() for t in ts] for ts in lists]


def assert_lists_close(got, want, **tol):
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, **(tol or TOL), msg=lambda s, i=i: f"tensor {i}: {s}")


SHAPES = [(3, 5), (100,), (7, 7, 3), (1,), (0,), (33, 2)]


@pytest.mark.parametrize("moments", MOMENTS_MODES)
@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("step_on_device", [False, True])
def test_masked_adam_matches_reference(moments, grad_dtype, step_on_device):
    params, grads, m, v, masks = make_state(SHAPES, grad_dtype=grad_dtype, unmasked=(1,))
    got, want = clone_all(params, m, v), clone_all(params, m, v)
    step_t = torch.zeros((), dtype=torch.int64, device=DEVICE)
    for step in range(1, 6):
        step_t += 1
        for g in grads:
            g.copy_(torch.randn(g.shape, device=DEVICE))
        kw = dict(step=step_t if step_on_device else step, lr=3e-3, beta1=0.9, beta2=0.999, eps=1e-6,
                  weight_decay=0.1 if step_on_device else 0.0, moments=moments)
        masked_adam_triton_(got[0], grads, got[1], got[2], masks, block=32, **kw)
        masked_adam_ref_(want[0], grads, want[1], want[2], masks, **kw)
    for g, w in zip(got, want):
        assert_lists_close(g, w)


@pytest.mark.parametrize("moments, weight_decay", [("faithful", 0.0), ("faithful", 0.05), ("reset", 0.05),
                                                   ("frozen", 0.05)])
def test_masked_adam_tracks_torch_adam_many_steps(monkeypatch, moments, weight_decay):
    # 100 steps of torch.optim.Adam + p.mul_(mask) (the project's faithful recipe), with the moments
    # option applied by hand; fresh random gradients each step; the mask changes halfway (a pruning update).
    # Weight decay is torch.optim.Adam's coupled one (g + wd * p), fused into the same launch.
    # (Frozen mode's live-sector list in one piece: other tests walk it in small ones; here it would cost
    # the interpreter 5x the time of the other modes.)
    monkeypatch.setattr(masked_adam, "LIVE_INTERPRETER_PROGRAMS", 1)
    monkeypatch.setattr(masked_adam, "LIVE_INTERPRETER_TURNS", 1)
    shapes = [(20, 9), (17,), (4, 3, 3)]
    params, grads, m, v, masks = make_state(shapes, sparsity=0.5, unmasked=(1,))
    ours = [p.clone() for p in params]
    ours_m = [torch.zeros_like(p) for p in params]
    ours_v = [torch.zeros_like(p) for p in params]
    theirs = [p.clone().requires_grad_() for p in params]
    opt = torch.optim.Adam(theirs, lr=1e-2, betas=(0.9, 0.99), eps=1.5e-4, weight_decay=weight_decay, foreach=False)
    for step in range(1, 101):
        if step == 50:
            masks[0] &= torch.rand(shapes[0], device=DEVICE) < 0.5
        for g, t in zip(grads, theirs):
            g.copy_(torch.randn(g.shape, device=DEVICE))
            t.grad = g.clone()
        if moments == "frozen":
            old = [(opt.state[t]["exp_avg"].clone(), opt.state[t]["exp_avg_sq"].clone()) if opt.state else None
                   for t in theirs]
        opt.step()
        with torch.no_grad():
            for i, (t, mask) in enumerate(zip(theirs, masks)):
                if mask is None:
                    continue
                t.mul_(mask)
                state = opt.state[t]
                if moments == "reset":
                    state["exp_avg"].mul_(mask)
                    state["exp_avg_sq"].mul_(mask)
                elif moments == "frozen" and old[i] is not None:
                    state["exp_avg"].copy_(torch.where(mask, state["exp_avg"], old[i][0]))
                    state["exp_avg_sq"].copy_(torch.where(mask, state["exp_avg_sq"], old[i][1]))
                elif moments == "frozen":  # first step: moments start at zero and stay zero where pruned
                    state["exp_avg"].mul_(mask)
                    state["exp_avg_sq"].mul_(mask)
        masked_adam_triton_(ours, grads, ours_m, ours_v, masks, step=step, lr=1e-2, beta1=0.9, beta2=0.99,
                            eps=1.5e-4, weight_decay=weight_decay, moments=moments, block=128)
        for p, mask in zip(ours, masks):
            if mask is not None:
                assert bool((p[~mask] == 0).all()), f"step {step}: a pruned weight is not exactly zero"
    assert_lists_close(ours, [t.detach() for t in theirs], rtol=1e-5, atol=1e-6)
    assert_lists_close(ours_m, [opt.state[t]["exp_avg"] for t in theirs], rtol=1e-5, atol=1e-7)
    assert_lists_close(ours_v, [opt.state[t]["exp_avg_sq"] for t in theirs], rtol=1e-5, atol=1e-8)


def test_frozen_moments_of_pruned_weights_are_bit_identical():
    params, grads, m, v, masks = make_state([(300,), (5, 40)], sparsity=0.9)
    m0, v0 = clone_all(m, v)
    masked_adam_triton_(params, grads, m, v, masks, step=3, lr=1e-3, moments="frozen", block=16)
    for mm, vv, mm0, vv0, mask in zip(m, v, m0, v0, masks):
        assert torch.equal(mm[~mask], mm0[~mask]) and torch.equal(vv[~mask], vv0[~mask])
        assert not torch.equal(mm[mask], mm0[mask])


@pytest.mark.parametrize("moments", MOMENTS_MODES)
def test_pruned_are_zero_never_touches_pruned_weights(moments):
    # With the promise, pruned weights are neither read nor written: poison them and check both facts.
    params, grads, m, v, masks = make_state([(200,), (9, 9)], sparsity=0.8)
    masks[1][:] = False  # a fully pruned tensor
    params[1].zero_()  # the promise
    want = clone_all(params, m, v)
    # With weight decay, a pruned weight that was read would reach the moments through g + wd * p.
    masked_adam_ref_(want[0], grads, want[1], want[2], masks, step=2, lr=1e-3, weight_decay=0.1, moments=moments)
    poisoned = [p.masked_fill(~mask, float("nan")) for p, mask in zip(params, masks)]
    got_m, got_v = clone_all(m, v)
    masked_adam_triton_(poisoned, grads, got_m, got_v, masks, step=2, lr=1e-3, weight_decay=0.1, moments=moments,
                        pruned_are_zero=True, block=16)
    for p, w, mask in zip(poisoned, want[0], masks):
        assert bool(p[~mask].isnan().all())  # untouched
        torch.testing.assert_close(p[mask], w[mask], **TOL)  # and kept weights never saw the NaN
    assert_lists_close(got_m, want[1])
    assert_lists_close(got_v, want[2])


def test_frozen_mode_zeroes_unzeroed_pruned_weights():
    # Without the promise a pruned weight that is not yet zero (the mask just changed) becomes zero.
    params, grads, m, v, masks = make_state([(150,)], sparsity=0.5)
    params[0].copy_(torch.randn(150, device=DEVICE))
    masked_adam_triton_(params, grads, m, v, masks, step=1, lr=1e-3, moments="frozen", block=16)
    assert bool((params[0][~masks[0]] == 0).all())


# --- sector granularity (frozen mode and pruned_are_zero decide per 8-element sector) -------------------------

SECTOR = 8
POISON = float("nan")


def sector_masks(shapes, gen):
    """Masks that stress the sector logic: random sectors that are all pruned, sectors with exactly one kept
    element (at a random lane), fully kept ones, a partial last sector whose only kept element is the last,
    and (the last shape) a tensor with nothing kept."""
    masks = []
    for i, s in enumerate(shapes):
        n = torch.Size(s).numel()
        flat = torch.zeros(n, dtype=torch.bool)
        if i < len(shapes) - 1:
            for start in range(0, n, SECTOR):
                width = min(SECTOR, n - start)
                kind = int(torch.randint(3, (), generator=gen))  # 0: all pruned, 1: one kept, 2: all kept
                if kind == 1:
                    flat[start + int(torch.randint(width, (), generator=gen))] = True
                elif kind == 2:
                    flat[start:start + width] = True
            flat[n - n % SECTOR:] = False
            flat[-1] = True
        masks.append(flat.view(s))
    return masks


def offset_view(t: torch.Tensor, offset: int) -> torch.Tensor:
    """A contiguous copy of `t` starting `offset` elements into a larger buffer (not 16-byte aligned)."""
    buf = torch.empty(t.numel() + offset, dtype=t.dtype, device=t.device)
    view = buf[offset:].view(t.shape)
    view.copy_(t)
    return view


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32)


@pytest.mark.parametrize("moments", MOMENTS_MODES)
@pytest.mark.parametrize("pruned_are_zero", [False, True])
@pytest.mark.parametrize("grad_dtype, offset", [(torch.float32, 0), (torch.bfloat16, 0), (torch.float32, 1)])
def test_sector_liveness_matches_reference(moments, pruned_are_zero, grad_dtype, offset):
    # Sizes that are not multiples of the sector or of the block; block=32 puts 4 sectors in a block, and
    # offset=1 shifts every tensor off 16-byte alignment (the unaligned path; sectors no longer match the
    # memory's). Pruned moments carry NaNs: frozen mode must keep them bit for bit, whole sectors or not.
    # Tensor 2 has no mask (plain Adam, as a bias). Without the promise, pruned weights start non-zero.
    gen = torch.Generator().manual_seed(7)
    shapes = [(45,), (3, 7, 5), (8,), (100,), (27,)]
    keeps = [mask.to(DEVICE) for mask in sector_masks(shapes, gen)]
    keeps[2][:] = True
    params, grads, m, v, _ = make_state(shapes, grad_dtype=grad_dtype, gen=gen)
    for p, mm, vv, keep in zip(params, m, v, keeps):
        if pruned_are_zero:
            p.mul_(keep)  # the promise (both runs start from it)
        else:
            p.copy_(torch.randn(p.shape, generator=gen).to(DEVICE))
        mm.masked_fill_(~keep, POISON)
        vv.masked_fill_(~keep, POISON)
    if offset:
        params, grads, m, v, keeps = ([offset_view(t, offset) for t in seq] for seq in (params, grads, m, v, keeps))
        assert all(t.data_ptr() % 16 for t in params + m + v)
    masks = [None if i == 2 else keep for i, keep in enumerate(keeps)]
    want = clone_all(params, m, v)
    kw = dict(step=3, lr=1e-2, weight_decay=0.1, moments=moments)
    masked_adam_ref_(want[0], grads, want[1], want[2], masks, **kw)
    got = clone_all(params, m, v)
    if pruned_are_zero:  # a pruned weight's value must not matter: poison it, it must come back unchanged
        for p, keep in zip(got[0], keeps):
            p.masked_fill_(~keep, POISON)
    masked_adam_triton_(got[0], grads, got[1], got[2], masks, pruned_are_zero=pruned_are_zero, block=32, **kw)
    for i, mask in enumerate(keeps):
        for name, g, w in zip(("p", "m", "v"), (got[0][i], got[1][i], got[2][i]), (want[0][i], want[1][i], want[2][i])):
            torch.testing.assert_close(g[mask], w[mask], **TOL, msg=lambda s, n=name, i=i: f"{n}[{i}] kept: {s}")
        p_pruned = got[0][i][~mask]
        if pruned_are_zero:
            assert bool(p_pruned.isnan().all()), f"p[{i}]: a pruned weight was changed"
        elif moments == "frozen":
            assert bool((p_pruned == 0).all()), f"p[{i}]: a pruned weight is not zero"
        else:  # (p + update) * 0: NaN where the poisoned moments made the update NaN, as in the reference
            torch.testing.assert_close(p_pruned, want[0][i][~mask], **TOL, equal_nan=True)
        if moments == "frozen":  # bit for bit, NaN payloads included
            for name, g, before in (("m", got[1][i], m[i]), ("v", got[2][i], v[i])):
                assert torch.equal(bits(g[~mask]), bits(before[~mask])), f"{name}[{i}]: a pruned moment changed"
        else:  # faithful and reset compute pruned moments like the reference (NaN stays NaN)
            for g, w in ((got[1][i], want[1][i]), (got[2][i], want[2][i])):
                torch.testing.assert_close(g[~mask], w[~mask], **TOL, equal_nan=True)


@pytest.mark.parametrize("pruned_are_zero", [False, True])
@pytest.mark.parametrize("live_list", ["tiles", "persistent", False])
def test_frozen_list_and_block_walks_match_reference(monkeypatch, live_list, pruned_are_zero):
    # Frozen mode walks a list of its live sectors (FROZEN_LIVE_LIST, the default: under the interpreter
    # several programs append to it and each walks several chunks; the list built by a program per tile, or
    # by a few that loop over the tiles, LIVE_BUILD_PROGRAMS_PER_SM) or every block. Both take the
    # reference's steps, pruned weights start non-zero unless promised, and the list's counters are left at
    # zero for the next call.
    monkeypatch.setattr(masked_adam, "FROZEN_LIVE_LIST", bool(live_list))
    monkeypatch.setattr(masked_adam, "LIVE_BUILD_PROGRAMS_PER_SM", int(live_list == "persistent"))
    gen = torch.Generator().manual_seed(11)
    shapes = [(45,), (3, 7, 5), (8,), (100,), (27,)]
    sectors = sum(-(-torch.Size(s).numel() // 32) for s in shapes) * 32 // 8  # block=32: 4 sectors per block
    rows, chunk = masked_adam._interpreter_live_sizes(sectors, masked_adam.INTERPRETER_PROGRAMS)
    assert sectors // rows >= 4 and sectors // chunk >= 3 * masked_adam.INTERPRETER_PROGRAMS
    assert sectors // rows > masked_adam.LIVE_INTERPRETER_BUILD_PROGRAMS  # (the persistent build loops)
    masks = [mask.to(DEVICE) for mask in sector_masks(shapes, gen)]
    masks[2] = None
    params, grads, m, v, _ = make_state(shapes, gen=gen)
    if pruned_are_zero:
        params = [p if mask is None else p * mask for p, mask in zip(params, masks)]
    got, want = clone_all(params, m, v), clone_all(params, m, v)
    for step in range(1, 4):
        for g in grads:
            g.copy_(torch.randn(g.shape, generator=gen).to(DEVICE))
        kw = dict(step=step, lr=1e-2, weight_decay=0.1, moments="frozen")
        masked_adam_triton_(got[0], grads, got[1], got[2], masks, pruned_are_zero=pruned_are_zero, block=32, **kw)
        masked_adam_ref_(want[0], grads, want[1], want[2], masks, **kw)
    for i, mask in enumerate(masks):
        torch.testing.assert_close(got[0][i], want[0][i], **TOL, msg=lambda s, i=i: f"p[{i}]: {s}")
        for name, g, w in (("m", got[1][i], want[1][i]), ("v", got[2][i], want[2][i])):
            torch.testing.assert_close(g, w, **TOL, msg=lambda s, n=name, i=i: f"{n}[{i}]: {s}")
            if mask is not None:
                assert torch.equal(bits(g[~mask]), bits(w[~mask])), f"{name}[{i}]: a pruned moment changed"
    if live_list:
        plan = masked_adam._plan_for(got[0], grads, got[1], got[2], masks, 32)
        assert plan.live.buffers and not plan.live.buffers[1].any(), "the list's counters were not reset"


def test_a_failed_frozen_update_launch_leaves_no_list_behind(monkeypatch):
    # The list is built by one launch and consumed (and its count reset) by the next: if that one fails, the
    # count is reset on the host, or the next call would walk this call's entries as well as its own.
    params, grads, m, v, masks = make_state([(50,), (33,)], sparsity=0.6)
    want = clone_all(params, m, v)
    masked_adam_ref_(want[0], grads, want[1], want[2], masks, step=1, lr=1e-2, moments="frozen")

    class FailingLaunch:
        def __getitem__(self, grid):
            raise RuntimeError("launch failed")

    real = masked_adam._frozen_live_kernel
    monkeypatch.setattr(masked_adam, "_frozen_live_kernel", FailingLaunch())
    with pytest.raises(RuntimeError, match="launch failed"):
        masked_adam_triton_(params, grads, m, v, masks, step=1, lr=1e-2, moments="frozen", block=16)
    monkeypatch.setattr(masked_adam, "_frozen_live_kernel", real)
    masked_adam_triton_(params, grads, m, v, masks, step=1, lr=1e-2, moments="frozen", block=16)
    for g, w in zip((params, m, v), want):
        assert_lists_close(g, w)


def test_first_frozen_step_inside_a_capture_is_refused(monkeypatch):
    # The list's counters must start at zero; zeros written inside a capture exist only once the graph replays.
    params, grads, m, v, masks = make_state([(40,)])
    monkeypatch.setattr(masked_adam._utils, "capturing", lambda device: True)
    with pytest.raises(RuntimeError, match="take one frozen step before capturing"):
        masked_adam_triton_(params, grads, m, v, masks, step=1, lr=1e-2, moments="frozen", block=16)


@pytest.mark.parametrize("pruned_are_zero", [False, True])
def test_frozen_all_pruned_tensor_and_block(pruned_are_zero):
    # Every sector dead, the last one partial: nothing of g, m, v may change; the weights become (or stay) zero.
    params, grads, m, v, masks = make_state([(67,), (70,)], sparsity=1.0)
    masks[1][:] = True  # a fully live neighbour in the same launch
    params[0].copy_(torch.randn(67, device=DEVICE) if not pruned_are_zero else torch.zeros(67, device=DEVICE))
    m0, v0 = clone_all(m, v)
    masked_adam_triton_(params, grads, m, v, masks, step=2, lr=1e-3, moments="frozen",
                        pruned_are_zero=pruned_are_zero, block=16)
    assert torch.equal(bits(m[0]), bits(m0[0])) and torch.equal(bits(v[0]), bits(v0[0]))
    assert bool((params[0] == 0).all())
    assert not torch.equal(m[1], m0[1])


def test_uint8_masks_and_all_none_masks():
    params, grads, m, v, masks = make_state([(40,), (6, 6)], sparsity=0.5)
    masks_u8 = [mask.to(torch.uint8) for mask in masks]
    for ms in (masks_u8, [None, None]):
        got, want = clone_all(params, m, v), clone_all(params, m, v)
        masked_adam_triton_(got[0], grads, got[1], got[2], ms, step=4, lr=1e-3, moments="reset", block=16)
        masked_adam_ref_(want[0], grads, want[1], want[2], ms, step=4, lr=1e-3, moments="reset")
        for g, w in zip(got, want):
            assert_lists_close(g, w)


def test_large_step_and_float_step_tensor():
    # torch.optim.Adam keeps its step as a float32 tensor; bias corrections at large t must still be right.
    params, grads, m, v, masks = make_state([(64,)])
    for step in (1, 2, 1000, 123_456):
        got, want = clone_all(params, m, v), clone_all(params, m, v)
        masked_adam_triton_(got[0], grads, got[1], got[2], masks, step=torch.tensor(float(step), device=DEVICE),
                            lr=1e-3, beta2=0.9999, block=16)
        masked_adam_ref_(want[0], grads, want[1], want[2], masks, step=step, lr=1e-3, beta2=0.9999)
        for g, w in zip(got, want):
            assert_lists_close(g, w)


def test_masked_adam_clear_errors():
    params, grads, m, v, masks = make_state([(8, 6)])
    call = dict(step=1, lr=1e-3)
    with pytest.raises(ValueError, match="not contiguous"):
        masked_adam_triton_([params[0].t()], [grads[0].t()], [m[0].t()], [v[0].t()], [masks[0].t()], **call)
    with pytest.raises(TypeError, match="float32"):
        masked_adam_triton_([params[0].half()], grads, m, v, masks, **call)
    with pytest.raises(TypeError, match="dtype"):
        masked_adam_triton_(params, grads, m, v, [masks[0].float()], **call)
    with pytest.raises(ValueError, match="shape"):
        masked_adam_triton_(params, [grads[0].flatten()], m, v, masks, **call)
    with pytest.raises(ValueError, match="moments"):
        masked_adam_triton_(params, grads, m, v, masks, step=1, lr=1e-3, moments="sticky")
    with pytest.raises(ValueError, match="step"):
        masked_adam_triton_(params, grads, m, v, masks, step=0, lr=1e-3)
    with pytest.raises(ValueError, match="step"):
        masked_adam_triton_(params, grads, m, v, masks, step=torch.ones(2, device=DEVICE), lr=1e-3)
    params2, grads2, m2, v2, masks2 = make_state([(3,), (4,)])
    with pytest.raises(TypeError, match="dtype"):  # one grad dtype per call
        masked_adam_triton_(params2, [grads2[0], grads2[1].bfloat16()], m2, v2, masks2, **call)


@pytest.mark.parametrize("backend", ["triton", "fused", "torch"])
@pytest.mark.parametrize("name, value", [("lr", -1e-3), ("lr", float("nan")), ("beta1", 1.0), ("beta2", -0.1),
                                         ("eps", -1e-8), ("weight_decay", -0.01), ("eps", float("inf"))])
def test_every_backend_refuses_adam_hyperparameters_torch_adam_refuses(monkeypatch, backend, name, value):
    """The kernel ops accepted a negative lr (gradient ascent) and beta = 1 (a division by zero in the bias
    correction); torch.optim.Adam refuses both. Nothing is written before the error."""
    monkeypatch.setenv("PRUNERL_KERNELS", backend)
    params, grads, m, v, masks = make_state([(8, 6)])
    before = clone_all(params, m, v)
    call = dict(step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
    call[name] = value
    with pytest.raises(ValueError, match=f"masked_adam_: {name} = {value!r}; expected"):
        kernels.masked_adam_(params, grads, m, v, masks, **call)
    assert_lists_close([params, m, v], before, rtol=0, atol=0)
    kernels.masked_adam_(params, grads, m, v, masks, step=1, lr=0.0, beta1=0.0, eps=0.0)  # the edges are allowed


@pytest.mark.parametrize("backend", ["triton", "fused", "torch"])
@pytest.mark.parametrize("step", [1.5, float("nan"), float("inf"), 2**32, "3", True, None])
def test_every_backend_refuses_a_step_that_is_no_whole_number_in_range(monkeypatch, backend, step):
    """A host step of 1.5 was truncated to 1 by the Triton launcher and used as 1.5 by the CPU paths; NaN made
    NaN weights on the CPU paths and a bare int() error on the Triton one; a string was parsed."""
    monkeypatch.setenv("PRUNERL_KERNELS", backend)
    params, grads, m, v, masks = make_state([(8, 6)])
    before = clone_all(params, m, v)
    with pytest.raises(ValueError, match=r"step must be a whole number in \[1, 2\*\*32\)"):
        kernels.masked_adam_(params, grads, m, v, masks, step=step, lr=1e-3)
    assert_lists_close([params, m, v], before, rtol=0, atol=0)
    kernels.masked_adam_(params, grads, m, v, masks, step=3.0, lr=1e-3)  # a whole float (torch.optim's) is a step


@pytest.mark.parametrize("backend", ["triton", "fused", "torch"])
def test_every_backend_names_an_entry_that_is_not_a_tensor(monkeypatch, backend):
    """A None in a list failed deep in a backend (`descriptor 'data_ptr' ... doesn't apply to a 'NoneType'`), and a
    bare tensor for a list was iterated row by row. Both name the argument now, and nothing is written."""
    monkeypatch.setenv("PRUNERL_KERNELS", backend)
    params, grads, m, v, masks = make_state([(8, 6), (5,)])
    before = clone_all(params, m, v)
    for lists, message in [
        ((params, [grads[0], None], m, v, masks), r"grads\[1\] must be a tensor, got NoneType"),
        (([None, params[1]], grads, m, v, masks), r"params\[0\] must be a tensor, got NoneType"),
        ((params, grads, m, [v[0], 0.0], masks), r"exp_avg_sqs\[1\] must be a tensor, got float"),
        ((params[0], grads[0], m[0], v[0], [masks[0]] * 8), r"params must be a list of tensors, got a tensor of "
                                                            r"shape \(8, 6\) \(iterating it would give its rows\)"),
        ((params, grads, m, v, None), r"masks must be a list of tensors, got None \(for no masks, pass \[None\]"),
        ((params, None, m, v, masks), r"grads must be a list of tensors, got None$"),
    ]:
        with pytest.raises(TypeError, match=message):
            kernels.masked_adam_(*lists, step=1, lr=1e-3)
    assert_lists_close([params, m, v], before, rtol=0, atol=0)
    kernels.masked_adam_(params, grads, m, v, [masks[0], None], step=1, lr=1e-3)  # a None mask is allowed


@pytest.mark.parametrize("backend", ["triton", "fused", "torch"])
def test_every_backend_keeps_nonzero_uint8_masks_and_refuses_aliases(monkeypatch, backend):
    """The CPU paths multiplied by a uint8 mask, so a 2 doubled the weight (the kernels keep any nonzero), and
    wrote through outputs that overlap inputs (the kernels refuse)."""
    monkeypatch.setenv("PRUNERL_KERNELS", backend)
    params, grads, m, v, masks = make_state([(8, 6)], sparsity=0.5)
    uint8 = [masks[0].to(torch.uint8) * 2]
    p_ref, m_ref, v_ref = clone_all(params, m, v)
    masked_adam_ref_(p_ref, grads, m_ref, v_ref, masks, step=3, lr=1e-2)
    kernels.masked_adam_(params, grads, m, v, uint8, step=3, lr=1e-2)
    assert_lists_close(params, p_ref)
    with pytest.raises(ValueError, match="overlaps"):
        kernels.masked_adam_(params, [params[0]], m, v, masks, step=4, lr=1e-2)  # the gradient is the weight
    w = torch.randn(64, device=DEVICE)
    with pytest.raises(ValueError, match="overlaps"):
        kernels.topk_magnitude_masks([w], [9], out=[w.view(torch.bool)[:64]])  # the output is the weight


@st.composite
def adam_cases(draw):
    n_seg = draw(st.integers(1, 4))
    shapes = [(draw(st.integers(0, 300)),) for _ in range(n_seg)]
    unmasked = {i for i in range(n_seg) if draw(st.booleans()) and draw(st.booleans())}
    sparsity = draw(st.sampled_from([0.0, 0.5, 0.95, 1.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    kw = dict(step=draw(st.integers(1, 10_000)), lr=draw(st.sampled_from([1e-4, 6.25e-5, 1e-2])),
              beta1=draw(st.sampled_from([0.9, 0.0, 0.5])), beta2=draw(st.sampled_from([0.999, 0.99])),
              eps=draw(st.sampled_from([1e-8, 1.5e-4, 3.125e-4])), moments=draw(st.sampled_from(MOMENTS_MODES)),
              weight_decay=draw(st.sampled_from([0.0, 0.0, 1e-2])))
    return shapes, unmasked, sparsity, seed, kw, draw(st.sampled_from([16, 64, 1024]))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(adam_cases())
def test_masked_adam_property_matches_reference(case):
    shapes, unmasked, sparsity, seed, kw, block = case
    params, grads, m, v, masks = make_state(shapes, sparsity=sparsity, unmasked=unmasked,
                                            gen=torch.Generator().manual_seed(seed))
    got, want = clone_all(params, m, v), clone_all(params, m, v)
    masked_adam_triton_(got[0], grads, got[1], got[2], masks, block=block, **kw)
    masked_adam_ref_(want[0], grads, want[1], want[2], masks, **kw)
    for g, w in zip(got, want):
        assert_lists_close(g, w)
    for p, mask in zip(got[0], masks):
        if mask is not None:
            assert bool((p[~mask] == 0).all())


def test_public_op_dispatches_to_triton(monkeypatch):
    monkeypatch.setenv("PRUNERL_KERNELS", "triton")
    params, grads, m, v, masks = make_state([(30,), (4, 4)])
    want = clone_all(params, m, v)
    kernels.masked_adam_(params, grads, m, v, masks, step=2, lr=1e-3, moments="faithful", pruned_are_zero=True)
    masked_adam_ref_(want[0], grads, want[1], want[2], masks, step=2, lr=1e-3, moments="faithful")
    for g, w in zip((params, m, v), want):
        assert_lists_close(g, w)


def test_masked_adam_op_under_torch_compile():
    params, grads, m, v, masks = make_state([(30,), (4, 4)], unmasked=(1,))
    want = clone_all(params, m, v)
    step = torch.tensor(3, device=DEVICE)

    @torch.compile(backend="aot_eager", fullgraph=True)
    def update(ps, gs, ms, vs, masks, step):
        masked_adam_triton_(ps, [g * 1.0 for g in gs], ms, vs, masks, step=step, lr=1e-3, moments="reset")

    update(params, grads, m, v, masks, step)
    masked_adam_ref_(want[0], grads, want[1], want[2], masks, step=3, lr=1e-3, moments="reset")
    for g, w in zip((params, m, v), want):
        assert_lists_close(g, w)


def test_masked_adam_op_registration_opcheck():
    params, grads, m, v, masks = make_state([(20,), (3, 3)], unmasked=(1,))
    torch.library.opcheck(torch.ops.prunerl.masked_adam_.default,
                          (params, grads, m, v, masks, None, 2, 1e-3, 0.9, 0.999, 1e-8, 0.01, "frozen", False, 16),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.gpu
@pytest.mark.parametrize("moments, live_list", [("faithful", True), ("reset", True), ("frozen", True),
                                                ("frozen", False)])
def test_masked_adam_realistic_sizes_gpu(monkeypatch, moments, live_list):
    # 8M elements at 95%: ~340k live sectors, so each program of frozen mode's list walk takes a few chunks.
    monkeypatch.setattr(masked_adam, "FROZEN_LIVE_LIST", live_list)
    params, grads, m, v, masks = make_state([(2048, 3872), (512,), (32, 32, 3, 3)], sparsity=0.95, unmasked=(1,),
                                            grad_dtype=torch.bfloat16)
    got, want = clone_all(params, m, v), clone_all(params, m, v)
    masked_adam_triton_(got[0], grads, got[1], got[2], masks, step=7, lr=6.25e-5, eps=1.5e-4, moments=moments)
    masked_adam_ref_(want[0], grads, want[1], want[2], masks, step=7, lr=6.25e-5, eps=1.5e-4, moments=moments)
    for g, w in zip(got, want):
        assert_lists_close(g, w)


@pytest.mark.gpu
def test_masked_adam_cuda_graph_capture():
    params, grads, m, v, masks = make_state([(1000,), (37,)], unmasked=(1,))
    want = clone_all(params, m, v)
    step = torch.zeros((), dtype=torch.int64, device="cuda")

    def update():
        step.add_(1)
        masked_adam_triton_(params, grads, m, v, masks, step=step, lr=1e-3, moments="frozen")

    update()  # warm-up: compiles the kernel and caches the device tables
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        update()
    for _ in range(4):  # capture records without running: warm-up + 4 replays = 5 steps
        graph.replay()
    for s in range(1, 6):
        masked_adam_ref_(want[0], grads, want[1], want[2], masks, step=s, lr=1e-3, moments="frozen")
    assert int(step) == 5
    for g, w in zip((params, m, v), want):
        assert_lists_close(g, w)


def test_kernel_tables_built_inside_a_graph_capture_hold_the_same_values():
    """Tables first needed inside a CUDA-graph capture are written by fill kernels (no host-to-device copy);
    they must hold exactly what the host-built table holds, pointers (beyond 2^53) included."""
    from kernels import _utils

    pointers = torch.tensor([0, 2**62 + 12345, 140737488355328, 7], dtype=torch.int64)
    assert torch.equal(_utils.filled_on_device(pointers, torch.device("cpu")), pointers)
    plan, _ = _utils.block_plan([5, 300, 17], 64, torch.device("cpu"))
    assert torch.equal(_utils.filled_on_device(plan, torch.device("cpu")), plan)
