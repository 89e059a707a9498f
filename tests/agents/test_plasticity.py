"""ReDo and Reset (agents/plasticity.py) against brute-force re-implementations on networks with planted dead
neurons, their schedule, and both inside the real training loop through a checkpoint and resume."""

import copy
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from agents.checkpoint import list_checkpoints, load_checkpoint
from agents.config import AgentConfig
from agents.dqn import DQN
from agents.iqn import IQN
from agents.networks import NetworkConfig, ResidualBlock
from agents.plasticity import (
    RESET_MODULES,
    Plasticity,
    ReDoConfig,
    ResetConfig,
    is_event,
    recyclable_layers,
    recycle_dormant,
    reset_modules,
)
from agents.pruning import MaskedAdam
from agents.train import Trainer
from tests.agents.chain_env import ChainEnv
from tests.agents.test_learning import chain_config, fast_dqn

OBS = (4, 12, 12)


def _net(arch: str, agent: str = "dqn", seed: int = 0):
    torch.manual_seed(seed)
    small = dict(num_tau_samples=8, num_tau_prime_samples=8, num_quantile_samples=8) if agent == "iqn" else {}
    cfg = AgentConfig(name=agent, **small)
    a = IQN(cfg, 3) if agent == "iqn" else DQN(cfg, 3)
    return a.build_network(NetworkConfig(arch=arch, width=1), OBS)


def _optimizer_with_moments(net):
    """An optimizer whose moments are nonzero everywhere, so zeroed entries show."""
    opt = MaskedAdam(net.parameters(), lr=1e-3, eps=1.5e-4)
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    return opt


def _plant_dead(net):
    """Kill a few neurons of every recyclable layer: zero incoming weights, negative bias -> ReLU output 0."""
    planted = {}
    modules = dict(net.named_modules())
    with torch.no_grad():
        for layer in recyclable_layers(net):
            m = modules[layer.name]
            idx = [1, m.weight.shape[0] - 2]
            m.weight[idx] = 0
            m.bias[idx] = -1.0
            planted[layer.name] = idx
    return planted


def _brute_dormant(net, obs, tau):
    """Neuron scores from forward hooks on the incoming modules (ReLU applied here), by the definition."""
    outs = {}
    layers = recyclable_layers(net)
    modules = dict(net.named_modules())
    hooks = [modules[layer.name].register_forward_hook(lambda m, i, o, n=layer.name: outs.setdefault(n, o))
             for layer in layers]
    with torch.no_grad():
        net(obs)
    for h in hooks:
        h.remove()
    dormant = {}
    for layer in layers:
        h = F.relu(outs[layer.name]).abs()
        axis = 1 if h.dim() in (2, 4) else h.dim() - 1
        per = h.movedim(axis, 0).reshape(h.shape[axis], -1).mean(1)
        dormant[layer.name] = [i for i in range(len(per)) if per[i] / (per.mean() + 1e-9) <= tau]
    return dormant


@pytest.mark.parametrize("arch,agent", [("nature", "dqn"), ("impala", "dqn"), ("impala", "iqn")])
@pytest.mark.parametrize("tau", [0.0, 0.3])
def test_redo_recycles_exactly_the_dormant_neurons(arch, agent, tau):
    net = _net(arch, agent)
    planted = _plant_dead(net)
    opt = _optimizer_with_moments(net)
    obs = torch.randint(0, 256, (64, *OBS), dtype=torch.uint8)
    torch.manual_seed(5)
    expected_dormant = _brute_dormant(net, obs, tau)
    for name, idx in planted.items():
        assert set(idx) <= set(expected_dormant[name]), name
    before = copy.deepcopy(net)
    moments = {n: {k: opt.state[p][k].clone() for k in ("exp_avg", "exp_avg_sq")} for n, p in net.named_parameters()}
    fresh = _net(arch, agent, seed=7)

    torch.manual_seed(5)  # IQN draws taus in the forward pass: the same as the brute force's
    info = recycle_dormant(net, obs, tau, opt, fresh)

    # Brute force: a neuron i of layer L with outgoing layer O: L.weight[i], L.bias[i] <- fresh, O.weight[:, cols
    # of i] <- 0, and the Adam moments of exactly those entries <- 0.
    want = {n: p.detach().clone() for n, p in before.named_parameters()}
    zeroed = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in before.named_parameters()}
    fresh_params = dict(fresh.named_parameters())
    for layer in recyclable_layers(before):
        for i in expected_dormant[layer.name]:
            for kind in ("weight", "bias"):
                key = f"{layer.name}.{kind}"
                want[key][i] = fresh_params[key][i]
                zeroed[key][i] = True
            out = f"{layer.outgoing}.weight"
            want[out][:, i * layer.group:(i + 1) * layer.group] = 0
            zeroed[out][:, i * layer.group:(i + 1) * layer.group] = True
    for n, p in net.named_parameters():
        assert torch.equal(p, want[n]), n
        for k in ("exp_avg", "exp_avg_sq"):
            m = opt.state[p][k]
            assert torch.all(m[zeroed[n]] == 0), (n, k)
            assert torch.equal(m[~zeroed[n]], moments[n][k][~zeroed[n]]), (n, k)
    count = sum(len(v) for v in expected_dormant.values())
    assert info["redo/recycled"] == count > 0


def test_recyclable_layers_pair_each_neuron_with_its_outgoing_layer():
    nature = recyclable_layers(_net("nature"))
    assert [(r.name, r.outgoing) for r in nature] == [("encoder.1", "encoder.3"), ("encoder.3", "encoder.5"),
                                                      ("encoder.5", "hidden"), ("hidden", "out")]
    assert nature[2].group == 2 * 2  # 12 -> 3 -> 2 -> 2 spatial: each channel is 4 flattened columns
    impala = _net("impala")
    layers = recyclable_layers(impala)
    blocks = [n for n, m in impala.named_modules() if isinstance(m, ResidualBlock)]
    assert [r.name for r in layers] == [f"{b}.conv1" for b in blocks] + ["hidden"]
    assert len(blocks) == 6 and all(r.group == 1 for r in layers)


def test_reset_reinitialises_exactly_the_chosen_layers_and_their_moments():
    for layers, names in (("last", ("out",)), ("penultimate", ("hidden",)), ("both", ("hidden", "out"))):
        net = _net("impala")
        opt = _optimizer_with_moments(net)
        before = copy.deepcopy(net)
        moments = {n: {k: opt.state[p][k].clone() for k in ("exp_avg", "exp_avg_sq", "step")}
                   for n, p in net.named_parameters()}
        fresh = _net("impala", seed=11)
        reset_modules(net, RESET_MODULES[layers], opt, fresh)
        fresh_params = dict(fresh.named_parameters())
        changed = set()
        for (n, p), q in zip(net.named_parameters(), before.parameters(), strict=True):
            chosen = n.split(".")[0] in names
            assert torch.equal(p, fresh_params[n] if chosen else q), (layers, n)
            changed |= {n} if not torch.equal(p, q) else set()
            for k in ("exp_avg", "exp_avg_sq"):
                assert torch.all(opt.state[p][k] == 0) if chosen else torch.equal(opt.state[p][k], moments[n][k])
            assert torch.equal(opt.state[p]["step"], moments[n]["step"])  # Adam's step count is kept, as in the lab
        assert {n.split(".")[0] for n in changed} == set(names)


def test_schedule_is_the_labs():
    assert [s for s in range(0, 40) if is_event(s, 10, 35)] == [10, 20, 30]
    assert not is_event(0, 1, 10) and is_event(9, 1, 10) and not is_event(10, 1, 10)
    with pytest.raises(ValueError, match="redo.period"):
        ReDoConfig(period=0)
    with pytest.raises(ValueError, match="reset.layers"):
        ResetConfig(layers="first")
    with pytest.raises(ValueError, match="redo.tau"):
        ReDoConfig(tau=-0.1)


def test_plasticity_applies_events_then_the_mask():
    net = _net("nature")
    opt = _optimizer_with_moments(net)
    calls = []
    p = Plasticity(ReDoConfig(enabled=True, period=3), ResetConfig(enabled=True, period=4), 100, net, opt,
                   fresh_network=lambda: _net("nature", seed=len(calls) + 1),
                   sample_obs=lambda n: torch.randint(0, 256, (n, *OBS), dtype=torch.uint8),
                   after=lambda: calls.append("mask"))
    rows = {s: p.after_update(s) for s in range(13)}
    assert [s for s, r in rows.items() if r and "redo/recycled" in r] == [3, 6, 9, 12]
    assert [s for s, r in rows.items() if r and "reset/events" in r] == [4, 8, 12]
    assert len(calls) == 6  # once per step with any event


# --- inside the training loop, through a checkpoint ----------------------------------------------------------


def run_then_resume(tmp_path, cfg, num_envs=2):
    """Run `cfg` to the end, then resume a copy from its middle checkpoint and run it to the end again.
    Returns (full trainer, resumed trainer, grad step of the resume)."""
    cfg.keep_checkpoints = 10
    cfg.save_replay = True
    full = Trainer(cfg, tmp_path / "full", env=ChainEnv(num_envs=num_envs))
    full.run()
    ckpts = list_checkpoints(tmp_path / "full" / "checkpoints")
    assert len(ckpts) >= 3
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    middle = ckpts[len(ckpts) // 2]
    for later in list_checkpoints(tmp_path / "resumed" / "checkpoints"):
        if later.name > middle.name:
            later.unlink()  # the kill happened before these were written
    state = load_checkpoint(middle, config=cfg.to_dict())
    resumed = Trainer(cfg, tmp_path / "resumed", checkpoint=state, env=ChainEnv(num_envs=num_envs))
    resumed.run()
    return full, resumed, int(state["grad_steps"])


def events(run_dir, key):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["grad_steps"] for r in rows if key in r]


def test_redo_and_reset_in_the_loop_survive_a_resume(tmp_path):
    cfg = chain_config(fast_dqn(min_replay=100), sparsity=0.9, total_steps=600)
    cfg.iteration_steps = 150
    cfg.pruning.start_step, cfg.pruning.end_step, cfg.pruning.update_freq = 0, 40, 10
    cfg.redo = ReDoConfig(enabled=True, period=15, batch_size=32)
    cfg.reset = ResetConfig(enabled=True, period=40, layers="both")
    full, resumed, at = run_then_resume(tmp_path, cfg)
    for run, trainer in ((tmp_path / "full", full), (tmp_path / "resumed", resumed)):
        redo, reset = events(run, "redo/recycled"), events(run, "reset/events")
        last = trainer.grad_steps - 1
        assert redo == list(range(15, last + 1, 15)) and reset == list(range(40, last + 1, 40)), (run, at)
        # ReDo and Reset never leave a pruned weight nonzero
        for w, m in zip(trainer.pruner.weights, trainer.pruner.masks):
            assert torch.all(w[~m] == 0)
    assert 0 < at < resumed.grad_steps
