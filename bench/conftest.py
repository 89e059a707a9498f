"""pytest setup for the GPU benchmarks in bench/ (see bench/README.md).

- collects `bench_*.py` files (pytest's default pattern is `test_*.py`), once each;
- skips everything without a CUDA device, so `pytest bench/` is a clean no-op on CPU machines, except the tiny
  CPU rehearsals of `bench/gpu_proof.py --dry-run`: the end-to-end runs when PRUNERL_E2E_DEVICE=cpu, the kernel
  benchmarks when PRUNERL_BENCH_SUBSET=rehearsal (their Triton kernels interpreted: see below);
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
_CPU_KERNEL_REHEARSAL = (not torch.cuda.is_available()
                         and os.environ.get("PRUNERL_BENCH_SUBSET", "").strip().lower() == "rehearsal")
if _CPU_KERNEL_REHEARSAL:
    # Triton decides at `@triton.jit` time whether to interpret, so before anything imports `kernels` (the import
    # of agents.train below does). The public ops take the Triton path too: test_host_cost times it.
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("PRUNERL_KERNELS", "triton")
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
    on_cpu = {"bench_e2e.py": os.environ.get("PRUNERL_E2E_DEVICE") == "cpu",
              "bench_kernels.py": _CPU_KERNEL_REHEARSAL}
    for item in items:
        path = pathlib.Path(str(item.fspath)).resolve()
        if path.is_relative_to(_ROOT / "bench") and not on_cpu.get(path.name, False):
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
