"""pytest setup for the GPU benchmarks in bench/ (see bench/README.md).

- collects `bench_*.py` files (pytest's default pattern is `test_*.py`), once each;
- skips everything without a CUDA device, so `pytest bench/` is a clean no-op on CPU machines (except the
  end-to-end runs when PRUNERL_E2E_DEVICE=cpu: the tiny CPU rehearsal of `bench/gpu_proof.py --dry-run`);
- re-enables pytest-benchmark when results were asked for: pyproject's addopts carry `--benchmark-disable`
  for the CPU test suite, which would otherwise make `pytest bench/ --benchmark-json=...` record nothing;
- provides the session facts every result carries: device, versions, git SHA, date, copy bandwidth.
"""

import datetime
import os
import pathlib
import sys

import pytest
import torch

_ROOT = pathlib.Path(__file__).resolve().parents[1]
for _path in (str(_ROOT), str(_ROOT / "bench")):  # `pytest bench/` puts neither on sys.path in every import mode
    if _path not in sys.path:
        sys.path.insert(0, _path)

from agents.train import git_sha  # noqa: E402  (needs the repository root on sys.path)


def pytest_collect_file(file_path, parent):
    # A file named on the command line is already collected by pytest itself: collecting it here too would
    # run every benchmark twice.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    wants_results = any(config.getoption(opt, None) for opt in ("benchmark_json", "benchmark_save",
                                                                 "benchmark_autosave"))
    if wants_results and hasattr(config.option, "benchmark_enable"):
        config.option.benchmark_enable = True


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="benchmarks need a CUDA device")
    e2e_on_cpu = os.environ.get("PRUNERL_E2E_DEVICE") == "cpu"
    for item in items:
        path = pathlib.Path(str(item.fspath)).resolve()
        if path.is_relative_to(_ROOT / "bench") and not (e2e_on_cpu and path.name == "bench_e2e.py"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def copy_gbps() -> float:
    """Device copy bandwidth in GB/s, measured once in this run (`bench_kernels.measure_copy_gbps`)."""
    from bench_kernels import measure_copy_gbps

    return measure_copy_gbps()


@pytest.fixture(scope="session")
def run_info(request) -> dict:
    """Facts attached to every benchmark's extra_info (on a CPU rehearsal: no device name, no copy bandwidth)."""
    import triton

    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "git_sha": git_sha() or "unknown",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "copy_gbps": round(request.getfixturevalue("copy_gbps"), 1) if cuda else None,
    }
