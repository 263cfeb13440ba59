"""CO3D v2 (Reizenstein et al., ICCV 2021): turntable-style videos of static objects, SfM cameras and
MVS depth. Static (nothing moves) and NOT metric (per-sequence COLMAP scale).

Layout (datasets.md section 5; facebookresearch/co3d README and `co3d/dataset/data_types.py`):

```
<root>/<category>/frame_annotations.jgz        # gzipped JSON list of frame annotations
<root>/<category>/sequence_annotations.jgz     # per sequence: viewpoint_quality_score, ...
<root>/<category>/set_lists/set_lists_<subset>.json   # {"train"|"val"|"test": [[seq, frame_number, path]]}
<root>/<category>/<sequence>/{images,depths,depth_masks,masks}/
```

Annotation paths (`image.path`, `depth.path`, `depth.mask_path`) are relative to `<root>`; `image.size` is
(H, W); `frame_number` comes from the annotation (it need not match the file-name suffix) and orders the frames.

Split choice: our `split` (train / val / test) is the same-named list of `set_lists_<subset>.json`, with
`subset="fewview_dev"` by default (a set list every category has); a sequence keeps only the frames its list
names. `subset=None` ignores the set lists and reads every annotated frame of every sequence.

- Cameras: `viewpoint` in PyTorch3D convention, NDC intrinsics (`datamodules.pytorch3d_cameras`).
- Depth: float16-bits PNG times `depth.scale_adjustment`, SfM units (`is_metric = False`); pixels outside
  `depth.mask_path` (`depth_masks/`, the multi-view consistency check) and non-positive values are set to 0.
- Dynamic masks: all False (the scenes are static). The `masks/` foreground probabilities are not used.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import numpy as np

from datamodules.base import register_dataset
from datamodules.io import ClipFormatError, read_json, read_mask_png
from datamodules.pytorch3d_cameras import (
    annotation_hw,
    depth_scale,
    entry_path,
    read_annotated_frame,
    read_pytorch3d_depth,
)
from datamodules.sequence import Frame, SequenceDataset

logger = logging.getLogger(__name__)

SPLIT_KEYS = {"train": "train", "val": "val", "test": "test"}


@register_dataset("co3d")
class CO3DDataset(SequenceDataset):
    """CO3D v2 clips; sequences are named `<category>/<sequence_name>` (see the module docstring).

    Args:
        root, num_frames, image_size, normalize, **kwargs: see `SequenceDataset`.
        categories: category folders to read (None = every folder holding a `frame_annotations.jgz`).
        subset: set-list name (`set_lists_<subset>.json`) that maps `split` to frames; None = all frames.
        min_viewpoint_quality: keep only sequences whose `viewpoint_quality_score` (sequence_annotations.jgz)
            is above this (CUT3R/DUSt3R use 0.5); None = no filter.
    """

    name = "co3d"
    is_metric = False

    def __init__(
        self,
        root: str | None = None,
        categories: list[str] | None = None,
        subset: str | None = "fewview_dev",
        min_viewpoint_quality: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.categories, self.subset, self.min_viewpoint_quality = categories, subset, min_viewpoint_quality
        self._frames: dict[str, list[dict[str, Any]]] = {}
        super().__init__(root, **kwargs)  # num_frames, image_size, normalize, split, ...: SequenceDataset's

    # ------------------------------------------------------------------------------------------- index
    def _category_names(self) -> list[str]:
        if self.categories is not None:
            return list(self.categories)
        found = sorted(d.name for d in self.root.iterdir() if (d / "frame_annotations.jgz").is_file())
        if not found:
            raise ClipFormatError(
                f"{self.root}: no <category>/frame_annotations.jgz found; expected the CO3D v2 layout "
                f"<root>/<category>/{{frame_annotations.jgz, sequence_annotations.jgz, set_lists/, <sequence>/}}"
            )
        return found

    def _set_list(self, category: str, strict: bool) -> set[tuple[str, int]] | None:
        """(sequence, frame_number) pairs of `split` in `set_lists_<subset>.json`; None = no filter, or when
        the file is missing in an auto-discovered category (logged; not every category has every subset)."""
        if self.subset is None:
            return None
        key = SPLIT_KEYS.get(self.split)
        if key is None:
            raise ValueError(f"split: expected one of {sorted(SPLIT_KEYS)} for CO3D set lists, got {self.split!r}")
        path = self.root / category / "set_lists" / f"set_lists_{self.subset}.json"
        if not path.is_file():
            folder = path.parent
            available = sorted(p.stem.removeprefix("set_lists_") for p in folder.glob("set_lists_*.json"))
            message = f"{path}: missing set list for subset {self.subset!r}; available: {available}"
            if strict:
                raise ClipFormatError(message)
            logger.warning("co3d: skipping category %s: %s", category, message)
            return set()
        lists = read_json(path)
        if not isinstance(lists, dict) or key not in lists:
            found = sorted(lists) if isinstance(lists, dict) else type(lists).__name__
            raise ClipFormatError(f"{path}: expected a dict with a {key!r} list, found {found}")
        try:
            return {(str(item[0]), int(item[1])) for item in lists[key]}
        except (TypeError, ValueError, IndexError):
            raise ClipFormatError(f"{path}: {key!r} entries must be [sequence_name, frame_number, path]") from None

    def _good_sequences(self, category: str) -> set[str] | None:
        if self.min_viewpoint_quality is None:
            return None
        path = self.root / category / "sequence_annotations.jgz"
        sequences = read_json(path)
        try:
            return {
                s["sequence_name"] for s in sequences
                if s.get("viewpoint_quality_score") is not None
                and s["viewpoint_quality_score"] > self.min_viewpoint_quality
            }
        except (TypeError, KeyError, AttributeError):
            raise ClipFormatError(f"{path}: expected a list of sequence annotations with sequence_name") from None

    def find_sequences(self) -> dict[str, int]:
        frames: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for category in self._category_names():
            path = self.root / category / "frame_annotations.jgz"
            allowed = self._set_list(category, strict=self.categories is not None)
            if allowed is not None and not allowed:
                continue
            good = self._good_sequences(category)
            annotations = read_json(path)
            if not isinstance(annotations, list):
                raise ClipFormatError(f"{path}: expected a JSON list of frame annotations, got {type(annotations)}")
            for k, entry in enumerate(annotations):
                try:
                    seq, number = str(entry["sequence_name"]), int(entry["frame_number"])
                except (KeyError, TypeError, ValueError):
                    shown = repr(entry)[:200]
                    raise ClipFormatError(f"{path}: entry {k} lacks sequence_name / frame_number: {shown}") from None
                if (allowed is None or (seq, number) in allowed) and (good is None or seq in good):
                    entry["frame_number"] = number
                    frames[f"{category}/{seq}"].append(entry)
        for entries in frames.values():
            entries.sort(key=lambda e: e["frame_number"])
        self._frames = dict(frames)
        return {seq: len(entries) for seq, entries in frames.items()}

    # ----------------------------------------------------------------------------------------- frames
    def load_frame(self, seq: str, index: int) -> Frame:
        entry = self._frames[seq][index]
        category = seq.split("/", 1)[0]
        where = f"{self.root / category / 'frame_annotations.jgz'} ({seq}, frame {entry['frame_number']})"
        hw = annotation_hw(entry, where)
        rel = entry_path(entry, "image")
        if rel is None:
            raise ClipFormatError(f"{where}: annotation has no image.path")
        image_path = self.root / rel
        image, extrinsics, intrinsics = read_annotated_frame(image_path, entry, hw, where)
        return Frame(image, intrinsics, extrinsics, self._depth(entry, hw), np.zeros(hw, bool), str(image_path))

    def _depth(self, entry: dict[str, Any], hw: tuple[int, int]) -> np.ndarray | None:
        """SfM-scale z-depth (H, W), 0 outside the depth mask; None when the frame has no depth."""
        rel = entry_path(entry, "depth")
        if rel is None:
            return None
        depth_path = self.root / rel
        depth = read_pytorch3d_depth(depth_path, depth_scale(entry))
        if depth.shape != hw:
            raise ClipFormatError(f"{depth_path}: depth is {depth.shape} (H, W), expected {hw} like the image")
        mask_rel = entry["depth"].get("mask_path") if isinstance(entry["depth"], dict) else None
        if mask_rel:
            mask_path = self.root / mask_rel
            valid = read_mask_png(mask_path)
            if valid.shape != hw:
                raise ClipFormatError(f"{mask_path}: depth mask is {valid.shape} (H, W), expected {hw}")
            depth[~valid] = 0.0
        return depth
