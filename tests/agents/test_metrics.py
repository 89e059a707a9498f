"""agents.metrics: dormant neurons and srank on hand-built activations with known answers."""

import pytest
import torch
from torch import nn

from agents import metrics

# --- dormant neurons --------------------------------------------------------------------------------


def test_dense_layer_with_exactly_k_dead_units():
    h = torch.rand(64, 10) + 0.5  # every unit clearly active
    h[:, [1, 4, 7]] = 0.0  # three dead units
    scores = metrics.neuron_scores(h)
    assert (scores <= 0.1).sum().item() == 3
    fr = metrics.dormant_fractions({"fc": metrics.mean_abs_activation(h)}, tau=0.1)
    assert fr["fc"] == pytest.approx(0.3) and fr["total"] == pytest.approx(0.3)


def test_neuron_score_threshold_is_relative_to_layer_mean():
    # E|h| = [1, 1, 1, 0.1]: mean 0.775, so s_3 = 0.129 > 0.1 (not dormant) but <= 0.2.
    m = torch.tensor([1.0, 1.0, 1.0, 0.1])
    assert metrics.neuron_scores(m, reduced=True)[3].item() == pytest.approx(0.1 / 0.775)
    assert metrics.dormant_fractions({"l": m}, tau=0.1)["l"] == 0.0
    assert metrics.dormant_fractions({"l": m}, tau=0.2)["l"] == 0.25
    # an all-zero layer is entirely dormant (the 1e-9 keeps the division finite)
    assert metrics.dormant_fractions({"l": torch.zeros(5)})["l"] == 1.0


def test_conv_neuron_is_a_channel_averaged_over_batch_and_space():
    h = torch.rand(8, 6, 5, 5) + 0.5
    h[:, 2] = 0.0  # dead channel
    h[:, 5, 0, 0] = 100.0  # one hot pixel makes channel 5 large on average, not "many neurons"
    m = metrics.mean_abs_activation(h)
    assert m.shape == (6,)
    assert m[2] == 0 and m[5] > m[0]
    fr = metrics.dormant_fractions({"conv": m})
    assert fr["conv"] == pytest.approx(1 / 6)


def test_total_is_pooled_over_neurons_not_averaged_over_layers():
    a = torch.ones(4)
    a[0] = 0  # 1 of 4 dead
    b = torch.ones(16)
    b[:8] = 0  # 8 of 16 dead
    fr = metrics.dormant_fractions({"a": a, "b": b})
    assert fr["a"] == 0.25 and fr["b"] == 0.5
    assert fr["total"] == pytest.approx(9 / 20)


# --- srank --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 3, 7])
def test_srank_of_known_rank_matrix(rank):
    g = torch.Generator().manual_seed(rank)
    # equal singular values: cumsum/sum = k/rank, so srank is exactly `rank` for delta < 1/rank
    u, _ = torch.linalg.qr(torch.randn(50, rank, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(20, rank, generator=g, dtype=torch.float64))
    phi = (u @ v.T).float()
    assert metrics.srank(phi, delta=0.01) == rank


def test_srank_from_singular_values():
    # singular values 10, 5, 4, 1 (sum 20): cumulative 0.5, 0.75, 0.95, 1.0 (float64 keeps 0.95 exact enough)
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(30, 4, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(6, 4, dtype=torch.float64))
    phi = u @ torch.diag(torch.tensor([10.0, 5.0, 4.0, 1.0], dtype=torch.float64)) @ v.T
    assert metrics.srank(phi, delta=0.01) == 4
    assert metrics.srank(phi, delta=0.05) == 3  # 0.95 >= 1 - 0.05 exactly
    assert metrics.srank(phi, delta=0.3) == 2
    assert metrics.srank(torch.zeros(5, 3)) == 0
    with pytest.raises(ValueError, match="batch, features"):
        metrics.srank(torch.zeros(5))


# --- norms and Q statistics -----------------------------------------------------------------------


def test_param_norm_and_q_stats():
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 0.0]]))
        lin.bias.fill_(4.0)
    assert metrics.param_norm(lin) == pytest.approx(5.0)
    q = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    s = metrics.q_stats(q)
    assert s["q_mean"] == pytest.approx(1.75)
    assert s["q_norm"] == pytest.approx(2.5)  # (5 + 0) / 2
    assert s["q_var"] == pytest.approx(torch.tensor([3.0, 4.0, 0.0, 0.0]).var(unbiased=False).item())


# --- analysis_metrics on a module ---------------------------------------------------------------------


class TinyQNet(nn.Module):
    """conv(4 ch) -> ReLU -> flatten -> fc(6) -> ReLU -> out(3); dead units are planted via biases."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.conv_relu = nn.ReLU()
        self.fc = nn.Linear(4 * 3 * 3, 6)
        self.fc_relu = nn.ReLU()
        self.out = nn.Linear(6, 3)
        with torch.no_grad():
            self.conv.weight.abs_()
            self.conv.bias.fill_(1.0)
            self.conv.bias[1] = -1e3  # channel 1 never fires
            self.fc.weight.abs_()
            self.fc.bias.fill_(1.0)
            self.fc.bias[[0, 3]] = -1e3  # units 0 and 3 never fire

    def forward(self, x):
        return self.out(self.fc_relu(self.fc(self.conv_relu(self.conv(x)).flatten(1))))


def test_analysis_metrics_on_a_module():
    torch.manual_seed(0)
    net = TinyQNet()
    obs = torch.rand(32, 1, 5, 5)
    out = metrics.analysis_metrics(net, obs)
    assert out["analysis/dormant/conv_relu"] == pytest.approx(1 / 4)
    assert out["analysis/dormant/fc_relu"] == pytest.approx(2 / 6)
    assert out["analysis/dormant_frac"] == pytest.approx(3 / 10)
    # penultimate features = fc_relu output: 6 units, 2 dead -> rank <= 4
    feats = net.fc_relu(net.fc(net.conv_relu(net.conv(obs)).flatten(1)))
    assert out["analysis/srank"] == metrics.srank(feats) <= 4
    assert out["analysis/param_norm"] == pytest.approx(metrics.param_norm(net))
    q = net(obs)
    assert out["analysis/q_mean"] == pytest.approx(q.mean().item(), rel=1e-5)
    assert set(out) == {
        "analysis/dormant_frac",
        "analysis/dormant/conv_relu",
        "analysis/dormant/fc_relu",
        "analysis/srank",
        "analysis/param_norm",
        "analysis/q_mean",
        "analysis/q_norm",
        "analysis/q_var",
    }
    assert all(isinstance(v, float) for v in out.values())
    # hooks are removed afterwards
    assert all(not m._forward_hooks for m in net.modules())


def test_shared_relu_module_counts_each_call_as_a_layer():
    relu = nn.ReLU()
    net = nn.Sequential(nn.Linear(3, 4), relu, nn.Linear(4, 4), relu, nn.Linear(4, 2))
    out = metrics.analysis_metrics(net, torch.randn(16, 3))
    assert {"analysis/dormant/1", "analysis/dormant/1#1"} <= set(out)


def test_analysis_metrics_clear_errors():
    with pytest.raises(ValueError, match="nn.ReLU"):
        metrics.analysis_metrics(nn.Linear(3, 2), torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"Q-values \[batch, actions\]"):
        metrics.analysis_metrics(
            nn.Sequential(nn.Linear(3, 4), nn.ReLU()), torch.randn(4, 3), q_fn=lambda n, x: n(x)[0]
        )


def test_analysis_metrics_on_project_networks():
    networks = pytest.importorskip("agents.networks")
    for net in (networks.NatureCNN(num_actions=6), networks.ImpalaResNet(num_actions=6)):
        obs = torch.randint(0, 255, (8, 4, 84, 84), dtype=torch.uint8)
        out = metrics.analysis_metrics(net, obs)
        assert 0.0 <= out["analysis/dormant_frac"] <= 1.0
        assert 1 <= out["analysis/srank"] <= 8  # at most the batch size
        assert any(k.startswith("analysis/dormant/") for k in out)
