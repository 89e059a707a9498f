"""Analysis metrics of the paper's section 5.1 (Fig. 11): dormant neurons, srank, norms, Q statistics.

Definitions (paper.md section 7):

- tau-dormant neurons (Sokar et al. 2023; Dopamine `labs/redo/weight_recyclers.py`): for a layer with
  post-ReLU activations h, `s_i = E|h_i| / (mean_k E|h_k| + 1e-9)`, the expectation over a batch of
  states (and, for conv layers, over spatial positions: a neuron is a channel). Neuron i is dormant
  when s_i <= tau (tau = 0.1). The total is the pooled fraction over all hidden layers; the output
  layer has no ReLU and is therefore excluded.
- srank (Kumar et al. 2021): with singular values s_1 >= ... >= s_d of the penultimate feature matrix
  [B, D], srank = min{k : sum_{i<=k} s_i / sum_i s_i >= 1 - delta}, delta = 0.01.
- param_norm: the global l2 norm of all parameters (pruned weights are zeros and add nothing).
- q_mean / q_var: mean and (population) variance of all B x A predicted Q-values; q_norm: mean over
  the batch of ||Q(s, .)||_2. The paper does not define these three exactly; these are our choices.

- gradient covariance (Fig. 14, following Lyle et al. 2023): for per-sample gradients g_1..g_k of the TD
  loss on a fixed batch of transitions, C_ij = <g_i, g_j> / (||g_i|| ||g_j||), the cosine similarity (not
  mean-centred; the paper gives no exact normalisation). A pruned network's parameters are its active weights:
  the trainer masks the gradient entries of pruned weights before comparing.

`analysis_metrics(net, obs)` works on any nn.Module whose hidden activations come from `nn.ReLU`
*modules* (functional `F.relu` calls are invisible to it) and whose forward returns Q-values [B, A]
(pass `q_fn` otherwise). Every call of a ReLU module counts as one layer, named after the module
(`name#1`, `name#2` for repeated calls of a shared module); the last ReLU call of the forward pass
gives the penultimate features for srank. Activations are reduced inside the hook, so a wide Impala
net with a large batch does not keep every feature map alive.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

# --- pure functions -------------------------------------------------------------------------------


def _neuron_axis(h: torch.Tensor) -> int:
    """[B, C, H, W] conv maps and [B, H] dense activations: axis 1; [B, N, H] (e.g. IQN): the last."""
    if h.dim() < 2:
        raise ValueError(f"activations need a batch axis and a neuron axis, got shape {tuple(h.shape)}")
    return 1 if h.dim() in (2, 4) else h.dim() - 1


def mean_abs_activation(h: torch.Tensor) -> torch.Tensor:
    """E|h_i| per neuron: mean over every axis except the neuron axis. Returns [H] in float32."""
    axis = _neuron_axis(h)
    dims = [d for d in range(h.dim()) if d != axis]
    return h.detach().abs().float().mean(dim=dims)


def neuron_scores(h_or_mean_abs: torch.Tensor, reduced: bool = False) -> torch.Tensor:
    """s_i = E|h_i| / (mean_k E|h_k| + 1e-9). Pass `reduced=True` when giving E|h_i| directly."""
    m = h_or_mean_abs.float() if reduced else mean_abs_activation(h_or_mean_abs)
    return m / (m.mean() + 1e-9)  # 1e-9 as in Dopamine: an all-zero layer is entirely dormant


def dormant_fractions(mean_abs: Mapping[str, torch.Tensor], tau: float = 0.1) -> dict[str, float]:
    """{layer: E|h_i| [H]} -> {layer: dormant fraction, ..., 'total': pooled fraction over all neurons}."""
    if not mean_abs:
        raise ValueError("no hidden layers given; is the network using nn.ReLU modules?")
    out, dead, total = {}, 0, 0
    for name, m in mean_abs.items():
        dormant = neuron_scores(m, reduced=True) <= tau
        out[name] = dormant.float().mean().item()
        dead += int(dormant.sum())
        total += dormant.numel()
    out["total"] = dead / total
    return out


def srank(features: torch.Tensor, delta: float = 0.01) -> int:
    """Effective rank of a [B, D] feature matrix (Kumar et al. 2021)."""
    if features.dim() != 2:
        raise ValueError(f"srank wants a [batch, features] matrix, got shape {tuple(features.shape)}")
    f = features.detach()
    sv = torch.linalg.svdvals(f if f.dtype == torch.float64 else f.float()).double().cpu()
    if sv.sum() <= 0:
        return 0  # all-zero features: nothing is represented
    cum = torch.cumsum(sv, 0) / sv.sum()
    # small tolerance so an exactly-reached threshold is not lost to rounding in the cumsum
    return int(torch.searchsorted(cum, torch.tensor([1.0 - delta - 1e-12], dtype=cum.dtype)).item()) + 1


def param_norm(module: nn.Module) -> float:
    """Global l2 norm of all parameters."""
    with torch.no_grad():
        return torch.sqrt(sum((p.detach().float() ** 2).sum() for p in module.parameters())).item()


def q_stats(q: torch.Tensor) -> dict[str, float]:
    """Mean, mean per-state l2 norm, and variance of Q-values [B, A]."""
    if q.dim() != 2:
        raise ValueError(f"Q-values must be [batch, actions], got shape {tuple(q.shape)}")
    q = q.detach().float()
    return {
        "q_mean": q.mean().item(),
        "q_norm": q.norm(dim=1).mean().item(),
        "q_var": q.var(unbiased=False).item(),
    }


# --- collecting activations ------------------------------------------------------------------------


def relu_activation_stats(
    net: nn.Module, obs: torch.Tensor, q_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
    """One no-grad forward pass with hooks on every nn.ReLU.

    Returns (q_values, {layer: E|h_i| [H]}, penultimate features [B', D] = output of the last ReLU call).
    """
    mean_abs: dict[str, torch.Tensor] = {}
    last: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_module, _inputs, output):
            key, k = name, 1
            while key in mean_abs:  # a shared ReLU module called several times
                key, k = f"{name}#{k}", k + 1
            mean_abs[key] = mean_abs_activation(output)
            last["h"] = output.detach()

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in net.named_modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            q = q_fn(net, obs) if q_fn is not None else net(obs)
    finally:
        for h in handles:
            h.remove()
    features = last.get("h")
    if features is not None:
        features = features.flatten(1) if features.dim() != 3 else features.reshape(-1, features.shape[-1])
    return q, mean_abs, features


def analysis_metrics(
    net: nn.Module,
    obs_batch: torch.Tensor,
    tau: float = 0.1,
    delta: float = 0.01,
    q_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """All Fig. 11 metrics for one fixed batch of replay states, keyed for the metrics log.

    Keys: analysis/dormant_frac, analysis/dormant/<layer>, analysis/srank, analysis/param_norm,
    analysis/q_mean, analysis/q_norm, analysis/q_var. Fractions are in [0, 1].
    q_fn(net, obs) -> [B, A] replaces net(obs) for networks whose forward returns something else.
    """
    q, mean_abs, features = relu_activation_stats(net, obs_batch, q_fn)
    if not isinstance(q, torch.Tensor) or q.dim() != 2:
        shape = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"the network's forward must return Q-values [batch, actions], got {shape}; pass q_fn")
    if not mean_abs:
        raise ValueError(
            f"{type(net).__name__} has no nn.ReLU modules (functional relu is not hooked); "
            "dormant neurons and srank need module ReLUs"
        )
    fractions = dormant_fractions(mean_abs, tau)
    out = {"analysis/dormant_frac": fractions.pop("total")}
    out.update({f"analysis/dormant/{name}": frac for name, frac in fractions.items()})
    out["analysis/srank"] = float(srank(features, delta))
    out["analysis/param_norm"] = param_norm(net)
    out.update({f"analysis/{k}": v for k, v in q_stats(q).items()})
    return out


# --- gradient covariance (Fig. 14) ----------------------------------------------------------------------


def per_sample_gradients(loss_of: Callable[[int], torch.Tensor], params: list[torch.Tensor], n: int,
                         masks: list[torch.Tensor | None] | None = None) -> torch.Tensor:
    """[n, P]: row i is the flattened gradient of `loss_of(i)` (a scalar) over `params`, each times its mask
    when one is given. Gradients are taken with autograd.grad, so no parameter's .grad is touched."""
    masks = masks if masks is not None else [None] * len(params)
    out = torch.empty(n, sum(p.numel() for p in params), dtype=torch.float32, device=params[0].device)
    for i in range(n):
        grads = torch.autograd.grad(loss_of(i), params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g if m is None else g * m
                 for g, p, m in zip(grads, params, masks)]
        out[i] = torch.cat([g.float().flatten() for g in grads])
    return out


def gradient_covariance(grads: torch.Tensor) -> torch.Tensor:
    """Normalised covariance [k, k] of per-sample gradients [k, P]: cosine similarities; a zero gradient's row
    and column are 0."""
    g = grads.double()
    norms = g.norm(dim=1)
    gram = g @ g.T
    return (gram / (norms[:, None] * norms[None, :]).clamp_min(torch.finfo(torch.float64).tiny)).float()


def covariance_summary(cov: torch.Tensor) -> dict[str, float]:
    """Mean and mean absolute value of the off-diagonal entries: how aligned / how interfering the samples are."""
    k = cov.shape[0]
    off = cov[~torch.eye(k, dtype=torch.bool, device=cov.device)]
    return {"analysis/grad_cos_mean": off.mean().item(), "analysis/grad_cos_abs_mean": off.abs().mean().item()}
