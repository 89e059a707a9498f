import pytest
import torch

from agents.networks import ImpalaResNet, NatureCNN, NetworkConfig, _same_pads, count_parameters, make_network


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


def test_initialisation_follows_dopamine():
    torch.manual_seed(0)
    net = ImpalaResNet(18, width=3)
    assert all(torch.all(b == 0) for n, b in net.named_parameters() if n.endswith("bias"))
    conv = net.encoder[1].conv.weight  # stack entry conv: xavier uniform
    fan_in, fan_out = conv[0].numel(), conv.shape[0] * conv[0, 0].numel()
    assert conv.abs().max() <= (6 / (fan_in + fan_out)) ** 0.5
    res = net.encoder[3].blocks[1].conv2.weight  # residual conv: truncated LeCun normal, std^2 = 1/fan_in
    std = (1 / res[0].numel()) ** 0.5
    assert res.std().item() == pytest.approx(std, rel=0.05)
    assert res.abs().max() <= 2 * std / 0.8796 + 1e-6


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
