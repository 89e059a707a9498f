"""--compile and --channels-last: the same learner step as the default, to fp32 rounding."""

import pytest
import torch

from tests.agents.test_graph_safe import trainer_ready_to_learn


def _one_step(tmp_path, name: str, **options):
    torch.manual_seed(0)
    trainer = trainer_ready_to_learn(tmp_path / name, "dqn", **options)
    for _ in range(3):
        info = trainer.learn()
    return trainer, {k: float(v) for k, v in info.items()}


@pytest.mark.parametrize("option", ["channels_last", "compile"])
def test_speed_option_matches_the_default_learner_step(tmp_path, one_thread, option):
    base, base_info = _one_step(tmp_path, "default")
    fast, fast_info = _one_step(tmp_path, option, **{option: True})
    if option == "channels_last":
        frames = fast.replay.sample(2).obs
        assert fast.online.encoder[0](frames).is_contiguous(memory_format=torch.channels_last)
        assert all(p.is_contiguous() for p in fast.online.parameters())  # the kernels' layout is unchanged
    assert list(fast.online.state_dict()) == list(base.online.state_dict())  # checkpoints stay compatible
    assert fast_info == pytest.approx(base_info, rel=1e-4)
    for (name, p), q in zip(base.online.named_parameters(), fast.online.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)
    for m, n in zip(base.pruner.masks, fast.pruner.masks):
        assert torch.equal(m, n)
