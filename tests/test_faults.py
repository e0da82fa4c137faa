"""Faults: verifiable checkpoints, resume after SIGKILL, kill during a save, corrupted checkpoints, NaN/inf steps.

``python tests/test_faults.py --trials N`` repeats the kill/resume trial of docs/guide/reliability.md.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from plot_hf import PLOTConfig, PLOTTrainer
from plot_hf.checkpoint import (
    MANIFEST_NAME,
    CheckpointError,
    latest_valid_checkpoint,
    list_checkpoints,
    verify_checkpoint,
    write_manifest,
)
from plot_hf.guard import NonFiniteTrainingError

if __name__ == "__main__" and not __package__:  # run as a script from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers import collate, parameters_of, tensor_dataset, tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- manifest unit
def test_manifest_detects_missing_truncated_and_altered_files(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"x" * 100)
    (ckpt / "optimizer.pt").write_bytes(b"y" * 10)
    with pytest.raises(CheckpointError, match="incomplete"):
        verify_checkpoint(ckpt)
    write_manifest(ckpt, step=2)
    assert verify_checkpoint(ckpt)["step"] == 2
    assert not list(ckpt.glob(".*tmp"))
    (ckpt / "model.safetensors").write_bytes(b"x" * 50)
    with pytest.raises(CheckpointError, match="model.safetensors has 50 bytes"):
        verify_checkpoint(ckpt)
    (ckpt / "model.safetensors").write_bytes(b"z" * 100)
    with pytest.raises(CheckpointError, match="sha256 of model.safetensors"):
        verify_checkpoint(ckpt)
    (ckpt / "model.safetensors").write_bytes(b"x" * 100)
    (ckpt / "optimizer.pt").unlink()
    with pytest.raises(CheckpointError, match="optimizer.pt is missing"):
        verify_checkpoint(ckpt)


def test_latest_valid_checkpoint_skips_newer_invalid_ones(tmp_path: Path) -> None:
    for step in (2, 4, 6):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"m" * step)
        if step != 6:  # checkpoint-6: no manifest (killed while writing)
            write_manifest(folder, step=step)
    (tmp_path / "checkpoint-4" / "model.safetensors").write_bytes(b"m")  # truncated
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-6", "checkpoint-4", "checkpoint-2"]
    assert latest_valid_checkpoint(tmp_path) == tmp_path / "checkpoint-2"


# ------------------------------------------------------------------------------------------- trainer level
def _trainer(output_dir: Path, **overrides) -> PLOTTrainer:
    values = dict(
        output_dir=str(output_dir), num_train_epochs=1, per_device_train_batch_size=8, learning_rate=0.05,
        optim="sgd", weight_decay=1e-4, moo_until_epoch=1, save_strategy="steps", save_steps=2,
        save_total_limit=2, logging_steps=1, report_to="none", use_cpu=True, seed=0, dataloader_num_workers=0,
        disable_tqdm=True,
    )
    values.update(overrides)
    args = PLOTConfig(**values)
    return PLOTTrainer(model=tiny_model(), args=args, train_dataset=tensor_dataset(48), data_collator=collate)


def test_checkpoints_carry_a_manifest_and_rotation_keeps_complete_ones(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    trainer.train()
    checkpoints = list_checkpoints(tmp_path)
    assert [p.name for p in checkpoints] == ["checkpoint-6", "checkpoint-4"]
    for folder in checkpoints:
        manifest = verify_checkpoint(folder)
        assert {"model.safetensors", "optimizer.pt", "trainer_state.json", "rng_state.pth"} <= set(manifest["files"])


def test_corrupted_checkpoint_is_detected_and_the_previous_one_used(tmp_path: Path, caplog) -> None:
    trainer = _trainer(tmp_path)
    trainer.train()
    newest = tmp_path / "checkpoint-6"
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    with pytest.raises(CheckpointError, match=r"checkpoint-6.*model.safetensors has 1000 bytes"):
        _trainer(tmp_path).train(resume_from_checkpoint=str(newest))
    resumed = _trainer(tmp_path)
    with caplog.at_level("WARNING", logger="plot_hf.checkpoint"):
        resumed.train(resume_from_checkpoint=True)
    assert "checkpoint-6" in caplog.text and "Skipping it" in caplog.text
    assert verify_checkpoint(tmp_path / "checkpoint-6")  # re-written, complete, by the resumed run
    final = parameters_of(trainer.model)
    assert all(torch.equal(final[n], p) for n, p in parameters_of(resumed.model).items())


class _NaNAt:
    """Wrap a per-sample loss: NaN (or inf) at the given optimizer steps."""

    def __init__(self, trainer: PLOTTrainer, steps: set[int], value: float = float("nan")) -> None:
        self.trainer, self.steps, self.value, self.loss = trainer, steps, value, trainer.loss_fn

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = self.loss(logits, labels)
        return out + self.value if self.trainer.state.global_step in self.steps else out

    def set_epoch(self, epoch: float) -> None:
        self.loss.set_epoch(epoch)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_step_is_skipped_counted_and_training_continues(tmp_path: Path, value: float) -> None:
    trainer = _trainer(tmp_path, save_strategy="no", optim_args="momentum=0.9")
    trainer.loss_fn = _NaNAt(trainer, {2, 3}, value)
    snapshots: dict[int, tuple[dict, dict, dict]] = {}

    from transformers import TrainerCallback

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
            momentum = {i: s["momentum_buffer"].clone() for i, s in enumerate(opt.state.values())
                        if s.get("momentum_buffer") is not None}
            buffers = {n: b.clone() for n, b in trainer.model.named_buffers() if b.is_floating_point()}
            snapshots[state.global_step] = (parameters_of(trainer.model), momentum, buffers)

    trainer.add_callback(Record())
    trainer.train()
    assert trainer.nonfinite_guard.skipped == 2 and trainer.state.global_step == 6
    for before, after in ((2, 3), (3, 4)):  # steps 3 and 4 (global_step 2, 3 while running) were skipped
        for i in range(3):
            assert all(torch.equal(snapshots[before][i][k], v) for k, v in snapshots[after][i].items())
    assert not all(torch.equal(snapshots[4][0][k], v) for k, v in snapshots[5][0].items())  # training resumed
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    logged = [row["plot/skipped_steps"] for row in trainer.state.log_history if "plot/skipped_steps" in row]
    assert logged[-1] == 2.0


def test_nonfinite_gradient_is_skipped(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, save_strategy="no", moo_until_epoch=0)
    head = trainer.model.timm_model.get_classifier().weight
    before = {}
    head.register_hook(lambda g: g * float("nan") if trainer.state.global_step == 1 else g)

    from transformers import TrainerCallback

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            before[state.global_step] = parameters_of(trainer.model)

    trainer.add_callback(Record())
    trainer.train()
    assert trainer.nonfinite_guard.skipped == 1
    assert all(torch.equal(before[1][k], v) for k, v in before[2].items())


def test_too_many_consecutive_bad_steps_stop_with_the_last_good_checkpoint_intact(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, num_train_epochs=3, max_consecutive_bad_steps=3, save_total_limit=None)
    trainer.loss_fn = _NaNAt(trainer, set(range(3, 100)))
    with pytest.raises(NonFiniteTrainingError, match=r"3 consecutive optimizer steps had a NaN/inf loss"):
        trainer.train()
    assert trainer.state.global_step == 5
    good = latest_valid_checkpoint(tmp_path)
    assert good is not None and good.name == "checkpoint-4"
    weights = load_file(good / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


# ------------------------------------------------------------------------------------- subprocess kills
TRAIN_FLAGS = [
    "--model_name", "resnet20_cifar", "--num_train_epochs", "1", "--moo_until_epoch", "0.5",
    "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "2", "--eval_strategy", '"no"',
    "--metric_for_best_model", "null", "--report_to", "none", "--logging_strategy", "steps",
    "--logging_steps", "1", "--disable_tqdm", "true",
]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PLOT_HF_LOG_LEVEL": "WARNING"}


def _train_cmd(output_dir: Path, *extra: str, driver: Path | None = None) -> list[str]:
    head = [sys.executable, str(driver)] if driver else [sys.executable, "-m", "plot_hf.train"]
    return [*head, str(ROOT / "recipes" / "digits_lt.yaml"), "--output_dir", str(output_dir), *TRAIN_FLAGS, *extra]


def _weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "model.safetensors")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def kill_and_resume(output_dir: Path, seed: int) -> dict:
    """Start a run, SIGKILL it at a random time after its first checkpoint, resume it to the end."""
    rng = random.Random(seed)
    proc = subprocess.Popen(_train_cmd(output_dir), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list_checkpoints(output_dir) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 4.0))
    finished_before_kill = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    found = latest_valid_checkpoint(output_dir)
    killed_at = [p.name for p in list_checkpoints(output_dir)]
    subprocess.run(_train_cmd(output_dir, "--resume_from_checkpoint", "last"), env=_env(), cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return {"checkpoints_at_kill": killed_at, "resumed_from": found.name if found else None,
            "finished_before_kill": finished_before_kill}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    subprocess.run(_train_cmd(out), env=_env(), cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)
    return out


@pytest.mark.slow
def test_sigkill_at_a_random_point_then_resume_gives_identical_parameters(reference_run: Path, tmp_path: Path) -> None:
    info = kill_and_resume(tmp_path / "run", seed=int(os.environ.get("PLOT_HF_KILL_SEED", "0")))
    assert info["resumed_from"] is not None, info
    assert _same(_weights(tmp_path / "run"), _weights(reference_run)), info


SLOW_SAVE_DRIVER = """
import sys, time
from transformers import Trainer
marker = sys.argv.pop(1)
original = Trainer._save_rng_state
def slow(self, output_dir):
    original(self, output_dir)
    if self.state.global_step == 4:
        open(marker, "w").write(output_dir)
        time.sleep(120)
Trainer._save_rng_state = slow
from plot_hf.train import main
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_kill_while_a_checkpoint_is_written_never_takes_it_as_complete(reference_run: Path, tmp_path: Path) -> None:
    driver, marker, out = tmp_path / "driver.py", tmp_path / "saving", tmp_path / "run"
    driver.write_text(SLOW_SAVE_DRIVER)
    cmd = _train_cmd(out, driver=driver)
    cmd.insert(2, str(marker))
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    half_written = out / "checkpoint-4"
    assert half_written.is_dir() and (half_written / "model.safetensors").is_file()
    assert not (half_written / MANIFEST_NAME).exists()
    with pytest.raises(CheckpointError, match="incomplete"):
        verify_checkpoint(half_written)
    assert latest_valid_checkpoint(out) == out / "checkpoint-2"
    subprocess.run(_train_cmd(out, "--resume_from_checkpoint", "last"), env=_env(), cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert all(verify_checkpoint(folder) for folder in list_checkpoints(out))  # the stale one was replaced
    assert _same(_weights(out), _weights(reference_run))


if __name__ == "__main__":  # measure: python tests/test_faults.py --trials 10
    import argparse
    import tempfile

    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    cli = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="plot_hf_faults_"))
    subprocess.run(_train_cmd(base / "reference"), env=_env(), cwd=ROOT, check=True, capture_output=True)
    reference = _weights(base / "reference")
    rows = []
    for trial in range(cli.trials):
        info = kill_and_resume(base / f"trial{trial}", seed=trial)
        info["identical"] = _same(_weights(base / f"trial{trial}"), reference)
        rows.append(info)
        print(json.dumps(info), flush=True)
    print(json.dumps({"trials": len(rows), "identical": sum(r["identical"] for r in rows)}))
