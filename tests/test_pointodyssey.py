"""PointOdysseyDataset against a fixture written in PointOdyssey's real layout from an analytic scene.

Independent references: the fixture's exact GT (float64 OpenCV cameras, ray-cast z-depth, world points, labels,
3D tracks) and hand-computed resize/crop numbers; the reader only ever sees the native encodings (uint16 depth
with the 65535 sky sentinel, float16 Blender-convention cameras and tracks, palette masks).
"""

from __future__ import annotations

import logging
import pickle
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import datamodules.pointodyssey  # noqa: F401  (registers "pointodyssey")
from datamodules import DATASETS
from datamodules.base import Page4DDataModule
from datamodules.io import ClipFormatError
from tests.data.pointodyssey import scene as sc
from tests.data.pointodyssey.make_fixture import NAN_TRACK, write_fixture

STEP = 1000.0 / 65535.0  # metres per depth PNG unit
CORNERS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]) * sc.STATIC_HALF + sc.STATIC_CENTER
# 54x96 source -> 56x42 output (aspect 0.75): scale max(42/54, 56/96) = 7/9 -> resized 75x42 (ceil 74.67), crop x0 = 9
SX, SY, X0, Y0 = 75 / 96, 42 / 54, 9, 0


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_fixture(tmp_path_factory.mktemp("pointodyssey"))


def make(root, **kwargs):
    return DATASETS["pointodyssey"](root, **{"num_frames": 8, "image_size": 56, "normalize": False, **kwargs})


def to_output(uv: np.ndarray) -> np.ndarray:
    """Native OpenCV pixels -> pixels of the 56x42 output (resize 75x42, crop at x0 = 9)."""
    return np.stack([SX * (uv[..., 0] + 0.5) - 0.5 - X0, SY * (uv[..., 1] + 0.5) - 0.5 - Y0], axis=-1)


def nearest_source(size: int, offset: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Source index of each output row/column under nearest-neighbour resize + crop, and where it is not a tie
    (output centre exactly between two source pixels: the resampler may break those either way)."""
    centre = (np.arange(size) + offset + 0.5) / scale
    lo, hi = np.floor(centre - 1e-9).astype(int), np.floor(centre + 1e-9).astype(int)
    return lo, lo == hi


def project(points: np.ndarray, K, E) -> np.ndarray:
    K, E = np.asarray(K, np.float64), np.asarray(E, np.float64)
    return sc.project(points, K, E)[0]


def test_depth_is_metric_z_and_sky_is_invalid(fixture):
    ds = make(fixture["root"])
    for seq, gt in fixture["sequences"].items():
        for i in (0, 5):
            frame = ds.load_frame(seq, i)
            z = gt["depth"][i]
            sky = ~np.isfinite(z)
            assert frame.depth.dtype == np.float32 and sky.any()
            assert (frame.depth[sky] == 0).all()  # 65535 sentinel, not 1000 m
            diff = z[~sky] - frame.depth[~sky]  # the generator truncates: reads back at most one step low
            assert diff.min() > -1e-4 and diff.max() < STEP + 1e-4


def test_cameras_project_known_points_onto_their_pixels(fixture):
    ds = make(fixture["root"])
    for seq, gt in fixture["sequences"].items():
        for i in range(8):
            frame = ds.load_frame(seq, i)
            assert frame.extrinsics.shape == (3, 4) and frame.extrinsics.dtype == np.float64
            R = frame.extrinsics[:, :3]
            np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)  # float16 R re-orthonormalised
            expected = project(CORNERS, gt["K"], gt["E"][i])
            # float16 cameras: < 0.05 px here; a missing Blender -> OpenCV half-pixel shift would give 0.5 px
            np.testing.assert_allclose(project(CORNERS, frame.intrinsics, frame.extrinsics), expected, atol=0.1)


def test_depth_and_cameras_unproject_onto_the_scene(fixture):
    ds = make(fixture["root"])
    gt = fixture["sequences"]["ani_walk"]
    frame = ds.load_frame("ani_walk", 6)
    v, u = np.nonzero(frame.depth > 0)
    z = frame.depth[v, u].astype(np.float64)
    K, E = frame.intrinsics, frame.extrinsics
    cam = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], axis=-1)
    world = (cam - E[:, 3]) @ E[:, :3]  # R^T (X_cam - t)
    # depth quantisation 1.5 cm along the ray plus float16 cameras
    assert np.abs(world - gt["world"][6][v, u]).max() < 0.03


def test_resize_crop_intrinsics_and_projection(fixture):
    ds = make(fixture["root"], num_frames=4, aspect_ratio=0.75)
    sample = ds[0]
    assert sample["images"].shape == (4, 3, 42, 56) and sample["depths"].shape == (4, 42, 56)
    gt = fixture["sequences"][sample["seq_name"]]
    expected_K = np.array([[80 * SX, 0, SX * 48 - 0.5 - X0], [0, 80 * SY, SY * 27 - 0.5 - Y0], [0, 0, 1]])
    for s, i in enumerate(sample["ids"].tolist()):
        np.testing.assert_allclose(sample["intrinsics"][s].numpy(), expected_K, atol=1e-4)
        uv = project(CORNERS, sample["intrinsics"][s], sample["extrinsics"][s])
        np.testing.assert_allclose(uv, to_output(project(CORNERS, gt["K"], gt["E"][i])), atol=0.1)


def test_dynamic_masks_follow_the_moving_instance(fixture):
    ds = make(fixture["root"])
    for seq, gt in fixture["sequences"].items():
        for i in range(8):
            mask = ds.load_frame(seq, i).dynamic_mask
            assert mask.any() and np.array_equal(mask, gt["dynamic"][i])
    still = make(fixture["root"], motion_threshold=100.0)  # nothing moves 100 m: no dynamic pixel
    assert not still.load_frame("ani_walk", 3).dynamic_mask.any()

    sample = make(fixture["root"], num_frames=4, aspect_ratio=0.75)[0]
    rows, row_ok = nearest_source(42, Y0, SY)
    cols, col_ok = nearest_source(56, X0, SX)
    gt = fixture["sequences"][sample["seq_name"]]
    for s, i in enumerate(sample["ids"].tolist()):
        got = sample["dynamic_masks"][s].numpy()[row_ok][:, col_ok]
        assert got.any() and np.array_equal(got, gt["dynamic"][i][rows[row_ok]][:, cols[col_ok]])


def test_native_tracks_match_the_projected_3d_points(fixture):
    ds = make(fixture["root"])
    for seq, gt in fixture["sequences"].items():
        tracks = ds.load_tracks(seq, list(range(8)))
        assert np.array_equal(tracks.visible, gt["visible"]) and np.array_equal(tracks.valid, gt["valid"])
        assert not tracks.valid[NAN_TRACK] and not tracks.visible[NAN_TRACK]  # NaN position -> invalid
        vis = gt["visible"]
        assert vis.sum() > 1000
        np.testing.assert_allclose(tracks.points[vis], gt["uv"][vis], atol=0.05)  # float16 of ~100 px: 0.03


def test_sampled_tracks_land_where_their_3d_points_project(fixture):
    sample = make(fixture["root"], num_frames=4, aspect_ratio=0.75, num_tracks=16)[0]
    tracks, vis = sample["tracks"].numpy(), sample["track_vis_mask"].numpy()
    assert tracks.shape == (4, 16, 2) and sample["track_positive_mask"].all() and vis[0].all()
    gt = fixture["sequences"][sample["seq_name"]]
    ids = sample["ids"].tolist()
    # every GT 3D trajectory, projected with the returned cameras: (S, N_all, 2)
    proj = np.stack(
        [project(gt["trajs_3d"][i], sample["intrinsics"][s], sample["extrinsics"][s]) for s, i in enumerate(ids)]
    )
    for n in range(16):
        err = np.abs(proj - tracks[:, n : n + 1]).max(-1)  # (S, N_all)
        err = np.where(vis[:, n : n + 1], err, 0.0).max(0)  # worst visible frame, per candidate GT track
        assert err.min() < 0.1  # some GT 3D point explains this track in every visible frame


def test_normalize_makes_the_first_camera_identity(fixture):
    sample = make(fixture["root"], num_frames=4, normalize=True)[1]
    np.testing.assert_allclose(sample["extrinsics"][0].numpy(), np.eye(3, 4), atol=1e-5)


def test_old_annotations_format_and_pickling(fixture):
    ds = make(fixture["root"])
    assert ds.annotations("cnb_old")["path"].name == "annotations.npz"
    assert ds.annotations("ani_walk")["path"].name == "anno.npz"
    copy = pickle.loads(pickle.dumps(ds))
    assert not copy._anno and copy.load_frame("cnb_old", 2).dynamic_mask.any()


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _nan_pose(path):
    arrays = dict(np.load(path))
    arrays["extrinsics"][2, 0, 3] = np.nan
    np.savez(path, **arrays)


SCENE = "train/ani_walk"
BREAKS = {
    "missing rgb": ("rgbs/rgb_00002.jpg", lambda p: p.unlink()),
    "truncated depth": ("depths/depth_00001.png", _truncate),
    "truncated mask": ("masks/mask_00004.png", _truncate),
    "truncated anno": ("anno.npz", _truncate),
    "depth of the wrong size": (
        "depths/depth_00003.png",
        lambda p: Image.fromarray(np.zeros((27, 48), np.uint16)).save(p),
    ),
    "NaN pose": ("anno.npz", _nan_pose),
}


@pytest.fixture
def broken_root(fixture, tmp_path):
    root = tmp_path / "po"
    shutil.copytree(fixture["root"], root)
    return root


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_bad_files_raise_naming_the_file(broken_root, case):
    name, breaker = BREAKS[case]
    breaker(broken_root / SCENE / name)
    ds = make(broken_root)
    with pytest.raises(ClipFormatError, match=re.escape(name.split("/")[-1])):
        ds[0]  # clip 0 = all 8 frames of ani_walk


def test_bad_clips_are_skipped_logged_and_counted(broken_root, caplog):
    _truncate(broken_root / SCENE / "depths" / "depth_00001.png")
    ds = make(broken_root, skip_bad_clips=True)
    with caplog.at_level(logging.WARNING):
        sample = ds[0]
    assert sample["seq_name"] == "cnb_old" and ds.bad_clips == 1
    assert "skipping" in caplog.text and "depth_00001.png" in caplog.text


def test_missing_split_folder_names_it(fixture):
    with pytest.raises(ClipFormatError, match="val"):
        make(fixture["root"], split="val")


def test_one_batch_through_the_datamodule(fixture):
    dm = Page4DDataModule(
        dataset="pointodyssey",
        root=str(fixture["root"]),
        num_frames=4,
        image_size=56,
        batch_size=2,
        train={"aspect_ratio": 0.75, "num_tracks": 8},
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (2, 4, 3, 42, 56) and batch["dynamic_masks"].shape == (2, 4, 42, 56)
    assert batch["tracks"].shape == (2, 4, 8, 2) and batch["dataset"] == ["pointodyssey"] * 2
    np.testing.assert_allclose(batch["extrinsics"][:, 0].numpy(), np.broadcast_to(np.eye(3, 4), (2, 3, 4)), atol=1e-5)
