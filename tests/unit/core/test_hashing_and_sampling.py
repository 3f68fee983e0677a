import subprocess
import sys

from core.hashing import stable_fraction
from sdk.client import is_sampled


def test_stable_fraction_is_process_independent():
    code = "from core.hashing import stable_fraction; print(stable_fraction('collect', 'interaction-7'))"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], env={"PYTHONHASHSEED": str(seed)}, capture_output=True, text=True, check=True
        ).stdout
        for seed in (1, 2, 3)
    }
    assert outs == {f"{stable_fraction('collect', 'interaction-7')}\n"}


def test_sampling_rate_is_respected_and_deterministic():
    picks = [is_sampled(f"i{n}", 0.3) for n in range(20_000)]
    assert abs(sum(picks) / len(picks) - 0.3) < 0.01
    assert picks == [is_sampled(f"i{n}", 0.3) for n in range(20_000)]
    assert not any(is_sampled(f"i{n}", 0.0) for n in range(1000)) and all(is_sampled(f"i{n}", 1.0) for n in range(1000))
