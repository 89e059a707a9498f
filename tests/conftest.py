"""Shared test setup. Runs before any test module is imported, hence before anything imports `kernels`."""

import os
import pathlib
import random
import sys

import numpy as np
import pytest
import torch

# Triton decides at `@triton.jit` decoration time whether to interpret, so this has to happen before the
# kernel modules are imported: on a CPU-only machine the Triton kernels then run on numpy (slow, tiny shapes).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:  # cuBLAS is deterministic only with a fixed workspace, read when its first handle is made (see
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # tests/agents/test_cuda_graphs.py)

# Under pytest-xdist (`make test` runs a worker per core), one thread per worker and per process it starts:
# workers that each ran PyTorch's and OpenMP's default pools oversubscribed the cores (on 2 cores the suite
# took 11.2 minutes that way, 10.5 with one thread each).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

# `pytest` (unlike `python -m pytest`) does not put the repository root on sys.path.
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
