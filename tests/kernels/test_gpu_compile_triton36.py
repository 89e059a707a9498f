"""Every Triton kernel variant also compiles for sm_90 with triton 3.6.0, the GPU machine's version.

The venv's triton is newer; `make triton36` installs 3.6.0 into a folder of its own (.venv/triton-3.6, or
PRUNERL_TRITON36_DIR), which goes first on the compile subprocess's path. CI installs it and sets
PRUNERL_REQUIRE_TRITON36=1, so there a missing install fails instead of skipping. Where the running triton is
3.6.0 itself (the GPU image's versions, `make gpu-image-rehearsal`), it is used as it is.
"""

import os
import pathlib
import subprocess
import sys

import pytest
import triton

from tests.kernels.test_gpu_compile import check_masked_adam_lines

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = pathlib.Path(__file__).with_name("_compile_for_gpu.py")
TRITON36 = pathlib.Path(os.environ.get("PRUNERL_TRITON36_DIR", ROOT / ".venv" / "triton-3.6"))


def test_all_kernels_compile_for_sm90_with_triton_3_6():
    own = triton.__version__ == "3.6.0"
    if not own and not (TRITON36 / "triton").is_dir():
        message = f"triton 3.6.0 is not installed in {TRITON36} (make triton36)"
        if os.environ.get("PRUNERL_REQUIRE_TRITON36"):
            pytest.fail(message)
        pytest.skip(message)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(([] if own else [str(TRITON36)]) + [str(ROOT)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    run = ("import runpy, sys, triton; print('triton', triton.__version__, triton.__file__); "
           f"sys.argv = [{str(SCRIPT)!r}, '90']; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", run], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    first = proc.stdout.splitlines()[0]
    assert first.startswith("triton 3.6.0 ") and (own or str(TRITON36) in first), first
    assert proc.stdout.count("ok ") >= 30 and "FAIL" not in proc.stdout
    check_masked_adam_lines(proc.stdout.splitlines())  # the GPU image's compiler vectorises every mode too
