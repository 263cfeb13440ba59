"""`augment: official`: the official PAGE-4D training augmentation, per frame (issue #17).

Independent reference: the official steps (kaichen-z/PAGE4D `training/data/base_dataset.py:238-281`,
`dataset_util.py:84-142,175-221`) restated here in the official pixel-area convention (principal point cx + 0.5,
scaled by the resize factor), applied to the same arrays with the same OpenCV calls; the plan in
`datamodules.transforms` works in the project's pixel-centre convention and must give the same pixels and the
same intrinsics (shifted back by 0.5). Then the whole clip pipeline: intrinsics, depth and tracks follow each
frame's own crop and stretch; and the colour recipe (jitter 0.5/0.5/0.5/0.1 p 0.9, grey 0.05, per frame 30 %).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from datamodules.sequence import Frame, SequenceDataset, Tracks
from datamodules.transforms import (
    AUGMENT_MODES,
    Photometric,
    ResizeCrop,
    augment_mode,
    photometric_augmentation,
    plan_clip_geometry,
)
from page4d_lightning.geometry import project_points

H0, W0 = 72, 96
POINTS = np.array([[0.2, 0.1, 2.5], [-0.3, 0.05, 3.0], [0.05, -0.2, 2.0]])


# ------------------------------------------------------------------------------ the official steps, restated
def _official_crop_at_pp(image, depth, K, size):
    """`crop_image_depth_and_intrinsic_by_pp` (dataset_util.py:84-142): K in pixel-area coordinates."""
    h, w = image.shape[:2]
    th, tw = size
    x0, y0 = max(0, int(K[0, 2] - tw // 2)), max(0, int(K[1, 2] - th // 2))
    x1, y1 = min(w, x0 + tw), min(h, y0 + th)
    if x1 - x0 < tw:
        x0 = max(0, x1 - tw)
    if y1 - y0 < th:
        y0 = max(0, y1 - th)
    K = K.copy()
    K[0, 2] -= x0
    K[1, 2] -= y0
    return image[y0:y1, x0:x1], depth[y0:y1, x0:x1], K


def official_reference(image, depth, K_centres, out_hw, scales_hw, safe_bound=4):
    """base_dataset.py:238-281 with rescale_aug (safe bound) and no landscape rotation (`landscape_check: False`)."""
    K = K_centres.copy()
    K[:2, 2] += 0.5  # the official resize scales cx as a pixel-area coordinate
    aug = (np.array(image.shape[:2]) * np.minimum(np.asarray(scales_hw), 1.0)).astype(np.int32)
    image, depth, K = _official_crop_at_pp(image, depth, K, aug)
    th, tw = out_hw[0] + safe_bound, out_hw[1] + safe_bound
    sh, sw = th / image.shape[0], tw / image.shape[1]
    image = cv2.resize(image, (tw, th), interpolation=cv2.INTER_LANCZOS4)
    # official: INTER_NEAREST; the project keeps exact nearest (INTER_NEAREST_EXACT) everywhere
    depth = cv2.resize(depth, (tw, th), interpolation=cv2.INTER_NEAREST_EXACT)
    K[0, 0] *= sw
    K[0, 2] *= sw
    K[1, 1] *= sh
    K[1, 2] *= sh
    image, depth, K = _official_crop_at_pp(image, depth, K, out_hw)
    K[:2, 2] -= 0.5
    return image, depth, K


CASES = {  # name -> (source hw, out hw, (cx, cy) pixel centres, crop scales (h, w))
    "centred": ((72, 96), (42, 56), (47.5, 35.5), (0.9, 0.85)),
    "off-centre": ((72, 96), (42, 56), (30.2, 40.7), (0.83, 1.13)),
    "pp near a corner": ((72, 96), (28, 56), (5.0, 3.0), (0.8, 0.95)),
    "capped at 1": ((72, 96), (56, 56), (50.1, 30.4), (1.2, 1.05)),
    "upsampling": ((30, 40), (42, 56), (19.5, 14.5), (0.91, 0.81)),
    "odd source": ((71, 97), (42, 70), (48.3, 35.0), (0.97, 0.88)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_plan_official_equals_the_official_steps(name: str) -> None:
    (h, w), out_hw, (cx, cy), scales = CASES[name]
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 9.0, (h, w)).astype(np.float32)
    K = np.array([[70.0, 0.0, cx], [0.0, 66.0, cy], [0.0, 0.0, 1.0]])
    plan = ResizeCrop.plan_official((h, w), out_hw, K, scales)
    ref_image, ref_depth, ref_K = official_reference(image, depth, K, out_hw, scales)
    assert plan.image(image).shape == (*out_hw, 3)
    np.testing.assert_array_equal(plan.image(image), ref_image)  # same window, size and Lanczos-4 call
    np.testing.assert_array_equal(plan.nearest(depth), ref_depth)
    np.testing.assert_allclose(plan.intrinsics(K), ref_K, atol=1e-9)
    sx, sy = plan.scale_xy
    assert plan.lanczos and sx == (out_hw[1] + 4) / plan.window[3] and sy == (out_hw[0] + 4) / plan.window[2]


def test_plan_official_known_numbers_and_pixel_centres() -> None:
    """72x96 -> 42x56 with crop scales (0.9, 0.85) at the centred principal point, by hand: window 81 x 64 px
    (int(96 * 0.85), int(72 * 0.9)) at (8, 4), resized to 60 x 46, cropped at (1, 2)."""
    K = np.array([[80.0, 0.0, 47.5], [0.0, 78.0, 35.5], [0.0, 0.0, 1.0]])
    plan = ResizeCrop.plan_official((H0, W0), (42, 56), K, (0.9, 0.85))
    assert plan.window == (8, 4, 64, 81) and plan.resized_hw == (46, 60) and plan.offset_xy == (1, 2)
    sx, sy = 60 / 81, 46 / 64
    want = [[80 * sx, 0, sx * (47.5 - 8 + 0.5) - 0.5 - 1], [0, 78 * sy, sy * (35.5 - 4 + 0.5) - 0.5 - 2], [0, 0, 1]]
    np.testing.assert_allclose(plan.intrinsics(K), want, atol=1e-12)
    assert abs(plan.intrinsics(K)[1, 2] - 20.5) < 1e-12  # the principal point stays at the centre row of 42
    # nearest resampling picks, for every output pixel, the source pixel whose centre is nearest to the output
    # centre mapped back through `points` (the same map as the intrinsics): pixel-centre convention, per axis
    ramp = (np.arange(W0)[None, :] + 1000 * np.arange(H0)[:, None]).astype(np.float32)
    picked = plan.nearest(ramp)
    ov, ou = np.mgrid[0:42, 0:56]
    back_u, back_v = (ou + 1 + 0.5) / sx - 0.5 + 8, (ov + 2 + 0.5) / sy - 0.5 + 4
    assert np.abs(back_u - picked % 1000).max() <= 0.5 and np.abs(back_v - picked // 1000).max() <= 0.5
    source = np.stack([picked % 1000, picked // 1000], axis=-1).astype(np.float64)
    mapped = plan.points(source)
    assert np.abs(mapped[..., 0] - ou).max() <= 0.5 * sx + 1e-9 and np.abs(mapped[..., 1] - ov).max() <= 0.5 * sy + 1e-9
    # sparse depth: points outside the window are dropped, the others land where `points` rounds them
    sparse = np.zeros((H0, W0), np.float32)
    sparse[3, 5] = 4.0  # left of the window (x < 8) and above it (y < 4)
    sparse[40, 50] = 2.0
    out = plan.sparse_depth(sparse)
    u, v = np.rint(plan.points(np.array([50.0, 40.0]))).astype(int)
    assert out[v, u] == 2.0 and np.count_nonzero(out) == 1


class Wall(SequenceDataset):
    """One sequence of 10 frames; the principal point moves per frame; depth encodes its source pixel (u + 1000 v
    + 1) so the output can be traced back; tracks are 3 points projected with the native cameras."""

    name = "wall"

    def find_sequences(self) -> dict[str, int]:
        return {"a": 10}

    @staticmethod
    def camera(index: int) -> tuple[np.ndarray, np.ndarray]:
        K = np.array([[80.0 + index, 0.0, 44.0 + 1.5 * index], [0.0, 78.0, 33.0 - index], [0.0, 0.0, 1.0]])
        c, s = np.cos(0.03 * index), np.sin(0.03 * index)
        E = np.array([[c, 0.0, s, 0.05 * index], [0.0, 1.0, 0.0, 0.0], [-s, 0.0, c, 0.02 * index]])
        return K, E

    def load_frame(self, seq: str, index: int) -> Frame:
        K, E = self.camera(index)
        image = np.random.default_rng(index).integers(0, 256, (H0, W0, 3), dtype=np.uint8)
        depth = (np.arange(W0)[None, :] + 1000 * np.arange(H0)[:, None] + 1).astype(np.float32)
        if self.sparse_depth:
            depth[:, 1::2] = 0.0
        return Frame(image, K, E, depth, source=f"{seq}/{index}")

    def load_tracks(self, seq: str, ids: list[int]) -> Tracks:
        uv = []
        for i in ids:
            K, E = self.camera(i)
            cam = POINTS @ E[:, :3].T + E[:, 3]
            uv.append(cam[:, :2] / cam[:, 2:] * K[[0, 1], [0, 1]] + K[[0, 1], [2, 2]])
        return Tracks(np.stack(uv), np.ones((len(ids), len(POINTS)), bool))


class SparseWall(Wall):
    sparse_depth = True


def _affine_x_y(K_in: np.ndarray, K_out: np.ndarray) -> tuple[float, float, float, float]:
    """The per-axis map u_out = ax u_in + bx (same for v) that turns K_in into K_out."""
    ax, ay = K_out[0, 0] / K_in[0, 0], K_out[1, 1] / K_in[1, 1]
    return ax, K_out[0, 2] - ax * K_in[0, 2], ay, K_out[1, 2] - ay * K_in[1, 2]


@pytest.mark.parametrize("cls", [Wall, SparseWall])
def test_official_clip_varies_per_frame_and_everything_follows(cls) -> None:
    ds = cls("/", num_frames=5, image_size=56, normalize=False, aspect_ratio=0.75, augment="official",
             num_tracks=3, seed=2)
    sample = ds[0]
    assert ds.augment == "official" and sample["images"].shape == (5, 3, 42, 56)
    K_out = sample["intrinsics"].double().numpy()
    ratio = K_out[:, 0, 0] / K_out[:, 1, 1]
    native = [Wall.camera(i)[0] for i in sample["ids"].tolist()]
    stretch = ratio / np.array([K[0, 0] / K[1, 1] for K in native])
    assert np.ptp(stretch) > 0.02 and np.abs(stretch - 1).max() > 0.02  # pixel aspect varies per frame, fx != fy
    zoom = K_out[:, 1, 1] / np.array([K[1, 1] for K in native])
    assert np.ptp(zoom) > 0.01  # and the zoom
    # depth: each output pixel holds the source pixel nearest to it under that frame's own intrinsics map
    depth = sample["depths"].numpy()
    ov, ou = np.mgrid[0:42, 0:56]
    for s, K in enumerate(native):
        ax, bx, ay, by = _affine_x_y(K, K_out[s])
        valid = depth[s] > 0
        code = depth[s][valid].astype(np.int64) - 1
        u_src, v_src = code % 1000, code // 1000
        if cls.sparse_depth:  # re-splatted: the source pixel's mapped centre rounds to this output pixel
            assert np.abs(ax * u_src + bx - ou[valid]).max() <= 0.5 + 1e-4
            assert np.abs(ay * v_src + by - ov[valid]).max() <= 0.5 + 1e-4
            assert 0.2 < valid.mean() and not valid.all()  # every other source column is empty
        else:  # nearest: the output centre maps back within half a source pixel of it
            assert valid.all()
            assert np.abs((ou - bx) / ax - u_src.reshape(42, 56)).max() <= 0.5 + 1e-4
            assert np.abs((ov - by) / ay - v_src.reshape(42, 56)).max() <= 0.5 + 1e-4
    # tracks: each frame's track pixels are where its output camera projects the 3D points
    X = torch.tensor(POINTS, dtype=torch.float32).expand(5, 3, 3)
    uv, _ = project_points(X, sample["extrinsics"], sample["intrinsics"])
    err = (sample["tracks"][:, :, None] - uv[:, None]).norm(dim=-1)  # (S, tracks, points)
    assert err.amin(-1).max() < 1e-3
    # every draw is a function of (seed, epoch, index)
    again = cls("/", num_frames=5, image_size=56, normalize=False, aspect_ratio=0.75, augment="official",
                num_tracks=3, seed=2)
    torch.testing.assert_close(again[0]["images"], sample["images"], atol=0, rtol=0)
    torch.testing.assert_close(again[(0, 5, 0.75, 0)]["intrinsics"], sample["intrinsics"], atol=0, rtol=0)
    assert not torch.equal(again[(0, 5, 0.75, 1)]["intrinsics"], sample["intrinsics"])


def test_augment_values_and_the_clip_alias() -> None:
    assert [augment_mode(v) for v in (False, None, "none", True, "clip", "official", "Official")] == [
        "none", "none", "none", "clip", "clip", "official", "official"]
    assert AUGMENT_MODES == ("none", "clip", "official")
    with pytest.raises(ValueError, match="augment: expected one of none, clip, official"):
        Wall("/", augment="offical")
    kwargs = {"num_frames": 4, "image_size": 56, "aspect_ratio": [0.5, 1.0], "seed": 5}
    alias, clip = Wall("/", augment=True, **kwargs)[0], Wall("/", augment="clip", **kwargs)[0]
    for key in ("images", "depths", "intrinsics", "ids"):
        torch.testing.assert_close(alias[key], clip[key], atol=0, rtol=0, msg=key)
    plain = plan_clip_geometry("none", (H0, W0), (42, 56), [Wall.camera(0)[0]] * 3, np.random.default_rng(0))
    assert len(plain) == 3 and plain[0] is plain[2] and plain[0].window is None and not plain[0].lanczos


def test_official_photometric_recipe() -> None:
    official = Photometric("official")
    jitter, grey = official.transform.transforms
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == ((0.5, 1.5),) * 3 + ((-0.1, 0.1),)
    assert jitter.p == 0.9 and grey.p == 0.05 and len(official.transform.transforms) == 2  # no blur
    image = np.random.default_rng(0).integers(40, 216, (12, 12, 3), dtype=np.uint8)
    clip = np.stack([image] * 3)  # identical frames: a per-clip draw keeps them identical
    per_frame = 0
    trials = 400
    for seed in range(trials):
        out = official(clip, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, official(clip, np.random.default_rng(seed)))  # deterministic in the rng
        per_frame += not (np.array_equal(out[0], out[1]) and np.array_equal(out[1], out[2]))
    # 30 % per frame (`cojitter_ratio: 0.3`); identical per-frame draws are rare (p < 1 %); 4 sigma = 0.092
    assert abs(per_frame / trials - 0.3) < 0.092
    # "clip" keeps today's recipe and draws: one seed from the clip rng, one parameter set for all frames
    legacy = photometric_augmentation()
    legacy.set_random_seed(int(np.random.default_rng(7).integers(2**31)))
    np.testing.assert_array_equal(Photometric("clip")(clip, np.random.default_rng(7)), legacy(images=clip)["images"])
