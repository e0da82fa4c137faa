"""A few PLOT steps with PLOTTrainer, on one process or under ``torchrun`` (gloo, CPU); launched by
tests/test_distributed.py.

Usage: ``python ddp_worker.py OUT_DIR BATCH_PER_PROCESS [key=value ...]`` (``key=value``: PLOTConfig fields,
values read as YAML). After every optimizer step the parameters' hash is all-gathered and must be identical on
every rank; rank 0 writes ``OUT_DIR/params.pt`` (final parameters) and ``OUT_DIR/hashes.json`` (per step).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from transformers import TrainerCallback  # noqa: E402

from plot_hf import PLOTConfig, PLOTTrainer  # noqa: E402
from tests.helpers import collate, tensor_dataset, tiny_model  # noqa: E402


def parameter_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for _, p in sorted(model.named_parameters()):
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class RankHashCheck(TrainerCallback):
    """All-gather the parameter hash after every optimizer step; fail if the ranks differ."""

    def __init__(self) -> None:
        self.hashes: list[list[str]] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        digest = parameter_hash(model)
        gathered = [digest]
        if dist.is_initialized():
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, digest)
        if len(set(gathered)) != 1:
            raise AssertionError(f"step {state.global_step}: parameters differ across ranks: {gathered}")
        self.hashes.append(gathered)


def main() -> None:
    out_dir, batch = Path(sys.argv[1]), int(sys.argv[2])
    overrides = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in sys.argv[3:])}
    architecture = overrides.pop("architecture", "resnet32_cifar_gn")
    steps = int(overrides.pop("steps", 3))
    args = PLOTConfig(
        output_dir=str(out_dir / "run"), per_device_train_batch_size=batch, max_steps=steps, learning_rate=0.05,
        optim="sgd", use_cpu=True, save_strategy="no", report_to="none", disable_tqdm=True, seed=3,
        logging_steps=1, dataloader_num_workers=0, train_sampling_strategy="sequential",
        moo_until_epoch=100, **overrides,
    )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        args.ddp_backend = "gloo"
    model = tiny_model(architecture, num_classes=4)
    check = RankHashCheck()
    trainer = PLOTTrainer(model=model, args=args, train_dataset=tensor_dataset(num_rows=96), data_collator=collate,
                          callbacks=[check])
    trainer.train()
    if trainer.accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        params = {n: p.detach().cpu().clone() for n, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters()}
        torch.save(params, out_dir / "params.pt")
        record = {"hashes": check.hashes, "world_size": trainer.accelerator.num_processes,
                  "logs": [h for h in trainer.state.log_history if "loss" in h]}
        (out_dir / "hashes.json").write_text(json.dumps(record))
    if dist.is_initialized():  # a clean exit: no rank tears the group down while another still uses it
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
