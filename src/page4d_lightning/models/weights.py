"""Load official or project weights into a `PAGE4D` strictly, without unpickling code.

Accepted files: VGGT-1B `model.pt` (plain state dict without the spatial mask head), PAGE-4D training
checkpoints `checkpoint_*.pt` (state dict under "model"), `.safetensors`, the project's exports (plain
state dict) and Lightning checkpoints (keys under "state_dict" prefixed by "model.").
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

logger = logging.getLogger(__name__)

MASK_HEAD_PREFIX = "aggregator.spatial_mask_head."
TRACK_HEAD_PREFIX = "track_head."
_MAX_LISTED = 5


@dataclass
class LoadReport:
    """What `load_weights` did: file format, tensors loaded, keys left initialised or filled/ignored."""

    path: str
    format: str  # "state_dict" | "page4d_checkpoint" | "lightning" | "safetensors"
    loaded: int  # number of model tensors set from `path`
    initialised: list[str] = field(default_factory=list)  # model keys left at their initial values
    track_head_from: str | None = None  # file that supplied track_head.*
    ignored: list[str] = field(default_factory=list)  # file keys without a place in this model


def torch_file_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be a `torch.save` file (missing, a folder, empty, truncated), or None.

    Cheap: reads only the end of the file. `torch.save` writes a zip archive whose central directory comes
    last, so a file cut short by a kill or a full disk has none. Legacy (pre-1.6, non-zip) files pass.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return "no such file"
    if not os.path.isfile(path):
        return "not a file"
    size = os.path.getsize(path)
    if size == 0:
        return "empty file (0 bytes)"
    with open(path, "rb") as f:
        legacy = f.read(2) == b"\x80\x02"  # a pickle protocol-2 header: the pre-zip torch.save format
    if not legacy and not zipfile.is_zipfile(path):
        return (f"truncated or not a torch.save file ({size} bytes, no zip central directory at its end; "
                "a run killed while writing it, or a partial copy?)")
    return None


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> object:
    """`torch.load(path, weights_only=True)` on the CPU, with errors that name the file and what is wrong."""
    path = os.fspath(path)
    problem = torch_file_problem(path)
    if problem is not None:
        error = FileNotFoundError if problem == "no such file" else ValueError
        raise error(f"{path}: {problem}; expected a {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: refused to load, the file pickles objects other than tensors and plain containers "
            f"(only weights_only=True loading is allowed): {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{path}: unreadable {what} (torch.load failed: {first})") from err


def _read_file(path: str | os.PathLike) -> tuple[object, bool]:
    """(content of `path`, is safetensors): safetensors, or torch.load(weights_only=True) on CPU."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such weights file")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu"), True
        except SafetensorError as err:
            raise ValueError(f"{path}: unreadable safetensors file, truncated or corrupt ({err})") from err
    return load_torch_file(path, "weights file"), False


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict with the official names, format name) from any accepted weights file."""
    obj, is_safetensors = _read_file(path)
    if is_safetensors:
        state, fmt = dict(obj), "safetensors"
    elif isinstance(obj, Mapping) and _is_tensor_dict(obj.get("model")):
        state, fmt = dict(obj["model"]), "page4d_checkpoint"
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        state = {k[len("model.") :]: v for k, v in obj["state_dict"].items() if k.startswith("model.")}
        fmt = "lightning"
        if not state:
            raise ValueError(f"{path}: Lightning checkpoint without any 'model.*' key in 'state_dict'")
    elif _is_tensor_dict(obj):
        state, fmt = dict(obj), "state_dict"
    else:
        keys = list(obj)[:_MAX_LISTED] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(
            f"{path}: not a recognised weights file (expected a state dict, a dict with 'model' or a Lightning"
            f" 'state_dict'), top-level content: {keys}"
        )
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state, fmt


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _mismatch_message(path, missing, unexpected, mis_shaped, expected, state) -> str:
    parts = []
    if missing:
        listed = ", ".join(f"{k} {_shape(expected[k])}" for k in missing[:_MAX_LISTED])
        parts.append(f"{len(missing)} missing (first: {listed})")
    if unexpected:
        listed = ", ".join(f"{k} {_shape(state[k])}" for k in unexpected[:_MAX_LISTED])
        parts.append(f"{len(unexpected)} unexpected (first: {listed})")
    if mis_shaped:
        listed = ", ".join(
            f"{k}: file {_shape(state[k])} vs model {_shape(expected[k])}" for k in mis_shaped[:_MAX_LISTED]
        )
        parts.append(f"{len(mis_shaped)} with a different shape (first: {listed})")
    return f"{path}: weights do not match the model: " + "; ".join(parts)


TRACK_HEAD_INIT = "init"
"""`track_head_from` value that keeps a freshly initialised track head when the weights file has none."""


def load_weights(model: nn.Module, path: str | os.PathLike, track_head_from: str | None = None) -> LoadReport:
    """Load `path` into `model` (a PAGE4D) strictly; returns a `LoadReport`; sets mask strength 0.

    Documented gaps only: a file without `aggregator.spatial_mask_head.*` (VGGT-1B) leaves the mask head
    initialised; a file without `track_head.*` (PAGE-4D checkpoints trained without tracking) takes the
    track head from the VGGT-1B file `track_head_from` (or keeps its initial values when `track_head_from` is
    `TRACK_HEAD_INIT`, "init": a track head trained from scratch on top of the file's trunk), or raises.
    `track_head.*` in the file is ignored (and reported) when the model was built without a track head. Any
    other missing, unexpected or mis-shaped key raises ValueError naming the first ones with their shapes.
    """
    path = os.fspath(path)
    state, fmt = read_state_dict(path)
    expected = model.state_dict()
    report = LoadReport(path=path, format=fmt, loaded=0)

    has_track = any(k.startswith(TRACK_HEAD_PREFIX) for k in expected)
    if not has_track:
        report.ignored = [k for k in state if k.startswith(TRACK_HEAD_PREFIX)]
        state = {k: v for k, v in state.items() if not k.startswith(TRACK_HEAD_PREFIX)}
        if report.ignored:
            logger.info("%s: model has no track head, ignoring %d track_head.* tensors", path, len(report.ignored))

    missing = [k for k in expected if k not in state]
    mask_keys = [k for k in expected if k.startswith(MASK_HEAD_PREFIX)]
    if mask_keys and all(k in missing for k in mask_keys):
        report.initialised = mask_keys
        missing = [k for k in missing if not k.startswith(MASK_HEAD_PREFIX)]
    track_keys = [k for k in expected if k.startswith(TRACK_HEAD_PREFIX)]
    track_missing = has_track and all(k in missing for k in track_keys)
    if track_missing:
        missing = [k for k in missing if not k.startswith(TRACK_HEAD_PREFIX)]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [k for k in state if k in expected and _shape(state[k]) != _shape(expected[k])]
    if missing or unexpected or mis_shaped:
        raise ValueError(_mismatch_message(path, missing, unexpected, mis_shaped, expected, state))

    if track_missing and track_head_from == TRACK_HEAD_INIT:
        report.initialised = [*report.initialised, *track_keys]
        logger.info("%s: no track_head.* weights: the track head keeps its initial values (track_head_from=%r)",
                    path, TRACK_HEAD_INIT)
    elif track_missing:
        if track_head_from is None:
            raise ValueError(
                f"{path}: has no track_head.* weights ({len(track_keys)} tensors, e.g. {track_keys[0]}"
                f" {_shape(expected[track_keys[0]])}) but the model has a track head: pass track_head_from="
                "<VGGT-1B model.pt> to take it from there, track_head_from='init' to train it from scratch, or "
                "build the model with enable_track=False"
            )
        donor, _ = read_state_dict(track_head_from)
        donor = {k: v for k, v in donor.items() if k.startswith(TRACK_HEAD_PREFIX)}
        d_missing = [k for k in track_keys if k not in donor]
        d_unexpected = [k for k in donor if k not in expected]
        d_shape = [k for k in donor if k in expected and _shape(donor[k]) != _shape(expected[k])]
        if d_missing or d_unexpected or d_shape:
            raise ValueError(_mismatch_message(track_head_from, d_missing, d_unexpected, d_shape, expected, donor))
        state = {**state, **donor}
        report.track_head_from = os.fspath(track_head_from)
        logger.info("%s: track_head.* taken from %s", path, track_head_from)

    model.load_state_dict(state, strict=False)
    report.loaded = len(state)
    if report.initialised:
        logger.info(
            "%s: no %s* weights (VGGT-1B file): the spatial mask head keeps its initial values",
            path,
            MASK_HEAD_PREFIX,
        )
    if hasattr(model, "set_mask_strength"):
        model.set_mask_strength(0.0)
    return report


def checkpoint_model_args(ckpt: str | os.PathLike) -> list[str]:
    """`--model.preset` / `--model.model_overrides` of a Lightning checkpoint (its hyper-parameters), so that a
    tiny checkpoint is run with the tiny architecture (`page4d eval`, `page4d predict`); [] for a plain weights file.
    Read with `weights_only=True` and `mmap=True`: nothing is unpickled, no tensor is loaded."""
    import json

    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not hparams:
        return []
    args = ["--model.preset", str(hparams.get("preset", "vggt_1b"))]
    if hparams.get("model_overrides"):
        args += ["--model.model_overrides", json.dumps(hparams["model_overrides"])]
    return args
