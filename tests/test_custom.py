"""The `custom` format: an analytic fixture (tests/data/custom) read back through the registry, checked against
its known GT (metric depth from PNG and .npy, camera conventions by reprojection, resize/crop intrinsics,
masks, splits), and bad files named in the errors."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import datamodules.custom  # noqa: F401  (registers "custom")
from datamodules import DATASETS
from datamodules.base import Page4DDataModule
from datamodules.io import ClipFormatError
from tests.data.custom.make_fixture import HOLE, ROOM_HI, ROOM_LO, write_fixture


def _dataset(root: Path, **kwargs) -> torch.utils.data.Dataset:
    args = {"num_frames": 6, "image_size": 98, "normalize": False, **kwargs}
    return DATASETS["custom"](root, **args)


def _project(points: np.ndarray, E: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(P, 3) world, (S, 3, 4), (S, 3, 3) -> (S, P, 2) pixels."""
    cam = np.einsum("sij,pj->spi", E[:, :, :3], points) + E[:, None, :, 3]
    pix = np.einsum("sij,spj->spi", K, cam)
    return pix[..., :2] / pix[..., 2:]


@pytest.mark.parametrize("depth_format", ["png", "npy"])
def test_native_resolution_matches_the_analytic_scene(tmp_path: Path, depth_format: str) -> None:
    gt = write_fixture(tmp_path, depth_format=depth_format)
    ds = _dataset(tmp_path)
    assert len(ds) == 2 and ds.sequences == {"orbit": 7, "walk": 6}
    for index in range(len(ds)):
        sample = ds[index]
        seq, ids = sample["seq_name"], sample["ids"].numpy()
        ref = {k: v[ids] for k, v in gt["sequences"][seq].items() if k != "images"}
        E, K = sample["extrinsics"].double().numpy(), sample["intrinsics"].double().numpy()
        np.testing.assert_allclose(E, ref["extrinsics"], atol=1e-6)
        np.testing.assert_allclose(K, ref["intrinsics"], atol=1e-5)
        # the camera convention: known world points land where the fixture's camera put them
        assert np.abs(_project(gt["points"], E, K) - ref["uv"]).max() < 0.01
        tol = 0.5 / gt["depth_scale"] + 1e-6 if depth_format == "png" else 1e-5
        np.testing.assert_allclose(sample["depths"].numpy(), ref["depth"], atol=tol)
        assert not sample["point_masks"][:, HOLE[0], HOLE[1]].any() and sample["point_masks"].float().mean() > 0.99
        # depth units + cameras together: static points back-projected with the returned cameras lie on the room
        static = sample["point_masks"].numpy() & ~ref["dynamic"]
        X = sample["world_points"].double().numpy()[static]
        to_wall = np.minimum(np.abs(X - ROOM_LO), np.abs(X - ROOM_HI)).min(-1)
        assert to_wall.max() < 2e-3
        assert torch.equal(sample["dynamic_masks"], torch.from_numpy(ref["dynamic"]))
    walk = ds[1]
    assert walk["seq_name"] == "walk"
    pixels = np.stack([np.asarray(Image.open(p)) for p in gt["sequences"]["walk"]["images"]])
    np.testing.assert_array_equal((walk["images"].permute(0, 2, 3, 1).numpy() * 255).round(), pixels)


@pytest.mark.parametrize("convention, extrinsics_type", [("opengl", "w2c"), ("opencv", "c2w"), ("opengl", "c2w")])
def test_every_convention_gives_the_opencv_cameras(tmp_path: Path, convention: str, extrinsics_type: str) -> None:
    gt = write_fixture(tmp_path, convention=convention, extrinsics_type=extrinsics_type)
    ds = _dataset(tmp_path)
    for seq, count in ds.sequences.items():
        E = np.stack([ds.load_frame(seq, i).extrinsics for i in range(count)])
        np.testing.assert_allclose(E, gt["sequences"][seq]["extrinsics"], atol=1e-9)


def test_resize_and_crop_keep_the_projection(tmp_path: Path) -> None:
    gt = write_fixture(tmp_path, depth_format="npy")
    sample = _dataset(tmp_path, image_size=56, aspect_ratio=0.5, sequences=["walk"])[0]
    assert sample["images"].shape == (6, 3, 28, 56)
    # 98x70 -> scale max(28/70, 56/98): resized to 56x40, centre crop rows 6..33
    sx, sy, y0 = 56 / 98, 40 / 70, 6
    ref = gt["sequences"]["walk"]
    uv = ref["uv"].copy()
    uv[..., 0], uv[..., 1] = sx * (uv[..., 0] + 0.5) - 0.5, sy * (uv[..., 1] + 0.5) - 0.5 - y0
    E, K = sample["extrinsics"].double().numpy(), sample["intrinsics"].double().numpy()
    assert np.abs(_project(gt["points"], E, K) - uv).max() < 0.01
    np.testing.assert_allclose(K[:, 0, 0], 60 * sx, rtol=1e-6)
    np.testing.assert_allclose(K[:, 1, 1], 62 * sy, rtol=1e-6)
    rows = np.floor((np.arange(28) + y0 + 0.5) / sy).astype(int)  # exact nearest: source pixel under each centre
    cols = np.floor((np.arange(56) + 0.5) / sx).astype(int)
    np.testing.assert_allclose(sample["depths"].numpy(), ref["depth"][:, rows][:, :, cols], atol=1e-5)


def test_normalize_makes_the_first_camera_the_identity(tmp_path: Path) -> None:
    write_fixture(tmp_path)
    sample = _dataset(tmp_path, normalize=True, sequences=["orbit"])[0]
    torch.testing.assert_close(sample["extrinsics"][0], torch.eye(3, 4), atol=1e-5, rtol=0)


def test_images_and_cameras_only(tmp_path: Path) -> None:
    write_fixture(tmp_path, with_depth=False, with_masks=False)
    sample = _dataset(tmp_path)[0]
    assert (sample["depths"] == 0).all() and not sample["point_masks"].any()
    assert "dynamic_masks" not in sample


def test_splits(tmp_path: Path) -> None:
    write_fixture(tmp_path, with_splits=True)
    assert list(_dataset(tmp_path, split="train").sequences) == ["walk"]
    assert list(_dataset(tmp_path, split="val").sequences) == ["orbit"]
    assert list(_dataset(tmp_path, split="test").sequences) == ["orbit", "walk"]
    (tmp_path / "splits" / "val.txt").write_text("orbit\nnope\n")
    with pytest.raises(ClipFormatError, match="nope: sequence listed in splits/val.txt"):
        _dataset(tmp_path, split="val")
    (tmp_path / "splits" / "test.txt").unlink()
    with pytest.raises(ClipFormatError, match="test.txt: missing split list"):
        _dataset(tmp_path, split="test")


def test_layout_errors_at_construction(tmp_path: Path) -> None:
    write_fixture(tmp_path)
    with pytest.raises(ClipFormatError, match="set root to the folder ABOVE"):
        _dataset(tmp_path / "walk")
    (tmp_path / "orbit" / "cameras.json").unlink()
    with pytest.raises(ClipFormatError, match=r"orbit/cameras.json: missing camera file"):
        _dataset(tmp_path)


def _edit_cameras(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


def _transpose(data: dict) -> None:
    data["frames"][2]["extrinsics"] = np.array(data["frames"][2]["extrinsics"]).T.tolist()


BREAKERS = {
    "missing depth": ("walk", lambda r: (r / "walk/depth/000002.png").unlink(), "walk/depth/000002.png: missing"),
    "truncated image": ("walk", lambda r: _truncate(r / "walk/images/000003.png"), "walk/images/000003.png"),
    "truncated jpeg": ("orbit", lambda r: _truncate(r / "orbit/images/f10.jpg"), "orbit/images/f10.jpg"),
    "truncated depth": ("walk", lambda r: _truncate(r / "walk/depth/000001.png"), "walk/depth/000001.png"),
    "depth size": ("walk", lambda r: Image.new("I;16", (10, 10)).save(r / "walk/depth/000004.png"),
                   "walk/depth/000004.png: depth has size (10, 10)"),
    "image size": ("walk", lambda r: Image.new("RGB", (50, 40)).save(r / "walk/images/000003.png"),
                   "walk/images/000003.png: image is 50x40, but 000000.png is 98x70"),
    "mask size": ("walk", lambda r: Image.new("L", (10, 10)).save(r / "walk/masks/000000.png"),
                  "walk/masks/000000.png: mask has size"),
    "nan pose": ("walk", lambda r: _edit_cameras(r / "walk/cameras.json", lambda d: d["frames"][1]["extrinsics"][0]
                 .__setitem__(3, float("nan"))), "walk/cameras.json: frame '000001.png': extrinsics holds NaN"),
    "transposed pose": ("walk", lambda r: _edit_cameras(r / "walk/cameras.json", _transpose), "transposed?"),
    "no camera": ("walk", lambda r: _edit_cameras(r / "walk/cameras.json", lambda d: d["frames"].pop(5)),
                  "walk/cameras.json: no camera for image 000005.png"),
    "camera count": ("orbit", lambda r: _edit_cameras(r / "orbit/cameras.json", lambda d: d["frames"].pop()),
                     "orbit/cameras.json: 6 frames for 7 images"),
    "bad convention": ("orbit", lambda r: _edit_cameras(r / "orbit/cameras.json", lambda d: d.update(convention="gl")),
                       "orbit/cameras.json: 'convention' must be one of"),
    # a typo must not silently change the data: depth_scle: 5000 would give depths 5x wrong
    "top-level key typo": ("walk", lambda r: _edit_cameras(r / "walk/cameras.json",
                                                           lambda d: d.update(depth_scle=5000)),
                           "walk/cameras.json: unknown key(s) ['depth_scle']; expected only"),
    "frame key typo": ("walk", lambda r: _edit_cameras(r / "walk/cameras.json",
                                                       lambda d: d["frames"][0].update(intrinsic=[[1.0]])),
                       "walk/cameras.json: frame '000000.png': unknown key(s) ['intrinsic']"),
    "intrinsics key typo": ("walk", lambda r: _edit_cameras(r / "walk/cameras.json", lambda d: d["frames"][0].update(
                            intrinsics={"fx": 90.0, "fy": 90.0, "cx": 48.5, "cy": 34.5, "skew": 0.0})),
                            "walk/cameras.json: frame '000000.png': intrinsics: unknown key(s) ['skew']"),
}


@pytest.mark.parametrize("name", list(BREAKERS))
def test_bad_input_names_the_file(tmp_path: Path, name: str) -> None:
    write_fixture(tmp_path)
    seq, breaker, message = BREAKERS[name]
    breaker(tmp_path)
    ds = _dataset(tmp_path, sequences=[seq])
    with pytest.raises(ClipFormatError, match=re.escape(message)):
        ds[0]


def test_npy_depth_must_be_float(tmp_path: Path) -> None:
    write_fixture(tmp_path, depth_format="npy")
    np.save(tmp_path / "walk/depth/000000.npy", np.ones((70, 98), np.uint16))
    with pytest.raises(ClipFormatError, match="walk/depth/000000.npy: depth .npy must be float"):
        _dataset(tmp_path, sequences=["walk"])[0]


def test_skip_bad_clips_logs_and_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_fixture(tmp_path)
    (tmp_path / "orbit" / "depth" / "f4.png").unlink()
    ds = _dataset(tmp_path, skip_bad_clips=True)
    with caplog.at_level(logging.WARNING):
        sample = ds[0]  # clip 0 is "orbit": skipped, the next clip ("walk") is returned
    assert sample["seq_name"] == "walk" and ds.bad_clips == 1
    assert "skipping clip 0 of sequence orbit" in caplog.text and "f4.png" in caplog.text


def test_one_batch_through_the_datamodule(tmp_path: Path) -> None:
    write_fixture(tmp_path)
    dm = Page4DDataModule(dataset="custom", root=str(tmp_path), num_frames=3, image_size=56, batch_size=2, train={})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (2, 3, 3, 42, 56) and batch["dynamic_masks"].shape == (2, 3, 42, 56)
    assert batch["point_masks"].any() and set(batch["dataset"]) == {"custom"}
    torch.testing.assert_close(batch["extrinsics"][:, 0], torch.eye(3, 4).expand(2, 3, 4), atol=1e-5, rtol=0)
