"""The kernel tests most sensitive to the interpreter's version also pass under triton 3.6.0's interpreter
(the GPU image's release; its interpreter turns every scalar into a 1-element array, so e.g. a loop bound
read from memory fails there and nowhere else). Uses the install of tests/kernels/test_gpu_compile_triton36.py
(`make triton36`); skipped without it unless PRUNERL_REQUIRE_TRITON36 is set, as there.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TRITON36 = pathlib.Path(os.environ.get("PRUNERL_TRITON36_DIR", ROOT / ".venv" / "triton-3.6"))
SELECTION = ["tests/kernels/test_topk_mask.py", "tests/kernels/test_masked_adam.py", "-k",
             "heavy_ties_quantised and 1-4 or chunks or wrong_warm or grid_stride "
             "or masked_adam_matches_reference and True and grad_dtype1"]


def test_kernel_tests_pass_under_triton_3_6_interpreter():
    if not (TRITON36 / "triton").is_dir():
        message = f"triton 3.6.0 is not installed in {TRITON36} (make triton36)"
        if os.environ.get("PRUNERL_REQUIRE_TRITON36"):
            pytest.fail(message)
        pytest.skip(message)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(TRITON36), str(ROOT)])}
    check = subprocess.run([sys.executable, "-c", "import triton; print(triton.__version__, triton.__file__)"],
                           env=env, capture_output=True, text=True)
    assert check.stdout.startswith("3.6.0 ") and str(TRITON36) in check.stdout, check.stdout + check.stderr
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SELECTION], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    report = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0 and re.search(r"^9 passed", proc.stdout, re.M), report
