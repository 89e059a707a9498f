"""Where triton 3.6.0 (the GPU image's release) comes from for the tests that need it: the running triton if it
is 3.6.0 itself (`make gpu-image-rehearsal`), else the folder `make triton36` fills (.venv/triton-3.6, or
PRUNERL_TRITON36_DIR). Without either the tests skip, unless PRUNERL_REQUIRE_TRITON36 is set (CI): then they fail.
"""

import os
import pathlib

import pytest
import triton

ROOT = pathlib.Path(__file__).resolve().parents[2]
TRITON36 = pathlib.Path(os.environ.get("PRUNERL_TRITON36_DIR", ROOT / ".venv" / "triton-3.6"))
RUNNING_IS_36 = triton.__version__ == "3.6.0"


def triton36_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess whose `import triton` is 3.6.0 (skips or fails the test without one)."""
    if not RUNNING_IS_36 and not (TRITON36 / "triton").is_dir():
        message = f"triton 3.6.0 is not installed in {TRITON36} (make triton36)"
        if os.environ.get("PRUNERL_REQUIRE_TRITON36"):
            pytest.fail(message)
        pytest.skip(message)
    env = {**os.environ, **extra}
    paths = ([] if RUNNING_IS_36 else [str(TRITON36)]) + [str(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def is_triton36(printed: str) -> bool:
    """Whether a subprocess's "<version> <triton.__file__>" line names the triton 3.6.0 meant above."""
    return printed.startswith("3.6.0 ") and (RUNNING_IS_36 or str(TRITON36) in printed)
