"""CPU checks of bench/host_profile.py: it profiles only the iterations after the warm-up, and names a bad case."""

import argparse
import importlib.util
import pathlib
import pstats
import sys

import pytest

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
    stats = pstats.Stats(str(tmp_path / "impala_1_gmp95_after_fp32.prof")).stats
    calls = {func[2]: value[1] for func, value in stats.items() if func[0].endswith("train.py")}
    # 4 envs: 64 measured agent steps are 16 loop passes (the warm-up's 8 are not profiled), 2 updates each.
    assert calls["act"] == 16
    assert calls["learn"] == 16 * 4 * 0.25
    assert (tmp_path / "impala_1_gmp95_after_fp32.txt").read_text() == text
