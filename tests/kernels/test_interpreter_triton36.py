"""The kernel tests most sensitive to the interpreter's version also pass under triton 3.6.0's interpreter
(the GPU image's release; its interpreter turns every scalar into a 1-element array, so e.g. a loop bound
read from memory fails there and nowhere else). triton 3.6.0 as tests/kernels/_triton36.py finds it; skipped without it
unless PRUNERL_REQUIRE_TRITON36 is set.
"""

import re
import subprocess
import sys

from tests.kernels._triton36 import ROOT, is_triton36, triton36_env

SELECTION = ["tests/kernels/test_topk_mask.py", "tests/kernels/test_masked_adam.py", "-k",
             "(heavy_ties_quantised and 1-4 or chunks or wrong_warm or grid_stride "
             "or masked_adam_matches_reference and True and grad_dtype1 or frozen_list_and_block) and not gpu"]


def test_kernel_tests_pass_under_triton_3_6_interpreter():
    env = triton36_env(TRITON_INTERPRET="1")
    check = subprocess.run([sys.executable, "-c", "import triton; print(triton.__version__, triton.__file__)"],
                           env=env, capture_output=True, text=True)
    assert is_triton36(check.stdout), check.stdout + check.stderr
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SELECTION], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    report = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0 and re.search(r"^22 passed, \d+ deselected in", proc.stdout, re.M), report
