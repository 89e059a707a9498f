"""The gradient covariance of Fig. 14: per-sample gradients and their normalised covariance against closed forms,
and the trainer's log of it (one matrix per analysis step, no effect on training, kept through a resume)."""

import json

import torch

from agents.checkpoint import latest_checkpoint, load_checkpoint
from agents.metrics import covariance_summary, gradient_covariance, per_sample_gradients
from agents.train import Trainer
from tests.agents.chain_env import ChainEnv
from tests.agents.test_learning import chain_config, fast_dqn


def test_per_sample_gradients_of_a_linear_model_match_the_closed_form():
    torch.manual_seed(0)
    w = torch.randn(5, 3, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    x, y = torch.randn(6, 3), torch.randn(6, 5)
    mask = torch.rand(5, 3) < 0.5
    grads = per_sample_gradients(lambda i: ((w @ x[i] + b - y[i]) ** 2).sum(), [w, b], 6, [mask, None])
    for i in range(6):
        r = 2 * (w @ x[i] + b - y[i])  # d/dw = r x^T, d/db = r
        want = torch.cat([(torch.outer(r, x[i]) * mask).flatten(), r])
        torch.testing.assert_close(grads[i], want.detach())
    assert w.grad is None and b.grad is None  # nothing accumulated into .grad


def test_normalised_covariance_is_the_cosine_similarity():
    torch.manual_seed(1)
    g = torch.randn(7, 40)
    g[3] = 0  # a sample with no gradient
    g[5] = -2.5 * g[1]  # perfectly anti-aligned with sample 1
    cov = gradient_covariance(g)
    for i in range(7):
        for j in range(7):
            if 3 in (i, j):
                assert cov[i, j] == 0
            else:
                want = torch.dot(g[i], g[j]) / (g[i].norm() * g[j].norm())
                assert abs(cov[i, j] - want) < 1e-6
    assert abs(cov[1, 5] + 1) < 1e-6 and torch.equal(cov, cov.T)
    s = covariance_summary(cov)
    off = cov[~torch.eye(7, dtype=torch.bool)]
    assert abs(s["analysis/grad_cos_mean"] - off.mean().item()) < 1e-7
    assert abs(s["analysis/grad_cos_abs_mean"] - off.abs().mean().item()) < 1e-7


def _run(tmp_path, name, samples, total_steps=500, every=25):
    cfg = chain_config(fast_dqn(min_replay=200), sparsity=0.9, total_steps=total_steps)
    cfg.analysis_every, cfg.analysis_grad_samples = every, samples
    cfg.pruning.start_step, cfg.pruning.end_step, cfg.pruning.update_freq = 0, 40, 10
    trainer = Trainer(cfg, tmp_path / name, env=ChainEnv(num_envs=2))
    trainer.run()
    return trainer, cfg


def test_trainer_logs_one_matrix_per_analysis_step_without_changing_training(tmp_path):
    with_cov, _ = _run(tmp_path, "cov", samples=6)
    without, _ = _run(tmp_path, "plain", samples=0)
    no_analysis, _ = _run(tmp_path, "none", samples=0, every=0)
    for p, q, r in zip(with_cov.online.parameters(), without.online.parameters(), no_analysis.online.parameters(),
                       strict=True):
        assert torch.equal(p, q) and torch.equal(p, r)  # the analysis draws and computes nothing training sees
    lines = [json.loads(x) for x in (tmp_path / "cov" / "grad_covariance.jsonl").read_text().splitlines()]
    assert [r["grad_steps"] for r in lines] == list(range(25, with_cov.grad_steps + 1, 25))
    assert not (tmp_path / "plain" / "grad_covariance.jsonl").exists()
    for r in lines:
        m = torch.tensor(r["matrix"])
        assert m.shape == (6, 6) and torch.allclose(m, m.T) and m.abs().max() <= 1 + 1e-5
        assert torch.allclose(m.diagonal(), torch.ones(6), atol=1e-4)
    rows = [json.loads(x) for x in (tmp_path / "cov" / "metrics.jsonl").read_text().splitlines()]
    assert sum("analysis/grad_cos_abs_mean" in r for r in rows) == len(lines)
    assert with_cov.analysis_batch.obs.shape == (6, 4, 8, 8)


def test_the_fixed_batch_survives_a_resume_and_late_rows_are_dropped(tmp_path):
    trainer, cfg = _run(tmp_path, "cov", samples=4, total_steps=500)
    state = load_checkpoint(latest_checkpoint(tmp_path / "cov" / "checkpoints"))
    assert torch.equal(state["analysis_batch"]["obs"], trainer.analysis_batch.obs)
    path = tmp_path / "cov" / "grad_covariance.jsonl"
    path.write_text(path.read_text() + json.dumps({"agent_steps": 10**9, "matrix": []}) + "\n")  # after the kill
    cfg.total_steps = 700
    resumed = Trainer(cfg, tmp_path / "cov", checkpoint=state, env=ChainEnv(num_envs=2))
    assert torch.equal(resumed.analysis_batch.actions, trainer.analysis_batch.actions)
    assert all(json.loads(x)["agent_steps"] <= state["agent_steps"] for x in path.read_text().splitlines())
    resumed.close()
