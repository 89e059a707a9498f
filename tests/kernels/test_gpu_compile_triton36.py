"""Every Triton kernel variant also compiles for sm_90 with triton 3.6.0, the GPU machine's version.

The venv's triton is newer; `make triton36` installs 3.6.0 into a folder of its own, which goes first on the
compile subprocess's path (see tests/kernels/_triton36.py). CI installs it and sets PRUNERL_REQUIRE_TRITON36=1,
so there a missing install fails instead of skipping.
"""

import pathlib
import subprocess
import sys

from tests.kernels._triton36 import ROOT, is_triton36, triton36_env
from tests.kernels.test_gpu_compile import check_masked_adam_lines, check_no_spills

SCRIPT = pathlib.Path(__file__).with_name("_compile_for_gpu.py")


def test_all_kernels_compile_for_sm90_with_triton_3_6():
    env = triton36_env()
    env.pop("TRITON_INTERPRET", None)
    run = ("import runpy, sys, triton; print(triton.__version__, triton.__file__); "
           f"sys.argv = [{str(SCRIPT)!r}, '90']; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", run], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    first = proc.stdout.splitlines()[0]
    assert is_triton36(first), first
    assert proc.stdout.count("ok ") >= 30 and "FAIL" not in proc.stdout
    check_masked_adam_lines(proc.stdout.splitlines())  # the GPU image's compiler vectorises every mode too
    check_no_spills(proc.stdout.splitlines())
