"""The CPU masked Adam (PyTorch's fused Adam, then re-masking) against the reference, and the CPU dispatch."""

import pytest
import torch

import kernels
from kernels.fused_cpu import masked_adam_fused_
from kernels.reference import MOMENTS_MODES, masked_adam_ref_
from tests.kernels.test_masked_adam import SHAPES, assert_lists_close, clone_all

# fp32 rounding: the fused kernel's vectorised loop contracts and orders some terms differently.
TOL = dict(rtol=1e-6, atol=1e-9)


def cpu_state(shapes, sparsity=0.6, grad_dtype=torch.float32, unmasked=(), seed=0):
    gen = torch.Generator().manual_seed(seed)
    masks = [None if i in unmasked else torch.rand(s, generator=gen) >= sparsity for i, s in enumerate(shapes)]
    params = [torch.randn(s, generator=gen) * (1 if k is None else k) for s, k in zip(shapes, masks)]
    grads = [torch.randn(s, generator=gen).to(grad_dtype) for s in shapes]
    m = [0.1 * torch.randn(s, generator=gen) for s in shapes]
    v = [0.01 * torch.rand(s, generator=gen) for s in shapes]
    return params, grads, m, v, masks


@pytest.mark.parametrize("moments", MOMENTS_MODES)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("step_kind", ["int", "float_tensor", "int_tensor"])
def test_fused_matches_reference(moments, weight_decay, step_kind):
    params, grads, m, v, masks = cpu_state(SHAPES, unmasked=(1,))
    got, want = clone_all(params, m, v), clone_all(params, m, v)
    for step in range(1, 5):
        for g in grads:
            g.copy_(torch.randn(g.shape))
        step_arg = {"int": step, "float_tensor": torch.tensor(float(step)), "int_tensor": torch.tensor(step)}[step_kind]
        kw = dict(step=step_arg, lr=3e-3, beta1=0.9, beta2=0.999, eps=1.5e-4, weight_decay=weight_decay,
                  moments=moments)
        masked_adam_fused_(got[0], grads, got[1], got[2], masks, **kw)
        masked_adam_ref_(want[0], grads, want[1], want[2], masks, **kw)
        if isinstance(step_arg, torch.Tensor):
            assert step_arg.item() == step, "the step count must be read, not incremented"
    for g, w in zip(got, want):
        assert_lists_close(g, w, **TOL)
    for p, mask in zip(got[0], masks):
        if mask is not None:
            assert bool((p[~mask] == 0).all()), "a pruned weight is not exactly zero"


def test_fused_uint8_masks_bf16_grads_and_no_masks():
    params, grads, m, v, masks = cpu_state([(40,), (6, 6)], sparsity=0.5)
    cases = [([k.to(torch.uint8) for k in masks], grads), ([None, None], grads),
             (masks, [g.bfloat16() for g in grads])]  # bf16 grads go through the reference
    for ms, gs in cases:
        got, want = clone_all(params, m, v), clone_all(params, m, v)
        masked_adam_fused_(got[0], gs, got[1], got[2], ms, step=4, lr=1e-3, moments="reset")
        masked_adam_ref_(want[0], gs, want[1], want[2], ms, step=4, lr=1e-3, moments="reset")
        for g, w in zip(got, want):
            assert_lists_close(g, w, **TOL)


def test_fused_clear_errors():
    params, grads, m, v, masks = cpu_state([(8, 6)])
    with pytest.raises(ValueError, match="step"):
        masked_adam_fused_(params, grads, m, v, masks, step=0, lr=1e-3)
    with pytest.raises(ValueError, match="shape"):
        masked_adam_fused_(params, [grads[0].flatten()], m, v, masks, step=1, lr=1e-3)
    with pytest.raises(TypeError, match="float32"):
        masked_adam_fused_([params[0].double()], grads, m, v, masks, step=1, lr=1e-3)
    with pytest.raises(ValueError, match="moments"):
        masked_adam_fused_(params, grads, m, v, masks, step=1, lr=1e-3, moments="sticky")


def test_cpu_dispatch(monkeypatch):
    monkeypatch.delenv("PRUNERL_KERNELS", raising=False)
    assert kernels.backend_for(torch.device("cpu")) == "fused"
    assert kernels.backend_for(torch.device("meta")) == "torch"
    monkeypatch.setenv("PRUNERL_KERNELS", "torch")
    assert kernels.backend_for(torch.device("cpu")) == "torch"
    monkeypatch.setenv("PRUNERL_KERNELS", "cuda")
    with pytest.raises(ValueError, match="PRUNERL_KERNELS"):
        kernels.backend_for(torch.device("cpu"))
    # the public op on the CPU: the fused path, equal to the reference
    monkeypatch.delenv("PRUNERL_KERNELS")
    params, grads, m, v, masks = cpu_state([(30,), (4, 4)])
    want = clone_all(params, m, v)
    kernels.masked_adam_(params, grads, m, v, masks, step=2, lr=1e-3)
    masked_adam_ref_(want[0], grads, want[1], want[2], masks, step=2, lr=1e-3)
    for g, w in zip((params, m, v), want):
        assert_lists_close(g, w, **TOL)


def test_fused_non_contiguous_tensors():
    # Transposed params, grads, moments and masks (what a user's own state may be): same results as the reference.
    params, grads, m, v, masks = (list(t.t() for t in ts) for ts in cpu_state([(6, 5), (3, 9)]))
    assert not params[0].is_contiguous()
    got, want = clone_all(params, m, v), clone_all(params, m, v)
    masked_adam_fused_(got[0], grads, got[1], got[2], masks, step=3, lr=1e-2, moments="reset")
    masked_adam_ref_(want[0], grads, want[1], want[2], masks, step=3, lr=1e-2, moments="reset")
    for g, w in zip(got, want):
        assert_lists_close(g, w, **TOL)
