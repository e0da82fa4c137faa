"""The step-cost benchmark runs end to end on tiny sizes (not timed) and ends with the summary line; its device
plumbing (--device, --skip, --classes) is checked on the CPU, and a CUDA request without a GPU is a clear error."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import step_cost

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


# ------------------------------------------------------------------------------------ device plumbing (--device)
SUMMARY = (r"default-mode step / vanilla step at (\d+) classes: \d+\.\d\dx \(exact: \d+\.\d\dx, reference-style: "
           r"\d+\.\d\dx\)")


def test_quick_on_cpu_skips_the_tables_it_is_told_to(monkeypatch, capsys):
    quick = step_cost.sizes
    monkeypatch.setattr(step_cost, "sizes", lambda q: {**quick(q), "mem": True})  # the memory table would run

    def no_memory(*args, **kwargs):
        raise AssertionError("the memory table ran despite --skip memory")

    monkeypatch.setattr(step_cost, "peak_memory", no_memory)
    monkeypatch.setattr(step_cost, "cuda_peak_memory", no_memory)
    with torch.random.fork_rng():
        step_cost.main(["--device", "cpu", "--skip", "memory,fidelity", "--quick"])
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].startswith("# step cost: resnet20_cifar, batch 16, 8x8, cpu, "), lines[0]
    assert "## 4 classes" in out and "## 12 classes" in out and "| exact (loop) (default) |" in out
    assert "## solvers (float64 CPU," in out and "| common | 20 | epo |" in out
    assert "## peak memory" not in out and "## fidelity" not in out
    match = re.fullmatch(SUMMARY, lines[-1])
    assert match and match.group(1) == "12", lines[-1]


def test_one_class_count_and_no_solver_table(capsys):
    with torch.random.fork_rng():
        step_cost.main(["--quick", "--classes", "4", "--skip", "solvers", "--skip", "fidelity"])  # they add up
    out = capsys.readouterr().out
    assert "## 4 classes" in out and "## 12 classes" not in out and "## solvers" not in out
    match = re.fullmatch(SUMMARY, out.strip().splitlines()[-1])
    assert match and match.group(1) == "4"


def test_skip_timing_leaves_out_the_step_tables_and_the_summary(capsys, monkeypatch):
    def no_timing(*args, **kwargs):
        raise AssertionError("time_variants ran although --skip timing")

    monkeypatch.setattr(step_cost, "time_variants", no_timing)
    step_cost.main(["--quick", "--skip", "timing,memory,fidelity"])
    out = capsys.readouterr().out
    assert "## solvers" in out and "## 4 classes" not in out and "overhead" not in out
    assert not re.search(SUMMARY, out)


def test_time_variants_synchronises_the_device_before_each_clock_read(monkeypatch):
    calls: list[torch.device] = []
    monkeypatch.setattr(step_cost, "synchronize", calls.append)
    cfg = {**step_cost.sizes(True), "reps": 2}
    names = ["vanilla", "exact (batched)", "amortised k=10"]
    with torch.random.fork_rng():
        medians = step_cost.time_variants(cfg, 4, 4, only=names, device=torch.device("cpu"))
    assert list(medians) == names and all(t > 0 for t in medians.values())
    # one after each warm-up call, one after each timed call (an amortised call is 10 steps, synchronised once)
    assert calls == [torch.device("cpu")] * (len(names) * (1 + cfg["reps"]))


def test_default_mode_is_what_auto_resolves_to():
    assert step_cost.default_mode("resnet20_cifar", torch.device("cpu")) == "exact (loop)"
    assert step_cost.default_mode("resnet20_cifar", torch.device("cuda")) == "exact (batched)"  # no GPU needed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "cuda"], "--device cuda: CUDA is not available"),
        (["--device", "cuda:0", "--quick"], "--device cuda:0: CUDA is not available"),
        (["--device", "tpu"], "--device tpu:"),
        (["--quick", "--skip", "memory,speed"], "unknown speed; choose from timing, memory, fidelity, solvers"),
        (["--quick", "--classes", "100"], "--classes 100: choose among 4,12"),
    ],
)
def test_bad_arguments_are_clear_errors_before_any_work(monkeypatch, capsys, argv, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    for name in ("default_mode", "build", "time_variants", "solver_table", "fidelity"):
        monkeypatch.setattr(step_cost, name, no_work)
    with pytest.raises(SystemExit) as exit_info:
        step_cost.main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err, captured.err


def test_cuda_without_a_visible_gpu_fails_fast_on_the_command_line():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU visible, on any machine
    proc = subprocess.run([sys.executable, "benchmarks/step_cost.py", "--device", "cuda"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and proc.stdout == "", (proc.returncode, proc.stdout, proc.stderr)
    assert "--device cuda: CUDA is not available here" in proc.stderr, proc.stderr
