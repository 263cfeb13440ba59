"""Spring reader: a fixture in the real layout (2x HDF5 disparity, camera text tables, sky maps) read back."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import datamodules.spring  # noqa: F401  (registers "spring")
from datamodules import DATASETS
from datamodules.base import Page4DDataModule
from datamodules.io import ClipFormatError
from tests.data.spring.make_fixture import GROUND_Y, WALL_Z, write_fixture

# Output geometry of a 54x96 source at image_size=56 (source aspect kept): H = round(56*54/96/14)*14 = 28;
# resize by max(28/54, 56/96) -> 32x56 (ceil), centre crop rows 2..29. Per-axis scales 56/96 and 32/54.
SX, SY, X0, Y0, OUT_HW = 56 / 96, 32 / 54, 0, 2, (28, 56)


def expected_pixels(uv: np.ndarray) -> np.ndarray:
    """Native pixels (OpenCV centres) -> output pixels: u' = sx (u + 0.5) - 0.5 - x0, same for v."""
    return np.stack([SX * (uv[..., 0] + 0.5) - 0.5 - X0, SY * (uv[..., 1] + 0.5) - 0.5 - Y0], axis=-1)


@pytest.fixture(scope="module")
def spring(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("spring")
    return root, write_fixture(root)


@pytest.fixture()
def small(tmp_path) -> tuple[Path, dict]:
    """A fresh fixture to corrupt: 2 sequences of 4 frames."""
    return tmp_path, write_fixture(tmp_path, num_frames=4)


def _dataset(root: Path, **kwargs):
    kwargs = {"num_frames": 6, "image_size": 56, "normalize": False, **kwargs}
    return DATASETS["spring"](root, **kwargs)


def test_depth_is_metric_z_from_the_devkit_disparity(spring):
    root, info = spring
    ds = _dataset(root)
    assert ds.is_metric and not ds.sparse_depth and ds.sequences == {"0001": 6, "0002": 6}
    for seq, gt in info["sequences"].items():
        for i in range(6):
            frame = ds.load_frame(seq, i)
            assert frame.image.shape == (54, 96, 3) and frame.depth.dtype == np.float32
            # fx * 0.065 / disp of the [::2, ::2] samples, float32 disparity: ~1e-7 relative
            np.testing.assert_allclose(frame.depth, gt["depth"][i], rtol=1e-5, atol=0)
            assert (frame.depth[gt["sky"][i]] == 0).all() and (frame.depth[20:24, 60:64] == 0).all()
            assert 3.0 < np.median(frame.depth[frame.depth > 0]) < 12.0  # metres, not 2x-pixel units
            np.testing.assert_allclose(frame.intrinsics, gt["intrinsics"][i], atol=1e-12)
            np.testing.assert_allclose(frame.extrinsics, gt["extrinsics"][i], atol=1e-9)


def test_sky_map_masks_far_sky_disparity(spring):
    root, info = spring
    frame = _dataset(root, sky_mask=False).load_frame("0001", 0)
    sky = info["sequences"]["0001"]["sky"][0]
    assert sky.any() and (frame.depth[sky] > 1e4).all()  # the far dome's 1e-4 px disparity, unmasked


def test_cameras_project_landmarks_after_resize_and_crop(spring):
    root, info = spring
    ds = _dataset(root)
    for k, (seq, gt) in enumerate(info["sequences"].items()):
        sample = ds[k]
        assert sample["seq_name"] == seq and sample["ids"].tolist() == list(range(6))
        assert sample["images"].shape == (6, 3, *OUT_HW) and sample["depths"].shape == (6, *OUT_HW)
        E, K = sample["extrinsics"].double().numpy(), sample["intrinsics"].double().numpy()
        for i in range(6):
            cam = info["landmarks"] @ E[i, :, :3].T + E[i, :, 3]
            uv = cam[:, :2] / cam[:, 2:] @ K[i, :2, :2].T + K[i, :2, 2]
            np.testing.assert_allclose(uv, expected_pixels(gt["landmark_px"][i]), atol=1e-3)
            fx, fy, cx, cy = gt["intrinsics"][i][[0, 1, 0, 1], [0, 1, 2, 2]]
            want = [[fx * SX, 0, SX * (cx + 0.5) - 0.5 - X0], [0, fy * SY, SY * (cy + 0.5) - 0.5 - Y0], [0, 0, 1]]
            np.testing.assert_allclose(K[i], want, atol=1e-4)
        assert "dynamic_masks" not in sample and "tracks" not in sample


def test_resized_depth_and_world_points_lie_on_the_scene(spring):
    root, info = spring
    ds = _dataset(root)
    sample, gt = ds[0], info["sequences"]["0001"]
    depths, world, masks = sample["depths"].numpy(), sample["world_points"].double().numpy(), sample["point_masks"]
    assert torch.equal(masks, sample["depths"] > 0) and masks.float().mean() > 0.5
    for i in range(6):
        native = ds.load_frame("0001", i).depth
        assert np.isin(depths[i], native).all()  # nearest resampling: no value is interpolated
        p = world[i][masks[i].numpy()]
        centre, half = gt["boxes"][i]
        on_ground = np.abs(p[:, 1] - GROUND_Y)
        on_wall = np.abs(p[:, 2] - WALL_Z)
        in_box = np.clip(np.abs(p - centre) - half, 0, None).max(-1)
        # an output pixel centre is <= 0.71 source px from the pixel its depth came from: <= 9 m * 0.71 / 80 px
        assert np.minimum(np.minimum(on_ground, on_wall), in_box).max() < 0.12


def test_normalized_clip_starts_at_identity(spring):
    root, _ = spring
    sample = _dataset(root, normalize=True)[1]
    torch.testing.assert_close(sample["extrinsics"][0], torch.eye(3, 4), atol=1e-5, rtol=0)
    assert sample["extrinsics"][1:].sub(torch.eye(3, 4)).abs().amax() > 1e-2


def test_test_split_has_no_depth(small):
    root, _ = small
    (root / "train").rename(root / "test")
    for seq_dir in (root / "test").iterdir():
        shutil.rmtree(seq_dir / "disp1_left")
    sample = _dataset(root, split="test", num_frames=4)[0]
    assert not sample["point_masks"].any() and (sample["depths"] == 0).all()
    (root / "test").rename(root / "train")  # every other split needs its disparity
    with pytest.raises(ClipFormatError, match="disp1_left"):
        _dataset(root, num_frames=4)


def _unlink(path: Path) -> Path:
    path.unlink()
    return path


def _truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def _nan_pose(root: Path) -> Path:
    path = root / "train/0001/cam_data/extrinsics.txt"
    table = np.loadtxt(path)
    table[1, 3] = np.nan
    np.savetxt(path, table)
    return path


def _small_disparity(root: Path) -> Path:
    path = root / "train/0001/disp1_left/disp1_left_0002.dsp5"
    with h5py.File(path, "w") as f:
        f.create_dataset("disparity", data=np.ones((54, 96), np.float32))
    return path


def _wrong_key(root: Path) -> Path:
    path = root / "train/0001/disp1_left/disp1_left_0002.dsp5"
    with h5py.File(path, "w") as f:
        f.create_dataset("flow", data=np.ones((108, 192), np.float32))
    return path


def _short_intrinsics(root: Path) -> Path:
    path = root / "train/0001/cam_data/intrinsics.txt"
    np.savetxt(path, np.loadtxt(path)[:1])
    return path


CORRUPTIONS = {
    "missing image": lambda r: _unlink(r / "train/0001/frame_left/frame_left_0002.png"),
    "truncated png": lambda r: _truncated(r / "train/0001/frame_left/frame_left_0003.png"),
    "truncated hdf5": lambda r: _truncated(r / "train/0001/disp1_left/disp1_left_0002.dsp5"),
    "missing sky map": lambda r: _unlink(r / "train/0001/maps/skymap_left/skymap_left_0004.png"),
    "disparity of the wrong size": _small_disparity,
    "disparity key missing": _wrong_key,
    "NaN pose": _nan_pose,
    "too few intrinsics lines": _short_intrinsics,
}



@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_bad_files_raise_naming_the_file(small, kind):
    root, _ = small
    path = CORRUPTIONS[kind](root)
    ds = _dataset(root, num_frames=4)
    with pytest.raises(ClipFormatError) as err:
        ds[0]
    assert str(path) in str(err.value)
    assert any(str(path) in problem for problem in ds.validate())


def test_bad_clip_is_skipped_logged_and_counted(small, caplog):
    root, _ = small
    path = _truncated(root / "train/0001/disp1_left/disp1_left_0002.dsp5")
    ds = _dataset(root, num_frames=4, skip_bad_clips=True)
    with caplog.at_level(logging.WARNING, logger="datamodules.sequence"):
        sample = ds[0]
    assert sample["seq_name"] == "0002" and ds.bad_clips == 1
    assert str(path) in caplog.text


def test_wrong_root_names_the_expected_layout(tmp_path):
    with pytest.raises(ClipFormatError, match="frame_left_0001.png"):
        _dataset(tmp_path)


def test_one_batch_through_the_datamodule(spring):
    root, _ = spring
    dm = Page4DDataModule(dataset="spring", root=str(root), num_frames=3, image_size=56, normalize=True,
                          batch_size=2, train={"split": "train"})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (2, 3, 3, *OUT_HW) and batch["depths"].shape == (2, 3, *OUT_HW)
    assert batch["dataset"] == ["spring", "spring"] and batch["abandon_pose"].tolist() == [False, False]
    torch.testing.assert_close(batch["extrinsics"][:, 0], torch.eye(3, 4).expand(2, 3, 4), atol=1e-5, rtol=0)


# ------------------------------------------------------------------ both eyes (issue #17) and sky maps (issue #15)
@pytest.fixture(scope="module")
def stereo(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("spring_stereo")
    return root, write_fixture(root, num_sequences=1, num_frames=3, eyes=("left", "right"))


def _bilinear_2x(path: Path, uv: np.ndarray) -> np.ndarray:
    """Disparity of a .dsp5 file at image pixels uv (M, 2), interpolated on its 2x grid (sample (r, c) sits at
    image (c / 2, r / 2)). Exact for a plane, whose disparity is affine in the pixel coordinates."""
    with h5py.File(path, "r") as f:
        grid = f["disparity"][()].astype(np.float64)
    x, y = 2 * uv[:, 0], 2 * uv[:, 1]
    c0, r0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - c0, y - r0
    return ((1 - fy) * ((1 - fx) * grid[r0, c0] + fx * grid[r0, c0 + 1])
            + fy * ((1 - fx) * grid[r0 + 1, c0] + fx * grid[r0 + 1, c0 + 1]))


def test_right_eye_reprojects_a_point_to_the_left_pixel_minus_its_disparity(stereo):
    """Known answer from the files alone: a landmark seen at left pixel (u, v) with left disparity d (read from
    disp1_left) must appear at (u - d, v) in the right image (devkit: left-to-right disparity is -d). The reader's
    right-eye camera (extrinsics.txt shifted by the baseline) must project it there."""
    root, info = stereo
    ds = _dataset(root, num_frames=3, eyes=["left", "right"])
    assert ds.sequences == {"0001": 3, "0001/right": 3}
    seq_dir = root / "train" / "0001"
    wall = info["landmarks"][:3]  # on the back wall: a plane around each sample, so bilinear disparity is exact
    for i in range(3):
        left = ds.load_frame("0001", i)
        right = ds.load_frame("0001/right", i)
        uv_left = info["sequences"]["0001"]["landmark_px"][i][:3]
        d = _bilinear_2x(seq_dir / "disp1_left" / f"disp1_left_{i + 1:04d}.dsp5", uv_left)
        assert (d > 0.3).all()  # fx * 0.065 / 9 m ~ 0.58 px: far above the tolerance below
        want = uv_left - np.stack([d, np.zeros_like(d)], axis=-1)
        cam = wall @ right.extrinsics[:, :3].T + right.extrinsics[:, 3]
        got = cam[:, :2] / cam[:, 2:] @ right.intrinsics[:2, :2].T + right.intrinsics[:2, 2]
        np.testing.assert_allclose(got, want, atol=1e-3)  # float32 disparity; a wrong sign is off by 2 d
        # the right view's own disparity file agrees at that pixel, and its depth is read from it
        d_right = _bilinear_2x(seq_dir / "disp1_right" / f"disp1_right_{i + 1:04d}.dsp5", want)
        np.testing.assert_allclose(d_right, d, rtol=1e-4)
        np.testing.assert_allclose(right.depth, info["right"]["0001"]["depth"][i], rtol=1e-5, atol=0)
        assert not np.array_equal(right.image, left.image)
        np.testing.assert_allclose(right.intrinsics, left.intrinsics, atol=0)
        np.testing.assert_allclose(right.extrinsics[:, :3], left.extrinsics[:, :3], atol=0)


def test_both_eyes_double_the_clips_and_a_clip_keeps_one_eye(stereo):
    root, info = stereo
    left_only = _dataset(root, num_frames=3)
    ds = _dataset(root, num_frames=3, eyes=["left", "right"])
    assert len(ds) == 2 * len(left_only) and {seq for seq, _ in ds.clips} == {"0001", "0001/right"}
    for k in range(len(ds)):
        sample = ds[k]
        eye = "right" if sample["seq_name"].endswith("/right") else "left"
        gt = info[eye if eye == "right" else "sequences"]["0001"]
        E, K = sample["extrinsics"].double().numpy(), sample["intrinsics"].double().numpy()
        cam = info["landmarks"] @ E[:, :, :3].transpose(0, 2, 1) + E[:, None, :, 3]  # (S, M, 3)
        uv = cam[..., :2] / cam[..., 2:] * K[:, None, [0, 1], [0, 1]] + K[:, None, [0, 1], [2, 2]]
        np.testing.assert_allclose(uv, expected_pixels(gt["landmark_px"]), atol=1e-3)  # every frame: this eye
    assert _dataset(root, num_frames=3, eyes="right").sequences == {"0001/right": 3}
    for bad in (["centre"], [], ["left", "left"], None):
        with pytest.raises(ValueError, match="eyes"):
            _dataset(root, num_frames=3, eyes=bad)


def test_missing_right_eye_folder_names_it(small):
    root, _ = small
    with pytest.raises(ClipFormatError, match="frame_right"):
        _dataset(root, num_frames=4, eyes=["left", "right"])


def test_without_sky_maps_one_warning_and_zero_disparity_is_invalid(small, caplog):
    """Only the frame, disparity and camera archives downloaded: training still works, ONE warning per dataset
    names the missing folder, and disparity 0 (the real sky) stays depth 0."""
    root, info = small
    for seq in ("0001", "0002"):
        shutil.rmtree(root / "train" / seq / "maps")
    path = root / "train/0001/disp1_left/disp1_left_0001.dsp5"
    with h5py.File(path, "r") as f:
        disparity = f["disparity"][()]
    sky = info["sequences"]["0001"]["sky"][0]
    disparity[np.kron(sky, np.ones((2, 2), bool))] = 0.0  # the release stores sky as disparity 0
    with h5py.File(path, "w") as f:
        f.create_dataset("disparity", data=disparity)
    with caplog.at_level(logging.WARNING, logger="datamodules.spring"):
        ds = _dataset(root, num_frames=4)
        for k in (0, 1, 0, 1):
            ds[k]
    warnings = [r for r in caplog.records if r.name == "datamodules.spring" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(root / "train/0001/maps/skymap_left") in warnings[0].getMessage()
    depth = ds.load_frame("0001", 0).depth
    assert sky.any() and (depth[sky] == 0).all()
    np.testing.assert_allclose(depth[~sky], info["sequences"]["0001"]["depth"][0][~sky], rtol=1e-5, atol=0)
