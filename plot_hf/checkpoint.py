"""Checkpoint integrity: a manifest written last, atomically, and the checks that read it back.

A checkpoint folder (``checkpoint-N``) is *complete* only when it holds ``plot_hf_manifest.json``, listing
the size and sha256 of every other file, and every listed file matches. The manifest is written after all the
Trainer's files (model, optimizer, scheduler, RNG, trainer state), to a temporary file that is fsynced and then
renamed over the final name, so a process killed at any point leaves either no manifest (incomplete) or a
manifest that describes fully written files. A file truncated or altered later fails the sha256 check.

:func:`latest_valid_checkpoint` is what resuming uses: the newest checkpoint that verifies, with a warning for
each newer one that does not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

MANIFEST_NAME = "plot_hf_manifest.json"
MANIFEST_VERSION = 1
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint folder is incomplete (no manifest: the run died while writing it) or corrupted."""


def _sha256(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(f".{MANIFEST_NAME}")
    )


def write_manifest(folder: str | os.PathLike, step: int | None = None) -> Path:
    """Hash every file of ``folder`` and write the manifest atomically (temp file, fsync, rename, fsync dir)."""
    folder = Path(folder)
    files = {}
    for path in _files(folder):
        with path.open("rb") as handle:  # the Trainer's files may not be fsynced yet
            os.fsync(handle.fileno())
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {"version": MANIFEST_VERSION, "step": step, "files": files}
    tmp = folder / f".{MANIFEST_NAME}.{os.getpid()}.tmp"
    with tmp.open("w") as handle:
        json.dump(manifest, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, folder / MANIFEST_NAME)
    _fsync_dir(folder)
    return folder / MANIFEST_NAME


def invalidate(folder: str | os.PathLike) -> None:
    """Remove the manifest of ``folder`` (before its files are overwritten), so it reads as incomplete."""
    manifest = Path(folder) / MANIFEST_NAME
    if manifest.exists():
        manifest.unlink()
        _fsync_dir(Path(folder))


def verify_checkpoint(folder: str | os.PathLike, *, check_hashes: bool = True) -> dict:
    """Return the manifest of a complete checkpoint; raise :class:`CheckpointError` naming what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"Checkpoint {str(folder)!r} does not exist or is not a folder.")
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise CheckpointError(
            f"Checkpoint {str(folder)!r} is incomplete: it has no {MANIFEST_NAME} (written last), so the run "
            "stopped while writing it, or it was not written by plot-hf (if you trust it, write one with "
            "`python -c 'from plot_hf.checkpoint import write_manifest; write_manifest(PATH)'`)."
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"Checkpoint {str(folder)!r}: unreadable {MANIFEST_NAME} ({error}).") from error
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"Checkpoint {str(folder)!r} is corrupted: {name} is missing.")
        size = path.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(
                f"Checkpoint {str(folder)!r} is corrupted: {name} has {size} bytes, the manifest says "
                f"{entry['size']} (truncated or overwritten)."
            )
        if check_hashes and _sha256(path) != entry["sha256"]:
            raise CheckpointError(f"Checkpoint {str(folder)!r} is corrupted: the sha256 of {name} does not match.")
    return manifest


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, newest (largest N) first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_valid_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint of ``output_dir`` that verifies; each newer, invalid one is logged and skipped."""
    for folder in list_checkpoints(output_dir):
        try:
            verify_checkpoint(folder)
        except CheckpointError as error:
            logger.warning("%s Skipping it; trying the previous checkpoint.", error)
            continue
        return folder
    return None


def remove_invalid_checkpoints(output_dir: str | os.PathLike, keep: str | os.PathLike | None = None) -> list[Path]:
    """Delete the incomplete ``checkpoint-N`` folders of ``output_dir`` (no manifest, or a file of the wrong
    size; sizes only, no hashing), except ``keep``. Run after a save, so that rotation counts complete ones."""
    removed = []
    for folder in list_checkpoints(output_dir):
        if keep is not None and Path(keep).resolve() == folder.resolve():
            continue
        try:
            verify_checkpoint(folder, check_hashes=False)
        except CheckpointError:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
