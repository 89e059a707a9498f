import math

import pytest
import torch

from agents.config import paper_agent
from agents.networks import ImpalaResNet, NatureCNN, NetworkConfig, _same_pads, count_parameters, make_network
from agents.train import make_agent


@pytest.mark.parametrize("width,expected", [(1, 2_089_954), (3, 6_830_978), (5, 12_346_146)])
def test_impala_parameter_counts_match_spec(width, expected):
    assert count_parameters(ImpalaResNet(18, width=width)) == expected


def test_nature_parameter_count_and_flatten():
    net = NatureCNN(18)
    assert count_parameters(net) == 4_052_658
    assert net.feature_dim == 11 * 11 * 64  # SAME padding, as in Dopamine JAX
    assert NatureCNN(18, padding="valid").feature_dim == 7 * 7 * 64


def test_tf_same_padding_is_asymmetric_like_tf():
    assert _same_pads(84, 8, 4) == (2, 2)
    assert _same_pads(21, 4, 2) == (1, 2)
    assert _same_pads(84, 3, 2) == (0, 1)  # Impala max-pool: 84 -> 42
    assert _same_pads(21, 3, 2) == (1, 1)  # 21 -> 11


@pytest.mark.parametrize("arch", ["impala", "nature"])
def test_uint8_input_and_output_shape(arch):
    net = make_network(NetworkConfig(arch=arch, width=2), 7)
    x = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    q = net(x)
    assert q.shape == (3, 7) and q.dtype == torch.float32
    torch.testing.assert_close(q, net(x.float() / 255.0))  # scaling by 1/255 happens inside
    assert net.features(x).shape == (3, 512)


def _expected_init(name: str, weight: torch.Tensor, agent: str, init: str) -> tuple[str, float]:
    """(distribution, variance) of a weight at initialisation, from Dopamine's networks (dopamine/jax/networks.py
    at 485ea99): ImpalaEncoder's Stack has Xavier-uniform entry convs and Flax-default (truncated LeCun normal)
    residual convs for every agent; the other layers take the network's own initializer, Xavier-uniform in
    NatureDQNNetwork / ImpalaDQNNetwork and variance_scaling(1/sqrt(3), fan_in, uniform) in RainbowNetwork and
    ImplicitQuantileNetwork. `--network.init xavier` makes those Xavier for every agent."""
    fan_in, fan_out = weight[0].numel(), weight.shape[0] * weight[0, 0].numel()
    xavier = ("uniform", 2 / (fan_in + fan_out))
    if ".blocks." in name:
        return "truncated_normal", 1 / fan_in
    if name.endswith(".conv.weight"):
        return xavier
    if agent == "dqn" or init == "xavier":
        return xavier
    return "uniform", 1 / math.sqrt(3) / fan_in


@pytest.mark.parametrize("init", ["dopamine", "xavier"])
@pytest.mark.parametrize("arch", ["nature", "impala"])
@pytest.mark.parametrize("agent", ["dqn", "rainbow", "iqn", "miqn"])
def test_initialisation_follows_each_agents_dopamine_network(agent, arch, init):
    torch.manual_seed(0)
    net = make_agent(paper_agent(agent), 18).build_network(NetworkConfig(arch=arch, init=init))
    weights = [(n, p) for n, p in net.named_parameters() if p.dim() > 1]
    assert len(weights) == (5 if arch == "nature" else 17) + (agent in ("iqn", "miqn"))
    for name, p in net.named_parameters():
        if p.dim() == 1:
            assert torch.all(p == 0), f"bias {name} is not zero"
            continue
        kind, variance = _expected_init(name, p, agent, init)
        w = p.detach().double().flatten()
        # The sample variance of n draws has relative standard deviation sqrt((kurtosis - 1) / n): kurtosis
        # 9/5 for a uniform, below 3 for a normal truncated at 2 std. Allow 5 of those.
        kurtosis = 9 / 5 if kind == "uniform" else 3.0
        tolerance = 5 * math.sqrt((kurtosis - 1) / w.numel())
        assert w.pow(2).mean().item() == pytest.approx(variance, rel=tolerance), (name, kind)
        assert abs(w.mean().item()) < 5 * math.sqrt(variance / w.numel()), name
        bound = math.sqrt(3 * variance) if kind == "uniform" else 2 * math.sqrt(variance) / 0.87962566103423978
        assert w.abs().max().item() <= bound * (1 + 1e-6), (name, kind)
        if kind == "uniform":  # fills its interval: not a (truncated) normal of the same variance
            assert w.abs().max().item() >= bound * (1 - 20 / w.numel()), name


def test_unknown_init_is_rejected():
    with pytest.raises(ValueError, match="init"):
        NetworkConfig(init="he")


@pytest.mark.parametrize("width", [0, -1])
def test_width_below_one_is_rejected(width):
    with pytest.raises(ValueError, match="width"):
        NetworkConfig(width=width)
    with pytest.raises(ValueError, match="width"):
        ImpalaResNet(18, width=width)


@pytest.mark.parametrize("kernel, stride", [(3, 2), (2, 2), (3, 1), (4, 3), (5, 2)])
def test_same_max_pool_equals_explicit_minus_inf_padding(kernel, stride):
    """The pad-free path (pool padding + ceil_mode) gives the windows of TF 'SAME' with -inf padding, forward
    and backward, on every input size (ties and all-negative values included)."""
    import math

    import torch.nn.functional as F

    from agents.networks import _same_pads, same_max_pool

    for h in range(1, 30):
        w = h + 3
        x = torch.randint(-3, 1, (2, 3, h, w)).float().requires_grad_(True)  # small ints: ties, negatives
        y = same_max_pool(x, kernel, stride)
        (t, b), (lf, r) = _same_pads(h, kernel, stride), _same_pads(w, kernel, stride)
        xr = x.detach().clone().requires_grad_(True)
        ref = F.max_pool2d(F.pad(xr, (lf, r, t, b), value=-math.inf), kernel, stride)
        assert y.shape[-2:] == (math.ceil(h / stride), math.ceil(w / stride)), (h, w)
        assert torch.equal(y, ref), (h, w)
        g = torch.randn_like(y)
        y.backward(g)
        ref.backward(g)
        assert torch.equal(x.grad, xr.grad), (h, w)


def test_impala_pools_take_the_pad_free_path():
    from agents.networks import _pool_pads_natively, _same_pads

    for size in (84, 42, 21, 11):  # the Impala stacks' inputs
        top, _ = _same_pads(size, 3, 2)
        assert _pool_pads_natively((size, size), 3, 2, top, top), size
