"""PhaseGraphs' fallbacks on the CPU, with the CUDA graph API replaced by fakes that record what happens: a
failed capture of an independent phase (acting) turns only that phase eager; of a learner phase, all of them."""

import contextlib

import pytest
import torch

from agents.cuda_graphs import PhaseGraphs
from tests.agents.test_graph_safe import trainer_ready_to_learn


class FakeGraph:
    def __init__(self):
        self.fn_out, self.replays = None, 0

    def register_generator_state(self, generator):  # pragma: no cover - no generators here
        pass

    def replay(self):
        self.replays += 1


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's graph API as fakes; `failing` names the phases whose capture raises."""
    failing = set()
    capturing = {}

    @contextlib.contextmanager
    def graph(g):
        capturing["now"] = True
        try:
            yield
        finally:
            capturing["now"] = False

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "Stream", lambda: object())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    return failing, capturing


def _phase(name, failing, capturing, calls):
    def fn():
        calls.append((name, capturing.get("now", False)))
        if capturing.get("now") and name in failing:
            raise RuntimeError(f"{name} synchronised during capture")
        return name
    return fn


def test_a_failed_capture_of_an_independent_phase_leaves_the_other_graphs(fake_cuda):
    failing, capturing = fake_cuda
    failing.add("act")
    graphs = PhaseGraphs(True, warmup=0, independent=("act",))
    calls = []
    act, learner = _phase("act", failing, capturing, calls), _phase("learner", failing, capturing, calls)
    assert graphs("learner", learner) == "learner"  # captured
    with pytest.warns(RuntimeWarning, match="'act'.*runs eagerly, the other phases keep their graphs"):
        assert graphs("act", act) == "act"  # the capture fails: run eagerly
    for _ in range(3):
        assert graphs("act", act) == "act" and graphs("learner", learner) == "learner"
    assert graphs.enabled and graphs.captured == ["learner"] and graphs.eager_phases == {"act"}
    assert graphs.graphs["learner"][0].replays == 4  # the capture's own replay, then one per call
    # act: the failed capture, its eager rerun, then three eager calls; learner: only its capture ran fn.
    assert calls.count(("act", False)) == 4 and calls.count(("learner", True)) == 1
    assert ("learner", False) not in calls


def test_a_failed_capture_of_a_learner_phase_turns_every_graph_off(fake_cuda):
    failing, capturing = fake_cuda
    failing.add("optimizer")
    graphs = PhaseGraphs(True, warmup=0, independent=("act",))
    calls = []
    graphs("act", _phase("act", failing, capturing, calls))
    with pytest.warns(RuntimeWarning, match="'optimizer'.*continuing without CUDA graphs"):
        graphs("optimizer", _phase("optimizer", failing, capturing, calls))
    assert not graphs.enabled and graphs.captured == []


def test_a_failed_capture_raises_when_graphs_are_required(fake_cuda):
    failing, capturing = fake_cuda
    failing.add("act")
    graphs = PhaseGraphs(True, warmup=0, strict=True, independent=("act",))
    with pytest.raises(RuntimeError, match="capturing the phase 'act'.*--cuda-graphs off"):
        graphs("act", _phase("act", failing, capturing, []))


def test_the_trainer_marks_acting_independent(tmp_path):
    trainer = trainer_ready_to_learn(tmp_path, "dqn")
    assert trainer.graphs.independent == {"act"}
