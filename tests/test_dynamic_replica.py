"""Dynamic Replica reader: a fixture in the real layout (jgz annotations of both cameras, float16-bits depth PNGs,
fg/bg masks, left-view trajectory .pth files) read back and checked against the analytic scene.

Independent reference: the fixture computes every pixel position with PyTorch3D's own definitions
(tests/data/dynamic_replica/scene.py); here the returned OpenCV cameras must reproduce them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import datamodules.dynamic_replica  # noqa: F401  (registers "dynamic_replica")
from datamodules import DATASETS
from datamodules.base import Page4DDataModule
from datamodules.io import ClipFormatError
from tests.data.dynamic_replica.make_fixture import BASELINE, HW, SEQUENCES, write_fixture
from tests.data.dynamic_replica.scene import truncate, write_float16_png

# 56x84 source at image_size=56 (aspect kept): H = round(56*56/84/14)*14 = 42; resize by max(42/56, 56/84) = 0.75
# to 42x63, centre crop columns 3..58. In PyTorch3D screen units (pixel i spans [i, i+1]): u' = 0.75 u - 3.
SCALE, X0, OUT_HW = 0.75, 3.0, (42, 56)
SEQS = list(SEQUENCES)


def output_pixels(screen: np.ndarray) -> np.ndarray:
    """PyTorch3D screen x, y (..., >=2) of the native image -> OpenCV pixels of the 56x42 output."""
    return SCALE * screen[..., :2] - np.array([X0, 0.0]) - 0.5


def project(sample: dict, points: np.ndarray) -> np.ndarray:
    """World points (S, N, 3) -> pixels (S, N, 2) with the RETURNED extrinsics and intrinsics."""
    E, K = sample["extrinsics"].double().numpy(), sample["intrinsics"].double().numpy()
    cam = np.einsum("sij,snj->sni", E[:, :, :3], points) + E[:, None, :, 3]
    return np.einsum("sij,snj->sni", K[:, :2, :2], cam[..., :2] / cam[..., 2:]) + K[:, None, :2, 2]


@pytest.fixture(scope="module")
def dr(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("dynamic_replica")
    return root, write_fixture(root)


@pytest.fixture()
def small(tmp_path) -> tuple[Path, dict]:
    """A fresh fixture to corrupt: 2 sequences x 4 frames."""
    return tmp_path, write_fixture(tmp_path, num_frames=4)


def _dataset(root: Path, **kwargs):
    return DATASETS["dynamic_replica"](root, **{"num_frames": 6, "image_size": 84, "normalize": False, **kwargs})


def _sample(ds, seq: str) -> dict:
    sample = ds[list(ds.sequences).index(seq)]
    assert sample["seq_name"] == seq and sample["ids"].tolist() == list(range(ds.num_frames))
    return sample


def test_registry_and_split_folders(dr, tmp_path):
    root, _ = dr
    ds = _dataset(root)
    assert type(ds) is DATASETS["dynamic_replica"] and ds.is_metric and not ds.sparse_depth
    assert ds.sequences == {seq: 6 for seq in SEQS}
    write_fixture(tmp_path, split="valid", num_frames=2)
    assert _dataset(tmp_path, split="val", num_frames=2).sequences == {seq: 2 for seq in SEQS}  # val -> valid/
    with pytest.raises(ClipFormatError, match="frame_annotations_train.jgz: missing"):
        _dataset(tmp_path, split="train")
    with pytest.raises(ValueError, match="camera"):
        _dataset(root, camera="centre")


def test_depth_images_and_dynamic_masks_at_native_size(dr):
    root, info = dr
    ds = _dataset(root)
    for seq in SEQS:
        gt = info["sequences"][seq]["left"]
        sample = _sample(ds, seq)
        assert sample["images"].shape == (6, 3, *HW) and sample["depths"].dtype == torch.float32
        np.testing.assert_array_equal(sample["depths"].numpy(), gt["depth"])  # metres, float16-rounded
        depth = sample["depths"].numpy()
        assert (depth == 0).any() and 1.0 < np.median(depth[depth > 0]) < 6.0  # sky (5e-6 / inf) -> 0
        np.testing.assert_array_equal((sample["images"].permute(0, 2, 3, 1) * 255).round().byte().numpy(), gt["image"])
        masks = sample["dynamic_masks"].numpy()
        np.testing.assert_array_equal(masks, gt["dynamic"])
        assert masks.any() and not masks.all()


@pytest.mark.parametrize("seq", SEQS, ids=[fmt for fmt, _ in SEQUENCES.values()])
def test_cameras_project_known_points_in_every_frame(dr, seq):
    root, info = dr
    gt = info["sequences"][seq]
    sample = _sample(_dataset(root), seq)
    uv = project(sample, gt["points"])
    np.testing.assert_allclose(uv, gt["screen"][..., :2] - 0.5, atol=1e-3)  # OpenCV = screen - 0.5
    E = sample["extrinsics"].double().numpy()
    centres = -np.einsum("sji,sj->si", E[:, :, :3], E[:, :, 3])
    np.testing.assert_allclose(centres, [c.centre for c in gt["left"]["cameras"]], atol=1e-5)  # metres


def test_intrinsics_after_resize_and_crop(dr):
    root, info = dr
    sample = _sample(_dataset(root, image_size=56), SEQS[0])
    assert sample["images"].shape == (6, 3, *OUT_HW) and sample["dynamic_masks"].shape == (6, *OUT_HW)
    cam = info["sequences"][SEQS[0]]["left"]["cameras"][0]
    f_px = cam.focal * cam.ndc_scale
    c_screen = np.array([HW[1] / 2, HW[0] / 2]) - cam.principal * cam.ndc_scale
    c_out = output_pixels(c_screen)
    expected = np.array([[SCALE * f_px[0], 0, c_out[0]], [0, SCALE * f_px[1], c_out[1]], [0, 0, 1]])
    np.testing.assert_allclose(sample["intrinsics"][0].double().numpy(), expected, atol=1e-4)
    gt = info["sequences"][SEQS[0]]
    np.testing.assert_allclose(project(sample, gt["points"]), output_pixels(gt["screen"]), atol=1e-3)


def test_tracks_land_where_the_known_points_project(dr):
    root, info = dr
    ds = _dataset(root, image_size=56, num_tracks=20)
    for seq in SEQS:
        gt = info["sequences"][seq]
        native = ds.load_tracks(seq, [0, 2, 4])
        np.testing.assert_allclose(native.points, gt["screen"][[0, 2, 4], :, :2] - 0.5, atol=1e-4)
        np.testing.assert_array_equal(native.visible, gt["visible"][[0, 2, 4]])
        sample = _sample(ds, seq)
        tracks, vis = sample["tracks"].double().numpy(), sample["track_vis_mask"].numpy()
        assert tracks.shape == (6, 20, 2) and sample["track_positive_mask"].any()
        expected = output_pixels(gt["screen"])  # (S, N, 2)
        inside = (expected[..., 0] >= -0.5) & (expected[..., 0] < OUT_HW[1] - 0.5)
        inside &= (expected[..., 1] >= -0.5) & (expected[..., 1] < OUT_HW[0] - 0.5)
        for n in np.nonzero(sample["track_positive_mask"].numpy())[0]:
            j = np.argmin(np.linalg.norm(expected[0] - tracks[0, n], axis=-1))  # which fixture point it is
            np.testing.assert_allclose(tracks[:, n], expected[:, j], atol=1e-3)
            np.testing.assert_array_equal(vis[:, n], gt["visible"][:, j] & inside[:, j])
            assert vis[0, n]  # queries are visible in the first frame


def test_right_camera_is_the_stereo_partner(dr):
    root, info = dr
    left, right = _dataset(root), _dataset(root, camera="right", num_tracks=8)
    seq = SEQS[1]
    for i in range(6):
        E_l, E_r = left.load_frame(seq, i).extrinsics, right.load_frame(seq, i).extrinsics
        np.testing.assert_allclose(E_l[:, :3], E_r[:, :3], atol=1e-9)
        np.testing.assert_allclose(E_l[:, 3] - E_r[:, 3], [BASELINE, 0, 0], atol=1e-6)  # metres along +x
    assert right.load_tracks(seq, [0, 1]) is None
    sample = _sample(right, seq)
    assert "tracks" not in sample
    np.testing.assert_array_equal(sample["depths"].numpy(), info["sequences"][seq]["right"]["depth"])
    np.testing.assert_allclose(project(sample, info["sequences"][seq]["points"])[0, :, 0].mean(),
                               project(_sample(left, seq), info["sequences"][seq]["points"])[0, :, 0].mean(),
                               atol=20.0)  # same scene, a few pixels of disparity


def test_normalize_makes_the_first_camera_the_identity(dr):
    root, _ = dr
    sample = _dataset(root, normalize=True, num_frames=4)[0]
    np.testing.assert_allclose(sample["extrinsics"][0].numpy(), np.eye(3, 4), atol=1e-5)
    assert sample["depths"].max() < 10 and float(sample["scale"]) > 0


def test_dataset_pickles_for_workers(dr):
    root, _ = dr
    ds = _dataset(root, num_frames=3)
    clone = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(clone[1]["depths"], ds[1]["depths"])


def _annotations(root: Path) -> tuple[Path, list]:
    path = root / "train" / "frame_annotations_train.jgz"
    with gzip.open(path, "rt") as f:
        return path, json.load(f)


def _frame_file(root: Path, seq: str, folder: str, name: str) -> Path:
    return root / "train" / f"{seq}_source_left" / folder / name


def _missing_image(root: Path) -> str:
    _frame_file(root, SEQS[0], "images", f"{SEQS[0]}_source_left-0001.png").unlink()
    return "e0ff8f-3_obj_source_left-0001.png: missing"


def _truncated_depth(root: Path) -> str:
    truncate(_frame_file(root, SEQS[0], "depths", f"{SEQS[0]}_source_left_0002.geometric.png"))
    return "e0ff8f-3_obj_source_left_0002.geometric.png: unreadable"


def _depth_size(root: Path) -> str:
    path = _frame_file(root, SEQS[0], "depths", f"{SEQS[0]}_source_left_0003.geometric.png")
    write_float16_png(path, np.ones((28, 84)))
    return r"e0ff8f-3_obj_source_left_0003.geometric.png: depth is \(28, 84\) \(H, W\), expected \(56, 84\)"


def _nan_pose(root: Path) -> str:
    path, annotations = _annotations(root)
    entry = next(e for e in annotations if e["sequence_name"] == SEQS[0] and e["frame_number"] == 2)
    entry["viewpoint"]["R"][0][0] = float("nan")
    with gzip.open(path, "wt") as f:
        json.dump(annotations, f)
    return r"frame_annotations_train.jgz \(e0ff8f-3_obj, left, frame 2\): bad viewpoint: R: holds NaN"


def _truncated_tracks(root: Path) -> str:
    truncate(_frame_file(root, SEQS[0], "trajectories", "000002.pth"))
    return "000002.pth: unreadable trajectory file"


def _pickled_object(root: Path) -> str:
    torch.save({"traj_2d": argparse.Namespace(x=1)}, _frame_file(root, SEQS[0], "trajectories", "000001.pth"))
    return r"000001\.pth: refused to unpickle .*weights_only=True.*argparse\.Namespace"


FRAME_CORRUPTIONS = [_missing_image, _truncated_depth, _depth_size, _nan_pose]


@pytest.mark.parametrize("corrupt", [*FRAME_CORRUPTIONS, _truncated_tracks, _pickled_object])
def test_bad_files_raise_naming_the_file(small, corrupt):
    root, _ = small
    match = corrupt(root)
    ds = _dataset(root, num_frames=4, num_tracks=4)
    with pytest.raises(ClipFormatError, match=match):
        ds[0]
    if corrupt in FRAME_CORRUPTIONS:  # `validate()` reports it too (it reads frames, not tracks)
        problems = ds.validate()
        assert len(problems) == 1 and re.search(match, problems[0])


def test_bad_clip_is_skipped_logged_and_counted(small, caplog):
    root, _ = small
    truncate(_frame_file(root, SEQS[0], "depths", f"{SEQS[0]}_source_left_0001.geometric.png"))
    ds = _dataset(root, num_frames=4, skip_bad_clips=True)
    with caplog.at_level(logging.WARNING, logger="datamodules.sequence"):
        sample = ds[0]
    assert sample["seq_name"] == SEQS[1] and ds.bad_clips == 1
    assert "_0001.geometric.png" in caplog.text


def test_datamodule_serves_a_batch(dr):
    root, _ = dr
    dm = Page4DDataModule(dataset="dynamic_replica", root=str(root), num_frames=4, image_size=56, batch_size=2,
                          train={"num_tracks": 8})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (2, 4, 3, *OUT_HW) and batch["tracks"].shape == (2, 4, 8, 2)
    assert batch["dynamic_masks"].shape == (2, 4, *OUT_HW) and batch["abandon_pose"].tolist() == [False, False]
    np.testing.assert_allclose(batch["extrinsics"][:, 0].numpy(), np.broadcast_to(np.eye(3, 4), (2, 3, 4)), atol=1e-5)
