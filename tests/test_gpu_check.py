"""benchmarks/gpu_check.py at toy sizes on CPU: every row's code path runs and lands in the one table
(the numbers mean nothing here; on a GPU the same script measures the paper's sizes)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_prints_every_row_on_cpu():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--smoke", "--device", "cpu"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    names = [line.split(" | ")[0].lstrip("| ") for line in table[1:]]
    assert names == ["train step tiny", "sample DnD-tiny D=2", "sample 1D-tiny", "sample DnD/1D time",
                     "ddp step tiny", "fsdp step tiny", "tokenizer encode", "tokenizer decode",
                     "resume == uninterrupted"]
    for line in table[1:]:
        value = line.split(" | ")[1]
        assert value not in ("n/a", "failed"), line  # smoke mode stands in two CPU ranks for the GPUs
    assert table[-1].split(" | ")[1] == "yes"  # resumed weights equal the uninterrupted run's, bit for bit
    ratio = float(table[4].split(" | ")[1].split()[0])
    assert 0.2 < ratio < 5  # DnD and 1D time the same backbone: a ratio far off means a broken timing
