"""The shared reader pipeline: resize/crop with intrinsics, sparse depth, frame sampling, bad clips."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from datamodules.io import ClipFormatError
from datamodules.sequence import Frame, SequenceDataset, Tracks, check_frame
from datamodules.transforms import ResizeCrop, output_size
from page4d_lightning.geometry import project_points

H0, W0 = 72, 96
K0 = np.array([[80.0, 0.0, 47.5], [0.0, 78.0, 35.5], [0.0, 0.0, 1.0]])
POINTS = np.array([[0.3, 0.2, 2.5], [-0.5, 0.1, 3.0], [0.0, -0.3, 2.0]])


def _extrinsics(i: int) -> np.ndarray:
    angle = 0.05 * i
    c, s = np.cos(angle), np.sin(angle)
    R = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return np.concatenate([R, np.array([[0.1 * i], [0.02 * i], [0.0]])], axis=1)


def _project(E: np.ndarray, K: np.ndarray, X: np.ndarray) -> np.ndarray:
    cam = X @ E[:, :3].T + E[:, 3]
    return (cam[:, :2] / cam[:, 2:]) * K[[0, 1], [0, 1]] + K[[0, 1], [2, 2]]


class ToyDataset(SequenceDataset):
    """Two sequences of a fronto-parallel wall at z = 2.5 m; frame 3 of "broken" has a NaN camera."""

    name = "toy"

    def find_sequences(self) -> dict[str, int]:
        return {"a": 12, "broken": 6}

    def load_frame(self, seq: str, index: int) -> Frame:
        E = _extrinsics(index)
        if seq == "broken" and index == 3:
            E = E.copy()
            E[0, 3] = np.nan
        image = np.random.default_rng(index).integers(0, 255, (H0, W0, 3), dtype=np.uint8)
        depth = np.full((H0, W0), 2.5, np.float32)
        depth[:4] = 0.0  # an invalid band
        return Frame(image, K0.copy(), E, depth, np.zeros((H0, W0), bool), source=f"{seq}/{index:04d}.png")

    def load_tracks(self, seq: str, ids: list[int]) -> Tracks:
        uv = np.stack([_project(_extrinsics(i), K0, POINTS) for i in ids])
        return Tracks(uv, np.ones(uv.shape[:2], bool))


def test_output_size_follows_official_rules() -> None:
    assert output_size((540, 960), 518, None) == (294, 518)  # round(518 * 540 / 960 / 14) * 14
    assert output_size((960, 540), 518, None) == (518, 518)  # portrait: centre crop to square
    assert output_size((540, 960), 518, 0.33) == (168, 518)  # floor(518 * 0.33 / 14) * 14
    with pytest.raises(ValueError, match="image_size"):
        output_size((10, 10), 500, None)


@pytest.mark.parametrize("out_hw,zoom", [((42, 56), 1.0), ((56, 56), 1.0), ((28, 56), 1.3), ((98, 126), 1.0)])
def test_resize_crop_keeps_pixel_centre_convention(out_hw: tuple[int, int], zoom: float) -> None:
    """A linear ramp image I(u, v) = (u, v): after resize + crop, each output pixel shows the source coordinate
    that `points` maps onto it, and the intrinsics move projections the same way."""
    geometry = ResizeCrop.plan((H0, W0), out_hw, zoom, np.random.default_rng(0))
    v, u = np.meshgrid(np.arange(H0, dtype=np.float32), np.arange(W0, dtype=np.float32), indexing="ij")
    ramp = np.stack([u, v, np.zeros_like(u)], axis=-1)
    out = cv2_float_resize(geometry, ramp)
    oh, ow = out_hw
    ov, ou = np.meshgrid(np.arange(oh), np.arange(ow), indexing="ij")
    src = np.stack([ou, ov], -1).astype(np.float64)
    sx, sy = geometry.scale_xy
    x0, y0 = geometry.offset_xy
    expected_u = (src[..., 0] + x0 + 0.5) / sx - 0.5
    expected_v = (src[..., 1] + y0 + 0.5) / sy - 0.5
    inner = (slice(2, -2), slice(2, -2))  # away from the border clamp of the filters
    # OpenCV's area weights are approximate at non-integer ratios (<= 0.06 px here); a half-pixel convention
    # error would show as (1 / s - 1) / 2 >= 0.2 px
    assert np.abs(out[..., 0] - expected_u)[inner].max() < 0.1
    assert np.abs(out[..., 1] - expected_v)[inner].max() < 0.1
    K = geometry.intrinsics(K0)
    E = _extrinsics(2)
    assert np.allclose(_project(E, K, POINTS), geometry.points(_project(E, K0, POINTS)), atol=1e-9)


def cv2_float_resize(geometry: ResizeCrop, image: np.ndarray) -> np.ndarray:
    """`ResizeCrop.image` on a float image (the interpolation it uses for uint8)."""
    import cv2

    new_h, new_w = geometry.resized_hw
    shrink = new_w < geometry.source_hw[1]
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return geometry._crop(resized)


def test_nearest_and_sparse_depth() -> None:
    # a 1/3 resize: output pixel j samples the source pixel whose centre is at (j + 0.5) * 3 - 0.5 = 3 j + 1,
    # with no tie between two source pixels (a 1/2 resize would land halfway between two of them)
    thirds = ResizeCrop.plan((6, 9), (2, 3))
    assert thirds.resized_hw == (2, 3) and thirds.offset_xy == (0, 0)
    depth = np.arange(54, dtype=np.float32).reshape(6, 9)
    assert np.array_equal(thirds.nearest(depth), depth[1::3, 1::3])  # exact nearest: source pixel centres
    mask = np.zeros((6, 9), bool)
    mask[1::3, 1::3] = True
    nearest_mask = thirds.nearest(mask)
    assert nearest_mask.dtype == bool and nearest_mask.all()  # bool kept bool
    assert not thirds.nearest(~mask).any()
    geometry = ResizeCrop.plan((4, 4), (2, 2))
    sparse = np.zeros((4, 4), np.float32)
    sparse[0, 0], sparse[1, 1], sparse[3, 3] = 5.0, 2.0, 7.0  # (0,0) and (1,1) land on output (0,0)
    out = geometry.sparse_depth(sparse)
    assert out[0, 0] == 2.0 and out[1, 1] == 7.0 and out[0, 1] == 0.0 and out[1, 0] == 0.0
    with pytest.raises(ValueError, match="depth"):
        geometry.sparse_depth(np.zeros((3, 4), np.float32))


def test_clip_geometry_tracks_and_points() -> None:
    ds = ToyDataset("/", num_frames=4, image_size=56, normalize=False, aspect_ratio=0.75, num_tracks=3,
                    sequences=["a"], stride=2)
    sample = ds[0]
    assert sample["images"].shape == (4, 3, 42, 56) and sample["ids"].tolist() == [0, 2, 4, 6]
    X = torch.tensor(POINTS, dtype=torch.float32).expand(4, 3, 3)
    uv, _ = project_points(X, sample["extrinsics"], sample["intrinsics"])
    # the 3 tracks are the 3 points in some order: match each track to its projected point
    err = (sample["tracks"][:, :, None] - uv[:, None]).norm(dim=-1)  # (S, tracks, points)
    assert err.amin(-1).max() < 1e-3 and bool(sample["track_positive_mask"].all())
    # frame 0 has the identity camera: its depth (2.5 m everywhere valid) puts world points at z = 2.5
    wall = sample["world_points"][0][sample["point_masks"][0]]
    assert torch.allclose(wall[:, 2], torch.full_like(wall[:, 2], 2.5), atol=1e-5)
    assert not sample["point_masks"][:, 0].any()  # the invalid band survives resizing as invalid


def test_tuple_index_randomness_and_epochs() -> None:
    ds = ToyDataset("/", num_frames=4, image_size=56, aspect_ratio=[0.5, 1.0], augment=True, stride=[1, 3],
                    sequences=["a"], clips_per_sequence=4, seed=3)
    a, b = ds[(1, 3, 0.5)], ds[(1, 3, 0.5)]
    assert a["images"].shape == (3, 3, 28, 56) and torch.equal(a["images"], b["images"])
    assert torch.allclose(a["extrinsics"][0], torch.eye(3, 4), atol=1e-6)  # normalised: camera 0 = identity
    draws = {tuple(ds[1]["ids"].tolist()) for _ in range(1)}
    for epoch in range(1, 6):
        ds.set_epoch(epoch)
        draws.add(tuple(ds[1]["ids"].tolist()))
    assert len(draws) > 1  # a new epoch draws new strides / starts


def test_bad_clip_errors_and_skipping(caplog: pytest.LogCaptureFixture) -> None:
    ds = ToyDataset("/", num_frames=6, image_size=56, sequences=["broken"])
    with pytest.raises(ClipFormatError, match=r"broken/0003\.png: camera holds NaN"):
        ds[0]
    skipping = ToyDataset("/", num_frames=6, image_size=56, skip_bad_clips=True)
    with caplog.at_level(logging.WARNING):
        sample = skipping[2]  # clips: a/0, a/1, broken/0; the broken one is replaced by the next (a/0)
    assert sample["seq_name"] == "a" and skipping.bad_clips == 1
    assert "skipping clip 2 of sequence broken" in caplog.text
    assert ToyDataset("/", sequences=["broken"]).validate() == [
        "broken/0003.png: camera holds NaN/inf (extrinsics or intrinsics)"
    ]


def test_check_frame_names_the_problem() -> None:
    good = ToyDataset("/").load_frame("a", 0)
    with pytest.raises(ClipFormatError, match=r"a/0000\.png: depth has size \(10, 10\)"):
        check_frame(Frame(good.image, good.intrinsics, good.extrinsics, np.ones((10, 10), np.float32),
                          source=good.source), "toy/a")
    scaled = good.extrinsics.copy()
    scaled[:, :3] *= 1.06  # a scaled rotation (the Bonn T_m pitfall)
    with pytest.raises(ClipFormatError, match="not a rotation"):
        check_frame(Frame(good.image, good.intrinsics, scaled, source="x.png"), "toy/a")
    with pytest.raises(ValueError, match="root"):
        ToyDataset(None)


def test_normalised_clip_equals_normalize_sample_of_the_metric_clip() -> None:
    """The readers build normalised clips in camera 0's frame directly (one transform instead of two); the
    result must equal the official normalisation applied to the metric clip."""
    from page4d_lightning.geometry import normalize_sample

    kwargs = {"num_frames": 4, "image_size": 56, "aspect_ratio": 0.75, "sequences": ["a"], "stride": 2}
    direct = ToyDataset("/", normalize=True, **kwargs)[0]
    reference = normalize_sample(ToyDataset("/", normalize=False, **kwargs)[0])
    for key in ("extrinsics", "world_points", "cam_points", "depths", "scale"):
        torch.testing.assert_close(direct[key], reference[key], atol=1e-5, rtol=1e-5, msg=key)
    assert torch.equal(direct["point_masks"], reference["point_masks"])
