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
