"""CO3D v2 reader: a fixture in the real layout (per-category jgz annotations, set lists, float16-bits depth with
scale_adjustment and 1-bit depth masks, JPEG images, frame_number independent of file names) read back.

Independent reference: the fixture computes pixel positions with PyTorch3D's own definitions
(tests/data/dynamic_replica/scene.py); here the returned OpenCV cameras must reproduce them.
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import datamodules.co3d  # noqa: F401  (registers "co3d")
from datamodules import DATASETS
from datamodules.base import Page4DDataModule
from datamodules.io import ClipFormatError
from tests.data.co3d.make_fixture import CATEGORY, SEQUENCES, write_fixture
from tests.data.dynamic_replica.scene import truncate, write_float16_png

# 84x56 (H x W) source at image_size=56 (aspect kept, at most square): no resize, centre crop rows 14..69.
Y0, OUT_HW = 14, (56, 56)
SEQ_A, SEQ_B = (f"{CATEGORY}/{name}" for name in SEQUENCES)


@pytest.fixture(scope="module")
def co3d(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("co3d")
    return root, write_fixture(root)


@pytest.fixture()
def small(tmp_path) -> tuple[Path, dict]:
    """A fresh fixture to corrupt: 2 sequences x 4 frames."""
    return tmp_path, write_fixture(tmp_path, num_frames=4)


def _dataset(root: Path, **kwargs):
    return DATASETS["co3d"](root, **{"num_frames": 6, "image_size": 56, "normalize": False, "subset": None, **kwargs})


def _sample(ds, seq: str) -> dict:
    sample = ds[list(ds.sequences).index(seq)]
    assert sample["seq_name"] == seq and sample["ids"].tolist() == list(range(ds.num_frames))
    return sample


def test_registry_split_subsets_and_quality_filter(co3d, tmp_path):
    root, _ = co3d
    ds = _dataset(root)
    assert type(ds) is DATASETS["co3d"] and not ds.is_metric and ds.sequences == {SEQ_A: 6, SEQ_B: 6}
    assert _dataset(root, subset="fewview_dev").sequences == {SEQ_A: 6}  # split "train" of the set list
    assert _dataset(root, subset="fewview_dev", split="test").sequences == {SEQ_B: 6}
    many = _dataset(root, subset="manyview_dev_0", split="test", num_frames=2)
    assert many.sequences == {SEQ_B: 2}  # only the frames the list names: frame_number 4 and 5
    full = _dataset(root)
    np.testing.assert_allclose(many.load_frame(SEQ_B, 0).extrinsics, full.load_frame(SEQ_B, 4).extrinsics)
    assert _dataset(root, min_viewpoint_quality=0.5).sequences == {SEQ_A: 6}
    with pytest.raises(ClipFormatError, match=r"set_lists_fewview_train.json: missing set list .*'fewview_dev'"):
        _dataset(root, subset="fewview_train", categories=[CATEGORY])
    with pytest.raises(ClipFormatError, match="no co3d sequences"):  # auto-discovered categories: skipped
        _dataset(root, subset="fewview_train")
    with pytest.raises(ClipFormatError, match="no <category>/frame_annotations.jgz"):
        _dataset(tmp_path)


def test_depth_applies_scale_adjustment_and_depth_masks(co3d):
    root, info = co3d
    ds = _dataset(root)
    for seq in (SEQ_A, SEQ_B):
        gt = info["sequences"][seq]
        sample = _sample(ds, seq)
        assert sample["images"].shape == (6, 3, *OUT_HW) and sample["depths"].dtype == torch.float32
        depth = sample["depths"].numpy()
        np.testing.assert_array_equal(depth, gt["depth"][:, Y0 : Y0 + OUT_HW[0]])
        assert (depth == 0).mean() > 0.1 and depth.max() < 6.0  # MVS holes zeroed, junk under the mask gone
        assert not sample["dynamic_masks"].any() and sample["dynamic_masks"].shape == (6, *OUT_HW)  # static
        diff = np.abs(sample["images"].permute(0, 2, 3, 1).numpy() * 255 - gt["image"][:, Y0 : Y0 + OUT_HW[0]])
        assert diff.mean() < 12.0  # JPEG


@pytest.mark.parametrize("seq", [SEQ_A, SEQ_B], ids=[fmt for fmt, *_ in SEQUENCES.values()])
def test_cameras_project_known_points_in_every_frame(co3d, seq):
    root, info = co3d
    gt = info["sequences"][seq]
    sample = _sample(_dataset(root), seq)
    E, K = sample["extrinsics"].double().numpy(), sample["intrinsics"].double().numpy()
    cam = np.einsum("sij,nj->sni", E[:, :, :3], gt["points"]) + E[:, None, :, 3]
    uv = np.einsum("sij,snj->sni", K[:, :2, :2], cam[..., :2] / cam[..., 2:]) + K[:, None, :2, 2]
    np.testing.assert_allclose(uv, gt["screen"][..., :2] - 0.5 - np.array([0, Y0]), atol=1e-3)
    centres = -np.einsum("sji,sj->si", E[:, :, :3], E[:, :, 3])
    np.testing.assert_allclose(centres, [c.centre for c in gt["cameras"]], atol=1e-5)


def test_frames_follow_frame_number_not_file_names(co3d):
    root, info = co3d
    ds = _dataset(root)
    gt = info["sequences"][SEQ_A]
    for i in range(6):
        frame = ds.load_frame(SEQ_A, i)
        assert frame.source.endswith(f"images/frame{gt['file_ids'][i]:06d}.jpg") and gt["file_ids"][i] == 6 - i
        np.testing.assert_allclose(-frame.extrinsics[:, :3].T @ frame.extrinsics[:, 3], gt["cameras"][i].centre,
                                   atol=1e-9)


def test_normalize_makes_the_first_camera_the_identity(co3d):
    root, _ = co3d
    sample = _dataset(root, normalize=True, num_frames=4)[0]
    np.testing.assert_allclose(sample["extrinsics"][0].numpy(), np.eye(3, 4), atol=1e-5)


def _seq_file(root: Path, folder: str, file_id: int, suffix: str) -> Path:
    return root / CATEGORY / list(SEQUENCES)[0] / folder / f"frame{file_id:06d}{suffix}"


def _missing_depth_mask(root: Path) -> str:
    _seq_file(root, "depth_masks", 3, ".png").unlink()
    return "depth_masks/frame000003.png: missing"


def _truncated_jpeg(root: Path) -> str:
    truncate(_seq_file(root, "images", 2, ".jpg"), keep=0.3)
    return "images/frame000002.jpg: unreadable"


def _depth_size(root: Path) -> str:
    write_float16_png(_seq_file(root, "depths", 1, ".jpg.geometric.png"), np.ones((84, 28)))
    return r"depths/frame000001.jpg.geometric.png: depth is \(84, 28\) \(H, W\), expected \(84, 56\)"


def _nan_pose(root: Path) -> str:
    path = root / CATEGORY / "frame_annotations.jgz"
    with gzip.open(path, "rt") as f:
        annotations = json.load(f)
    entry = next(e for e in annotations if e["sequence_name"] == list(SEQUENCES)[0] and e["frame_number"] == 1)
    entry["viewpoint"]["T"][2] = float("nan")
    with gzip.open(path, "wt") as f:
        json.dump(annotations, f)
    return r"frame_annotations.jgz \(teddybear/34_1403_4393, frame 1\): bad viewpoint: T: holds NaN"


@pytest.mark.parametrize("corrupt", [_missing_depth_mask, _truncated_jpeg, _depth_size, _nan_pose])
def test_bad_files_raise_naming_the_file(small, corrupt):
    root, _ = small
    match = corrupt(root)
    ds = _dataset(root, num_frames=4)
    with pytest.raises(ClipFormatError, match=match):
        ds[list(ds.sequences).index(SEQ_A)]
    problems = ds.validate()
    assert len(problems) == 1 and match.split(":")[0].replace("\\", "") in problems[0]


def test_bad_clip_is_skipped_logged_and_counted(small, caplog):
    root, _ = small
    truncate(_seq_file(root, "depths", 2, ".jpg.geometric.png"))
    ds = _dataset(root, num_frames=4, skip_bad_clips=True)
    assert list(ds.sequences) == [SEQ_B, SEQ_A]
    with caplog.at_level(logging.WARNING, logger="datamodules.sequence"):
        sample = ds[1]  # SEQ_A is bad: the next clip (wrapping round) is SEQ_B
    assert sample["seq_name"] == SEQ_B and ds.bad_clips == 1
    assert "frame000002.jpg.geometric.png" in caplog.text


def test_datamodule_serves_a_batch(co3d):
    root, _ = co3d
    dm = Page4DDataModule(dataset="co3d", root=str(root), num_frames=4, image_size=56, batch_size=2,
                          train={"subset": None})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (2, 4, 3, *OUT_HW) and batch["depths"].shape == (2, 4, *OUT_HW)
    assert not batch["dynamic_masks"].any() and batch["dataset"] == ["co3d", "co3d"]
    assert torch.isfinite(batch["world_points"]).all()


def test_random_frames_with_replacement_is_the_official_co3d_sampling(co3d):
    """`frame_sampling: random_with_replacement` (official co3d.py:282-293): S uniform draws over the sequence,
    unordered, repeats allowed; the first draw is the reference frame. Each returned frame must still carry its
    own camera and depth."""
    root, info = co3d
    ds = _dataset(root, num_frames=8, frame_sampling="random_with_replacement", seed=4)
    assert len(ds) == 2  # one clip per sequence (6 frames < S = 8), as for contiguous windows
    seen_unordered = False
    for epoch in range(3):
        for k, seq in enumerate(ds.sequences):
            sample = ds[(k, None, None, epoch)]
            ids = sample["ids"].tolist()
            want = np.random.default_rng([4, epoch, k]).integers(0, 6, size=8).tolist()  # (seed, epoch, index)
            assert ids == want and len(set(ids)) < 8  # 8 draws of 6 frames: repeats
            seen_unordered |= ids != sorted(ids)
            gt = info["sequences"][seq]
            E, K = sample["extrinsics"].double().numpy(), sample["intrinsics"].double().numpy()
            cam = np.einsum("sij,nj->sni", E[:, :, :3], gt["points"]) + E[:, None, :, 3]
            uv = np.einsum("sij,snj->sni", K[:, :2, :2], cam[..., :2] / cam[..., 2:]) + K[:, None, :2, 2]
            np.testing.assert_allclose(uv, gt["screen"][ids, :, :2] - 0.5 - np.array([0, Y0]), atol=1e-3)
            np.testing.assert_array_equal(sample["depths"].numpy(), gt["depth"][ids][:, Y0 : Y0 + OUT_HW[0]])
    assert seen_unordered
    normalized = _dataset(root, num_frames=8, frame_sampling="random_with_replacement", seed=4, normalize=True)[0]
    np.testing.assert_allclose(normalized["extrinsics"][0].numpy(), np.eye(3, 4), atol=1e-5)  # first draw = ref
    with pytest.raises(ValueError, match="frame_sampling: expected one of contiguous, random_with_replacement"):
        _dataset(root, frame_sampling="random")
