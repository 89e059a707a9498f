"""CPU checks of bench/host_profile.py: it profiles only the iterations after the warm-up, and names a bad case."""

import argparse
import importlib.util
import os
import pathlib
import pstats
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("_host_profile_test", ROOT / "bench" / "host_profile.py")
host_profile = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = host_profile
_spec.loader.exec_module(host_profile)


@pytest.mark.parametrize("text", ["impala:1", "resnet:1:dense", "impala:x:dense", "impala:1:sparse",
                                  "impala:1:dense:fp8"])
def test_bad_case_is_named(text):
    with pytest.raises(argparse.ArgumentTypeError, match=text):
        host_profile.parse_case(text)


def test_profiles_the_iterations_after_the_warmup(tmp_path):
    case = host_profile.parse_case("impala:1:gmp95_after")
    assert case == ("impala", 1, "gmp95_after", "fp32")
    text = host_profile.profile_case(case, warmup=32, measure=64, device="cpu", out=tmp_path, top=5)
    assert "frames/s of the profiled iterations" in text
    assert "\n# cpu, git " in text and f"torch {torch.__version__}" in text  # where and when, in the file itself
    stats = pstats.Stats(str(tmp_path / "impala_1_gmp95_after_fp32.prof")).stats
    calls = {func[2]: value[1] for func, value in stats.items() if func[0].endswith("train.py")}
    # 4 envs: 64 measured agent steps are 16 loop passes (the warm-up's 8 are not profiled), 2 updates each.
    assert calls["act"] == 16
    assert calls["learn"] == 16 * 4 * 0.25
    assert (tmp_path / "impala_1_gmp95_after_fp32.txt").read_text() == text
    assert all(func[0] == "~" or "/" not in func[0] for func in stats)  # no machine's directories
    assert str(ROOT) not in text


def test_inline_env_profiles_a_run_without_the_env_thread(tmp_path):
    case = host_profile.parse_case("impala:1:dense")

    def submits(inline_env: bool) -> int:
        host_profile.profile_case(case, warmup=32, measure=32, device="cpu", out=tmp_path, top=5,
                                  inline_env=inline_env)
        name = "impala_1_dense_fp32" + ("_inline_env" if inline_env else "")
        stats = pstats.Stats(str(tmp_path / f"{name}.prof")).stats
        return sum(v[1] for f, v in stats.items() if f[2] == "submit" and f[0].endswith("thread.py"))

    assert submits(inline_env=False) == 8  # 32 measured agent steps of 4 envs: 8 loop passes hand a step over
    assert submits(inline_env=True) == 0


def test_the_naive_setup_uses_the_reference_ops_for_its_own_run_only(tmp_path, monkeypatch):
    monkeypatch.delenv("PRUNERL_KERNELS", raising=False)
    host_profile.profile_case(host_profile.parse_case("impala:1:naive"), warmup=32, measure=32, device="cpu",
                              out=tmp_path, top=5)
    stats = pstats.Stats(str(tmp_path / "impala_1_naive_fp32.prof")).stats
    assert any(func[2] == "masked_adam_ref_" for func in stats)  # the run's optimizer: the reference
    assert "PRUNERL_KERNELS" not in os.environ  # not left for the next case


def test_help_gives_each_default_once(capsys):
    with pytest.raises(SystemExit):
        host_profile.main(["--help"])
    out = capsys.readouterr().out
    assert "(default: None)" not in out and "64 with --device cpu" in out and "runs/host_profile" in out
