"""KubricDataset against a fixture written in Kubric's raw worker layout from an analytic scene.

Independent references: the fixture's exact GT (float64 OpenCV cameras, ray-cast z-depth, world points, moving
instance pixels) and hand-computed resize/crop numbers; the reader only sees the native encodings (WXYZ
camera-to-world quaternions in Blender axes, 35 mm / 32 mm camera, float32 ray-distance TIFFs, palette
segmentations indexing `metadata["instances"]`).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import datamodules.kubric  # noqa: F401  (registers "kubric")
from datamodules import DATASETS
from datamodules.base import Page4DDataModule
from datamodules.io import ClipFormatError
from datamodules.kubric import moving_frames
from tests.data.kubric.make_fixture import write_fixture
from tests.data.pointodyssey import scene as sc

CORNERS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]) * sc.STATIC_HALF + sc.STATIC_CENTER
# 64x64 source -> 56x42 output (aspect 0.75): scale max(42/64, 56/64) = 0.875 -> resized 56x56, crop y0 = 7
S, X0, Y0 = 0.875, 0, 7


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_fixture(tmp_path_factory.mktemp("kubric"))


def make(root, **kwargs):
    return DATASETS["kubric"](root, **{"num_frames": 8, "image_size": 56, "normalize": False, **kwargs})


def nearest_source(size: int, offset: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Source index of each output row/column under nearest-neighbour resize + crop, and where it is not a tie
    (output centre exactly between two source pixels: the resampler may break those either way)."""
    centre = (np.arange(size) + offset + 0.5) / scale
    lo, hi = np.floor(centre - 1e-9).astype(int), np.floor(centre + 1e-9).astype(int)
    return lo, lo == hi


def project(points: np.ndarray, K, E) -> np.ndarray:
    return sc.project(points, np.asarray(K, np.float64), np.asarray(E, np.float64))[0]


def test_depth_is_z_not_ray_distance(fixture):
    ds = make(fixture["root"])
    for seq, gt in fixture["sequences"].items():
        for i in (0, 7):
            frame = ds.load_frame(seq, i)
            assert frame.depth.dtype == np.float32
            np.testing.assert_allclose(frame.depth, gt["depth"][i], rtol=1e-5)
    raw = np.asarray(Image.open(fixture["root"] / "train/scene_00000/depth_00000.tiff"))
    assert raw[0, 0] > 1.05 * gt["depth"][0][0, 0]  # the file holds ray distance: the conversion matters


def test_cameras_project_known_points_onto_their_pixels(fixture):
    ds = make(fixture["root"])
    for seq, gt in fixture["sequences"].items():
        for i in range(8):  # odd frames store the negated quaternion
            frame = ds.load_frame(seq, i)
            np.testing.assert_allclose(frame.intrinsics, gt["K"], atol=1e-9)  # 35/32 W, centre W/2 - 0.5
            expected = project(CORNERS, gt["K"], gt["E"][i])
            np.testing.assert_allclose(project(CORNERS, frame.intrinsics, frame.extrinsics), expected, atol=1e-3)


def test_depth_and_cameras_unproject_onto_the_scene(fixture):
    ds = make(fixture["root"])
    frame = ds.load_frame("scene_00001", 4)
    v, u = np.nonzero(frame.depth > 0)
    z = frame.depth[v, u].astype(np.float64)
    K, E = frame.intrinsics, frame.extrinsics
    cam = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], axis=-1)
    world = (cam - E[:, 3]) @ E[:, :3]  # R^T (X_cam - t)
    assert v.size == 64 * 64  # the dome: no invalid pixel
    assert np.abs(world - fixture["sequences"]["scene_00001"]["world"][4][v, u]).max() < 1e-3


def test_resize_crop_intrinsics_and_projection(fixture):
    sample = make(fixture["root"], num_frames=4, aspect_ratio=0.75)[3]
    assert sample["images"].shape == (4, 3, 42, 56) and sample["seq_name"] == "scene_00001"
    gt = fixture["sequences"]["scene_00001"]
    fx = 35 / 32 * 64
    expected_K = np.array([[fx * S, 0, S * 32 - 0.5 - X0], [0, fx * S, S * 32 - 0.5 - Y0], [0, 0, 1]])
    for s, i in enumerate(sample["ids"].tolist()):
        np.testing.assert_allclose(sample["intrinsics"][s].numpy(), expected_K, atol=1e-4)
        uv = project(CORNERS, sample["intrinsics"][s], sample["extrinsics"][s])
        native = project(CORNERS, gt["K"], gt["E"][i])
        np.testing.assert_allclose(uv, S * (native + 0.5) - 0.5 - [X0, Y0], atol=1e-3)


def test_dynamic_masks_are_the_moving_instance(fixture):
    ds = make(fixture["root"])
    for seq, gt in fixture["sequences"].items():
        for i in range(8):
            mask = ds.load_frame(seq, i).dynamic_mask
            assert mask.any() and np.array_equal(mask, gt["dynamic"][i])  # static box and background: static
    assert not make(fixture["root"], motion_threshold=100.0).load_frame("scene_00000", 2).dynamic_mask.any()
    sample = make(fixture["root"], num_frames=4, aspect_ratio=0.75)[0]
    rows, row_ok = nearest_source(42, Y0, S)
    cols, col_ok = nearest_source(56, X0, S)
    gt = fixture["sequences"][sample["seq_name"]]
    for s, i in enumerate(sample["ids"].tolist()):
        got = sample["dynamic_masks"][s].numpy()[row_ok][:, col_ok]
        assert got.any() and np.array_equal(got, gt["dynamic"][i][rows[row_ok]][:, cols[col_ok]])


def test_motion_flags_see_rotation_and_the_window():
    T = 10
    positions = np.zeros((2, T, 3))
    positions[1, 6:, 0] = 0.5  # instance 1 jumps at frame 6
    angles = np.radians(np.arange(T) * 5.0)  # instance 0 spins 5 degrees per frame about z
    quats = np.zeros((2, T, 4))
    quats[0] = np.stack([np.cos(angles / 2), 0 * angles, 0 * angles, np.sin(angles / 2)], -1)
    quats[1, :, 0] = 1.0
    flags = moving_frames(positions, quats, window=2, threshold=0.01, rotation_deg=1.0)
    assert flags[0].all()
    assert flags[1].tolist() == [False] * 4 + [True] * 4 + [False] * 2  # moves within 2 frames of 4..7


def test_flat_root_serves_every_split(tmp_path, caplog):
    write_fixture(tmp_path, num_frames=4, split=None)
    with caplog.at_level(logging.WARNING):
        ds = make(tmp_path, num_frames=4, split="val")
    assert sorted(ds.sequences) == ["scene_00000", "scene_00001"] and "flat root" in caplog.text
    assert ds[0]["images"].shape == (4, 3, 56, 56)


def test_normalize_makes_the_first_camera_identity_and_pickles(fixture):
    ds = make(fixture["root"], num_frames=4, normalize=True)
    sample = ds[1]
    np.testing.assert_allclose(sample["extrinsics"][0].numpy(), np.eye(3, 4), atol=1e-5)
    assert ds._meta and not pickle.loads(pickle.dumps(ds))._meta


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _nan_camera(path):
    meta = json.loads(path.read_text())
    meta["camera"]["positions"][3][1] = float("nan")  # json writes NaN, as Python's json does
    path.write_text(json.dumps(meta))


def _extra_segment(path):
    seg = Image.open(path)
    labels = np.asarray(seg).copy()
    labels[:4, :4] = 7  # only 2 instances in metadata.json
    out = Image.fromarray(labels)
    out.putpalette(seg.getpalette())
    out.save(path)


BREAKS = {
    "missing rgba": ("rgba_00002.png", lambda p: p.unlink()),
    "truncated depth": ("depth_00001.tiff", _truncate),
    "truncated segmentation": ("segmentation_00005.png", _truncate),
    "truncated metadata": ("metadata.json", _truncate),
    "depth of the wrong size": ("depth_00003.tiff", lambda p: Image.fromarray(np.ones((32, 32), np.float32)).save(p)),
    "NaN camera": ("metadata.json", _nan_camera),
    "unknown segment id": ("segmentation_00002.png", _extra_segment),
}


@pytest.fixture
def broken_root(fixture, tmp_path):
    root = tmp_path / "kubric"
    shutil.copytree(fixture["root"], root)
    return root


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_bad_files_raise_naming_the_file(broken_root, case):
    name, breaker = BREAKS[case]
    breaker(broken_root / "train/scene_00000" / name)
    ds = make(broken_root)
    with pytest.raises(ClipFormatError, match=re.escape(name)):
        ds[0]  # clip 0 = all 8 frames of scene_00000


def test_bad_clips_are_skipped_logged_and_counted(broken_root, caplog):
    _truncate(broken_root / "train/scene_00000/depth_00001.tiff")
    ds = make(broken_root, skip_bad_clips=True)
    with caplog.at_level(logging.WARNING):
        sample = ds[0]
    assert sample["seq_name"] == "scene_00001" and ds.bad_clips == 1
    assert "skipping" in caplog.text and "depth_00001.tiff" in caplog.text


def test_one_batch_through_the_datamodule(fixture):
    dm = Page4DDataModule(
        dataset="kubric",
        root=str(fixture["root"]),
        num_frames=4,
        image_size=56,
        batch_size=2,
        train={"aspect_ratio": 0.75, "split": "train"},
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (2, 4, 3, 42, 56) and batch["dynamic_masks"].shape == (2, 4, 42, 56)
    assert batch["dataset"] == ["kubric"] * 2 and "tracks" not in batch
    np.testing.assert_allclose(batch["extrinsics"][:, 0].numpy(), np.broadcast_to(np.eye(3, 4), (2, 3, 4)), atol=1e-5)
