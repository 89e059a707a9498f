"""--network.feature-norm, the 'L2' baseline (Kumar et al. 2022's feature normalization): the output layer reads the
penultimate features divided by their l2 norm, for every agent and network."""

import pytest
import torch

from agents.config import AgentConfig
from agents.networks import NetworkConfig, make_network
from agents.train import make_agent

OBS = (4, 12, 12)


@pytest.mark.parametrize("arch", ["impala", "nature"])
@pytest.mark.parametrize("agent", ["dqn", "rainbow", "iqn"])
def test_output_layer_reads_unit_norm_features(arch, agent):
    a = make_agent(AgentConfig(name=agent, **({"num_quantile_samples": 4} if agent == "iqn" else {})), num_actions=3)
    torch.manual_seed(0)
    plain = a.build_network(NetworkConfig(arch=arch), OBS)
    torch.manual_seed(0)
    normed = a.build_network(NetworkConfig(arch=arch, feature_norm=True), OBS)
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in normed.named_parameters()]
    for p, q in zip(plain.parameters(), normed.parameters(), strict=True):
        assert torch.equal(p, q)  # same initialisation: the option adds no parameter and draws nothing
    obs = torch.randint(0, 256, (5, *OBS), dtype=torch.uint8)
    psi = normed.encoder(obs)
    if agent == "iqn":  # brute force: the quantile head at fixed taus, by hand
        taus = torch.rand(5, 4)
        phi = torch.relu(normed.tau_embedding(torch.cos(taus[..., None] * torch.pi * torch.arange(1, 65))))
        h = torch.relu(normed.hidden(psi[:, None, :] * phi))
        want = normed.out(h / h.norm(dim=-1, keepdim=True))
        got = normed.quantiles(psi, taus)
        assert not torch.allclose(plain.quantiles(psi, taus), got)
    else:
        h = torch.relu(normed.hidden(psi))
        assert torch.allclose(normed.features(obs).norm(dim=-1), torch.ones(5))
        want, got = normed.out(h / h.norm(dim=-1, keepdim=True)), normed(obs)
        assert not torch.allclose(plain(obs), got)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    got.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in normed.named_parameters()
               if n.startswith(("encoder.1", "hidden")))  # gradients flow through the normalisation


def test_an_all_zero_feature_vector_stays_zero():
    net = make_network(NetworkConfig(arch="nature", feature_norm=True), 3, OBS)
    with torch.no_grad():
        net.hidden.bias.fill_(-1e6)  # every hidden ReLU is off
    obs = torch.randint(0, 256, (2, *OBS), dtype=torch.uint8)
    assert torch.equal(net.features(obs), torch.zeros(2, 512))
    assert torch.equal(net(obs), net.out.bias.expand(2, 3))
