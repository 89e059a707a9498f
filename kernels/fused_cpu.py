"""Masked Adam on the CPU: PyTorch's fused Adam kernel, then re-masking with foreach ops.

The CPU has no Triton, so this is what a CPU run's optimizer step is (the `fused` backend, chosen by
default for CPU tensors; see `kernels.backend_for`). The reference loops over tensors with one op per
Adam term and costs ~19 ms per step on a 2-core CPU for the 4M weights of Dopamine's Nature CNN, ~22% of
an Atari-100k update; this path (`torch._fused_adam_`, then re-masking) takes ~3 ms and matches the reference to fp32
rounding (its vectorised loop orders some terms differently). The reference stays the oracle:
`PRUNERL_KERNELS=torch` selects it.

`moments="frozen"` (keep the pruned entries' moments) and bf16 gradients have no fused form; they go
through the reference.
"""

from __future__ import annotations

import torch

from kernels.reference import (
    adam_step,
    as_keep,
    check_adam_aliasing,
    check_adam_hyperparameters,
    check_adam_inputs,
    masked_adam_ref_,
)


@torch.no_grad()
def masked_adam_fused_(params, grads, exp_avgs, exp_avg_sqs, masks, *, step, lr: float, beta1: float = 0.9,
                       beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                       moments: str = "faithful") -> None:
    """`kernels.reference.masked_adam_ref_`'s contract (same arguments, same results to fp32 rounding)."""
    params, grads, exp_avgs, exp_avg_sqs, masks = map(list, (params, grads, exp_avgs, exp_avg_sqs, masks))
    if moments == "frozen" or any(g.dtype != torch.float32 for g in grads):  # (the reference checks the call)
        return masked_adam_ref_(params, grads, exp_avgs, exp_avg_sqs, masks, step=step, lr=lr, beta1=beta1,
                                beta2=beta2, eps=eps, weight_decay=weight_decay, moments=moments)
    check_adam_inputs(params, grads, exp_avgs, exp_avg_sqs, masks, moments)
    check_adam_hyperparameters(lr, beta1, beta2, eps, weight_decay)
    check_adam_aliasing(params, grads, exp_avgs, exp_avg_sqs, masks)
    step_t = torch.tensor(adam_step(step), dtype=torch.float32, device=params[0].device)
    # The fused op reads the step count (torch.optim.Adam increments it before the call) and does not change it.
    torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], [step_t] * len(params), lr=lr, beta1=beta1,
                       beta2=beta2, weight_decay=weight_decay, eps=eps, amsgrad=False, maximize=False)
    masked = [i for i, mask in enumerate(masks) if mask is not None]
    if not masked:
        return
    keep = [as_keep(masks[i]) for i in masked]
    torch._foreach_mul_([params[i] for i in masked], keep)
    if moments == "reset":
        torch._foreach_mul_([exp_avgs[i] for i in masked], keep)
        torch._foreach_mul_([exp_avg_sqs[i] for i in masked], keep)
