"""MultitaskLoss against the official PAGE-4D loss (issue #5): every term, PAGE-4D recipe, hard inputs.

The reference is `tests/loss_oracle.py`, a step-by-step transcription of kaichen-z/PAGE4D
`training/loss.py` (see its header). Inputs are seeded random batches at B=2, S=3, H=W=28 (4704 pixels,
so the 0.98-quantile filter, which needs > 1000 values, is active) with non-finite and > 100 GT values at
valid pixels, invalid pixels, and the scenarios below (few valid pixels in frame 0, abandon flags).
"""

from __future__ import annotations

import math

import pytest
import torch

from page4d_lightning.losses import MultitaskLoss
from tests.loss_oracle import extri_intri_to_pose_encoding, official_multitask_loss

B, S, H, W = 2, 3, 28, 28
CAMERA = {"weight": 5.0, "loss_type": "l1"}
DEPTH = {"weight": 1.0, "gamma": 0.3, "alpha": 0.06, "gradient_loss_fn": "grad", "valid_range": 0.98}
POINT = {"weight": 1.0, "gradient_loss_fn": "normal", "valid_range": 0.98}
TERMS = (
    "objective",
    "loss_camera",
    "loss_T",
    "loss_R",
    "loss_FL",
    "loss_conf_depth",
    "loss_reg_depth",
    "loss_grad_depth",
    "loss_conf_point",
    "loss_reg_point",
    "loss_grad_point",
)


def _rotations(n: int, g: torch.Generator) -> torch.Tensor:
    """n random rotations (n, 3, 3) from normalised random quaternions (some with w < 0)."""
    q = torch.randn(n, 4, generator=g)
    q = q / q.norm(dim=-1, keepdim=True)
    x, y, z, w = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - z * w),
            2 * (x * z + y * w),
            2 * (x * y + z * w),
            1 - 2 * (x * x + z * z),
            2 * (y * z - x * w),
            2 * (x * z - y * w),
            2 * (y * z + x * w),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(n, 3, 3)


def _case(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """A normalised-looking batch and PAGE4D-like predictions, with hard GT values at valid pixels."""
    g = torch.Generator().manual_seed(seed)
    extrinsics = torch.zeros(B, S, 3, 4)
    # (B*S, 3, 3) -> (B, S, 3, 3)
    extrinsics[..., :3, :3] = _rotations(B * S, g).reshape(B, S, 3, 3)
    extrinsics[..., :3, 3] = torch.randn(B, S, 3, generator=g)
    focal = 15 + 10 * torch.rand(B, S, 2, generator=g)
    intrinsics = torch.zeros(B, S, 3, 3)
    intrinsics[..., 0, 0], intrinsics[..., 1, 1] = focal[..., 0], focal[..., 1]
    intrinsics[..., 0, 2], intrinsics[..., 1, 2], intrinsics[..., 2, 2] = W / 2, H / 2, 1.0
    masks = torch.rand(B, S, H, W, generator=g) > 0.15
    depths = (0.5 + 2 * torch.rand(B, S, H, W, generator=g)) * masks
    points = torch.randn(B, S, H, W, 3, generator=g) * masks[..., None]
    # hard GT at valid pixels: NaN, +-inf and > 100 (clamped to 100 by the official code)
    depths[0, 1, 3, 4], depths[1, 2, 10, 10], depths[0, 0, 20, 7] = float("nan"), float("inf"), 250.0
    points[0, 0, 5, 5, 1], points[1, 1, 7, 8, 0], points[1, 0, 2, 2, 2] = float("nan"), -float("inf"), 180.0
    masks[0, 1, 3, 4] = masks[1, 2, 10, 10] = masks[0, 0, 20, 7] = True
    masks[0, 0, 5, 5] = masks[1, 1, 7, 8] = masks[1, 0, 2, 2] = True
    batch = {
        "images": torch.rand(B, S, 3, H, W, generator=g),
        "extrinsics": extrinsics,
        "intrinsics": intrinsics,
        "depths": depths,
        "world_points": points,
        "point_masks": masks,
        "abandon_pose": torch.zeros(B, dtype=torch.bool),
        "abandon_geometry": torch.zeros(B, dtype=torch.bool),
    }
    gt_enc = extri_intri_to_pose_encoding(extrinsics, intrinsics, (H, W))
    pose_list = [gt_enc + 0.3 * (4 - i) * torch.randn(B, S, 9, generator=g) for i in range(4)]
    pose_list[0][0, 1, :3] += 300.0  # a wild translation: clamped at 100 per element
    pred_points = points.nan_to_num(0.0, 0.0, 0.0).clamp(-5, 5) + 0.5 * torch.randn(B, S, H, W, 3, generator=g)
    predictions = {
        "pose_enc": pose_list[-1],
        "pose_enc_list": pose_list,
        "depth": torch.exp(0.5 * torch.randn(B, S, H, W, 1, generator=g)),
        "depth_conf": 1 + torch.exp(torch.randn(B, S, H, W, generator=g)),
        "world_points": pred_points,
        "world_points_conf": 1 + torch.exp(1.5 * torch.randn(B, S, H, W, generator=g)),
    }
    return batch, predictions


def _few_pixels_frame0(batch: dict[str, torch.Tensor]) -> None:
    """Clip 1's first frame keeps exactly 100 valid pixels: not > 100, so clip 1 leaves the camera loss."""
    frame = torch.zeros(H * W, dtype=torch.bool)
    frame[:100] = True
    batch["point_masks"][1, 0] = frame.reshape(H, W)


def _scenario(name: str, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    batch, preds = _case(seed)
    if name == "few_pixels_frame0":
        _few_pixels_frame0(batch)
    elif name == "abandon_pose":
        batch["abandon_pose"][0] = True
    elif name == "no_valid_camera_clip":
        _few_pixels_frame0(batch)
        batch["abandon_pose"][0] = True
    elif name == "abandon_geometry":
        batch["abandon_geometry"][1] = True
    elif name == "under_100_valid_pixels":  # whole batch < 100 valid pixels: geometry terms are zero
        batch["point_masks"][:] = False
        batch["point_masks"][0, 0, :3, :] = True  # 84 pixels
    elif name != "plain":
        raise AssertionError(name)
    return batch, preds


SCENARIOS = (
    "plain",
    "few_pixels_frame0",
    "abandon_pose",
    "no_valid_camera_clip",
    "abandon_geometry",
    "under_100_valid_pixels",
)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_term_equals_the_official_loss(scenario: str, seed: int) -> None:
    batch, preds = _scenario(scenario, seed)
    ours = MultitaskLoss(camera=CAMERA, depth=DEPTH, point=POINT, track={"weight": 0.0})(preds, batch)
    ref = official_multitask_loss(preds, batch, camera=CAMERA, depth=DEPTH, point=POINT)
    assert set(ours) == set(ref) == set(TERMS)
    mismatches = []
    for name in TERMS:
        a, b = float(ours[name]), float(ref[name])
        assert math.isfinite(a), name
        if not math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7):
            mismatches.append(f"{name}: ours {a:.7g} official {b:.7g}")
    assert not mismatches, "; ".join(mismatches)


def test_the_cases_exercise_what_they_claim() -> None:
    """Guards the test inputs: quantile filter active, clamps hit, flags change the official result."""
    batch, preds = _case(0)
    assert int(batch["point_masks"].sum()) > 1000  # filter_by_quantile needs > 1000 values
    assert not torch.isfinite(batch["depths"][batch["point_masks"]]).all()
    assert not torch.isfinite(batch["world_points"][batch["point_masks"]]).all()
    plain = official_multitask_loss(preds, batch, camera=CAMERA, depth=DEPTH, point=POINT)
    assert all(float(plain[t]) != 0.0 for t in TERMS)
    b2, p2 = _scenario("few_pixels_frame0", 0)
    assert float(official_multitask_loss(p2, b2, CAMERA, DEPTH, POINT)["loss_T"]) != float(plain["loss_T"])
    b3, p3 = _scenario("no_valid_camera_clip", 0)
    assert float(official_multitask_loss(p3, b3, CAMERA, DEPTH, POINT)["loss_camera"]) == 0.0
    b4, p4 = _scenario("abandon_geometry", 0)
    geo = official_multitask_loss(p4, b4, CAMERA, DEPTH, POINT)
    assert float(geo["loss_reg_depth"]) == 0.0 and float(geo["loss_grad_point"]) == 0.0


# ------------------------------------------------------------------------------------------- tracks
N_TRACKS = 8
TRACK_TERMS = ("loss_track", "loss_coord_track", "loss_vis_track", "loss_conf_track")
TRACK_CONFIGS = {
    "defaults": {"weight": 1.0},
    "vis_aware": {"weight": 1.0, "gamma": 0.6, "vis_aware": True, "conf_threshold": 2.0, "weight_vis": 0.5},
}


def _track_case(seed: int, scenario: str) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """`_case` plus GT tracks (pixels) and track predictions: 4 iterations closing in on the GT."""
    batch, preds = _case(seed)
    g = torch.Generator().manual_seed(100 + seed)
    n_gt = N_TRACKS + 2 if scenario == "more_gt_tracks" else N_TRACKS  # extra GT tracks are sliced away
    tracks = W * torch.rand(B, S, n_gt, 2, generator=g)
    vis = torch.rand(B, S, n_gt, generator=g) > 0.3
    vis[0, 0, :3] = False  # tracks not visible at the query frame: ignored by every term
    tracks[1, 2, 0, 0], tracks[0, 1, 5, 1] = float("nan"), float("inf")  # NaN/inf GT -> 0, no clamp
    vis[1, :, 0] = vis[0, :, 5] = True
    if scenario == "no_visible_query":
        vis[:, 0] = False
    elif scenario == "two_visible_points":  # <= 2 valid & visible points: the coordinate term is 0
        vis[:] = False
        vis[0, 0, 4] = vis[1, 0, 6] = True
    elif scenario not in ("plain", "more_gt_tracks"):
        raise AssertionError(scenario)
    # errors from ~12 px (first iteration) to ~1.5 px (last), so the 3 px confidence target is mixed
    track_list = [
        tracks[:, :, :N_TRACKS].nan_to_num(0.0, 0.0, 0.0) + (4 - i) * 3.0 * torch.randn(B, S, N_TRACKS, 2, generator=g)
        for i in range(4)
    ]
    batch.update(tracks=tracks, track_vis_mask=vis, track_positive_mask=torch.rand(B, n_gt, generator=g) > 0.5)
    preds.update(
        track=track_list[-1],
        track_list=track_list,
        vis=torch.sigmoid(2 * torch.randn(B, S, N_TRACKS, generator=g)),
        conf=torch.sigmoid(2 * torch.randn(B, S, N_TRACKS, generator=g)),
    )
    return batch, preds


TRACK_SCENARIOS = ("plain", "more_gt_tracks", "no_visible_query", "two_visible_points")


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("scenario", TRACK_SCENARIOS)
@pytest.mark.parametrize("config", sorted(TRACK_CONFIGS))
def test_track_terms_equal_the_official_loss(config: str, scenario: str, seed: int) -> None:
    batch, preds = _track_case(seed, scenario)
    track = TRACK_CONFIGS[config]
    ours = MultitaskLoss(camera=CAMERA, depth=DEPTH, point=POINT, track=track)(preds, batch)
    ref = official_multitask_loss(preds, batch, camera=CAMERA, depth=DEPTH, point=POINT, track=track)
    assert set(ours) == set(ref) == set(TERMS) | set(TRACK_TERMS)
    mismatches = []
    for name in (*TRACK_TERMS, "objective"):
        a, b = float(ours[name]), float(ref[name])
        assert math.isfinite(a), name
        if not math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7):
            mismatches.append(f"{name}: ours {a:.7g} official {b:.7g}")
    assert not mismatches, "; ".join(mismatches)


def test_the_track_cases_exercise_what_they_claim() -> None:
    """Guards the track inputs: every term non-zero, mixed confidence target, scenarios zero what they claim."""
    batch, preds = _track_case(0, "plain")
    plain = official_multitask_loss(preds, batch, CAMERA, DEPTH, POINT, track={"weight": 1.0})
    assert all(float(plain[t]) > 0.0 for t in TRACK_TERMS)
    err = (batch["tracks"].nan_to_num(0.0, 0.0, 0.0) - preds["track_list"][-1]).norm(dim=-1)
    assert 0 < int((err < 3.0).sum()) < err.numel()
    # the official BCE-with-logits on sigmoid outputs differs from plain BCE on them
    valid = batch["track_vis_mask"][:, 0:1].expand_as(batch["track_vis_mask"])
    plain_bce = torch.nn.functional.binary_cross_entropy(preds["vis"][valid], batch["track_vis_mask"][valid].float())
    assert abs(float(plain["loss_vis_track"]) - float(plain_bce)) > 1e-2
    b, p = _track_case(0, "no_visible_query")
    assert all(
        float(official_multitask_loss(p, b, CAMERA, DEPTH, POINT, {"weight": 1.0})[t]) == 0.0 for t in TRACK_TERMS
    )
    b, p = _track_case(0, "two_visible_points")
    two = official_multitask_loss(p, b, CAMERA, DEPTH, POINT, {"weight": 1.0})
    assert float(two["loss_coord_track"]) == 0.0 and float(two["loss_vis_track"]) > 0.0
