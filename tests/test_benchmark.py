"""The step-cost benchmark runs end to end on tiny sizes (not timed) and ends with the summary line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_step_cost_quick_runs_and_ends_with_summary():
    out = subprocess.run([sys.executable, "benchmarks/step_cost.py", "--quick"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, check=True).stdout
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(
        r"default-mode step / vanilla step at \d+ classes: \d+\.\d\dx \(exact: \d+\.\d\dx, reference-style: "
        r"\d+\.\d\dx\)", last), last
    assert "| per_sample_split (GN) |" in out and "| cagrad |" in out


def test_digits_modes_quick_runs_and_prints_the_table(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "digits_modes.py"), "--quick", "--output_dir",
                          str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=600, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| baseline (no PLOT)", "| exact (loop)", "| amortised k=4"]
    assert (tmp_path / "summary.json").is_file()
