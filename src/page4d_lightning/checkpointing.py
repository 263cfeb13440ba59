"""Checkpoints that survive a kill while saving, and the export of trained weights.

- `AtomicCheckpointIO`: Lightning `CheckpointIO` that writes each checkpoint to a temporary file in the
  target's folder, fsyncs it and renames it over the target (`os.replace`, atomic on POSIX): a kill or a
  full disk leaves the previous `last.ckpt` intact, and the next save removes the temporary file such a kill
  left behind. Loading names the file when it is truncated or unreadable. The `page4d` CLI uses it by default.
- `export_weights`: a `Page4DModule` Lightning checkpoint -> the PAGE4D state dict with the official key
  names, as `.safetensors` (or `.pt`); `page4d export-weights CKPT OUT` is its command line (`tools/`).
"""

from __future__ import annotations

import glob
import logging
import os
import pickle
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor

from page4d_lightning.models.weights import load_torch_file, torch_file_problem

logger = logging.getLogger(__name__)

MODEL_PREFIX = "model."
"""Prefix of the PAGE4D parameters in a `Page4DModule` state dict (the module holds it as `self.model`)."""

EXPORT_SUFFIXES = (".safetensors", ".pt")


def _fsync_dir(folder: str) -> None:
    """Make a rename inside `folder` durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


STALE_AFTER_S = 120.0
"""A temporary file not written to for this long is a leftover: a live save writes to it continuously."""


def remove_stale_temporaries(
    folder: str | os.PathLike, names: str = "*", min_age_s: float = STALE_AFTER_S
) -> list[str]:
    """Delete the temporary files `atomic_path` left in `folder` for targets matching the glob `names`.

    Such files (`.<name>.<random>.tmp`) remain when a writer was killed (SIGKILL) while saving. Only files not
    modified for `min_age_s` seconds are removed, so the live save of another process writing to the same folder
    (an evaluation beside a running fit, two runs sharing a folder) is never touched. Returns the removed paths.
    """
    removed = []
    now = time.time()
    for stale in glob.glob(os.path.join(glob.escape(os.fspath(folder)), f".{names}.*.tmp")):
        try:
            if now - os.path.getmtime(stale) < min_age_s:
                continue
            os.remove(stale)
        except FileNotFoundError:
            continue
        removed.append(stale)
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted save: %s", len(removed), ", ".join(removed))
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to `path`; on success fsync it and rename it onto `path`.

    On any exception (including KeyboardInterrupt) the temporary file is removed and `path` is untouched.
    The temporary name (`.<name>.<random>.tmp`) never matches `*.ckpt`, so Lightning's `last*.ckpt`
    search ignores a leftover from a SIGKILL; the next save of `path` deletes such leftovers.
    """
    target = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(folder, glob.escape(os.path.basename(target)))
    tmp = os.path.join(folder, f".{os.path.basename(target)}.{uuid.uuid4().hex[:12]}.tmp")
    # created like a plain open() (mode 0o666 minus the umask), unlike mkstemp's owner-only 0o600
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj, path)` through `atomic_path`: `path` holds either the old or the new content."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local saves are atomic and durable (temp file, fsync, `os.replace`).

    Remote paths (`s3://`, ...) keep Lightning's own transaction-based save. Loading and removal are
    Lightning's. Streaming `torch.save` into the file also avoids Lightning's in-memory copy of the
    whole checkpoint.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint: storage_options is not supported")
        fs, local_path = url_to_fs(str(path))  # also accepts "file://..." URLs
        if not isinstance(fs, LocalFileSystem):
            super().save_checkpoint(checkpoint, path)
            return
        logger.debug("saving checkpoint %s", local_path)
        atomic_torch_save(checkpoint, local_path)

    def load_checkpoint(self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        """Lightning's load, but a missing, truncated or unreadable local file raises an error that names it."""
        fs, local_path = url_to_fs(str(path))
        if not isinstance(fs, LocalFileSystem):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        problem = torch_file_problem(local_path)
        if problem is not None:
            error = FileNotFoundError if problem == "no such file" else ValueError
            raise error(f"{local_path}: {problem}; expected a Lightning checkpoint (--ckpt_path)")
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"{local_path}: unreadable Lightning checkpoint (torch.load failed: {first})") from err


# ------------------------------------------------------------------------------------- weights export
def model_state_dict(checkpoint: dict[str, Any], source: str = "checkpoint") -> dict[str, Tensor]:
    """PAGE4D state dict (official names) from a loaded `Page4DModule` Lightning checkpoint dict."""
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        top = sorted(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{source}: not a Lightning checkpoint (no 'state_dict'; top-level content: {top})")
    weights = {k[len(MODEL_PREFIX) :]: v for k, v in state.items() if k.startswith(MODEL_PREFIX)}
    if not weights:
        raise ValueError(
            f"{source}: not a Page4DModule checkpoint, no '{MODEL_PREFIX}*' key in its state_dict "
            f"(first keys: {list(state)[:5]})"
        )
    return weights


def _writer(suffix: str) -> Callable[[dict[str, Tensor], str], None]:
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        return lambda state, path: save_file(state, path, metadata={"format": "pt"})
    return lambda state, path: torch.save(state, path)


def export_weights(
    checkpoint_path: str | os.PathLike, output_path: str | os.PathLike, dtype: torch.dtype | None = None
) -> dict[str, Tensor]:
    """Write the PAGE4D weights of a `Page4DModule` checkpoint to `output_path` (`.safetensors` or `.pt`).

    The file holds exactly `PAGE4D(config).state_dict()` (the official key names), so
    `page4d_lightning.models.load_weights` loads it strictly. `dtype` (e.g. torch.float16, half the size) casts the
    floating-point tensors; loading casts them back to the model's dtype. Returns the exported state dict.
    """
    checkpoint_path, output_path = os.fspath(checkpoint_path), os.fspath(output_path)
    suffix = Path(output_path).suffix
    if suffix not in EXPORT_SUFFIXES:
        raise ValueError(f"output: expected a file name ending in {' or '.join(EXPORT_SUFFIXES)}, got {output_path!r}")
    checkpoint = load_torch_file(checkpoint_path, "Lightning checkpoint")
    state = {k: v.contiguous() for k, v in model_state_dict(checkpoint, checkpoint_path).items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    with atomic_path(output_path) as tmp:
        _writer(suffix)(state, tmp)
    numel = sum(v.numel() for v in state.values())
    logger.info("wrote %s: %d tensors, %.2f M parameters (from %s)", output_path, len(state), numel / 1e6,
                checkpoint_path)
    return state
