"""metrics/functional.py: pose errors against evo, depth errors against hand values and numpy lstsq.

Degenerate poses and AUC: test_metrics_pose.py; official depth alignments: test_metrics_depth.py.
"""

import math

import numpy as np
import pytest
import torch
from evo.core import metrics as evo_metrics
from evo.core import trajectory

from page4d_lightning.geometry import quat_to_rotmat, se3_inverse, to_homogeneous
from page4d_lightning.metrics.functional import DEPTH_ALIGNERS, DEPTH_KEYS, depth_errors, pose_errors

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_extrinsics(S: int, seed: int, step: float = 1.0) -> torch.Tensor:
    """(S, 3, 4) camera-from-world of a random walk (step = how far consecutive cameras move/turn)."""
    g = _gen(seed)
    q = torch.randn(4, generator=g, dtype=F64) + step * torch.randn(S, 4, generator=g, dtype=F64).cumsum(0)
    centres = step * torch.randn(S, 3, generator=g, dtype=F64).cumsum(0)
    c2w = torch.cat([quat_to_rotmat(q), centres[..., None]], -1)
    return se3_inverse(c2w)


def _evo(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    """Reference: evo on camera-to-world paths, Sim(3)-aligned, RMSE statistics."""

    def path(E):
        return trajectory.PosePath3D(poses_se3=list(to_homogeneous(se3_inverse(E)).numpy()))

    ref, est = path(gt), path(pred)
    est.align(ref, correct_scale=True)
    relations = {
        "ate": evo_metrics.APE(evo_metrics.PoseRelation.translation_part),
        "rpe_trans": evo_metrics.RPE(evo_metrics.PoseRelation.translation_part, delta=1,
                                     delta_unit=evo_metrics.Unit.frames, all_pairs=False),
        "rpe_rot": evo_metrics.RPE(evo_metrics.PoseRelation.rotation_angle_deg, delta=1,
                                   delta_unit=evo_metrics.Unit.frames, all_pairs=False),
    }
    out = {}
    for key, metric in relations.items():
        metric.process_data((ref, est))
        out[key] = metric.get_statistic(evo_metrics.StatisticsType.rmse)
    return out


# ------------------------------------------------------------------------------------------------- pose


@pytest.mark.parametrize(("seed", "noise"), [(0, None), (1, None), (2, 0.05), (3, 0.002)])
def test_pose_errors_match_evo(seed, noise):
    gt = _random_extrinsics(20, seed)
    if noise is None:  # unrelated trajectory: large errors
        pred = _random_extrinsics(20, seed + 100)
    else:  # GT perturbed: small errors, small RPE angles
        g = _gen(seed + 200)
        q = torch.tensor([0.0, 0, 0, 1], dtype=F64) + noise * torch.randn(20, 4, generator=g, dtype=F64)
        delta = torch.cat([quat_to_rotmat(q), noise * torch.randn(20, 3, 1, generator=g, dtype=F64)], -1)
        pred = (to_homogeneous(delta) @ to_homogeneous(gt))[:, :3]
    ours = pose_errors(pred.float() if seed == 1 else pred, gt)
    reference = _evo(pred.float().double() if seed == 1 else pred, gt)
    for key in ("ate", "rpe_trans", "rpe_rot"):
        assert ours[key].dtype == F64
        assert ours[key].item() == pytest.approx(reference[key], rel=1e-6), key


def test_pose_errors_perfect_and_similarity_are_zero():
    gt = _random_extrinsics(20, seed=4)
    for key, value in pose_errors(gt, gt).items():
        assert value.item() == pytest.approx(0.0, abs=1e-9), key
    # prediction = GT trajectory under a Sim(3): c2w' = [R_a R | s R_a c + t_a]
    c2w = se3_inverse(gt)
    R_a = quat_to_rotmat(torch.tensor([0.3, -0.2, 0.5, 0.7], dtype=F64))
    s, t_a = 2.5, torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    centres = s * c2w[..., 3] @ R_a.T + t_a
    pred = se3_inverse(torch.cat([R_a @ c2w[..., :3], centres[..., None]], -1))
    errors = pose_errors(to_homogeneous(pred), to_homogeneous(gt))  # 4x4 inputs accepted
    for key, value in errors.items():
        assert value.item() == pytest.approx(0.0, abs=1e-9), key


def test_pose_errors_batched_equals_per_clip():
    gt = torch.stack([_random_extrinsics(6, s) for s in range(3)])
    pred = torch.stack([_random_extrinsics(6, s + 10) for s in range(3)])
    batched = pose_errors(pred, gt)
    for b in range(3):
        single = pose_errors(pred[b], gt[b])
        for key in single:
            torch.testing.assert_close(batched[key][b], single[key])


def test_pose_errors_bad_input():
    gt = _random_extrinsics(5, seed=5)
    with pytest.raises(ValueError, match="S >= 2"):
        pose_errors(gt[:1], gt[:1])
    with pytest.raises(ValueError, match="leading dims"):
        pose_errors(gt[:4], gt)
    message = r"pred_extrinsics: expected \(\.\.\., 3, 4\) or \(\.\.\., 4, 4\), got \(5, 3, 3\)"
    with pytest.raises(ValueError, match=message):
        pose_errors(gt[..., :3], gt)


# ------------------------------------------------------------------------------------------------ depth


def _depth_clip(seed: int = 6, S: int = 3, H: int = 6, W: int = 7) -> torch.Tensor:
    g = _gen(seed)
    gt = 0.5 + 5 * torch.rand(S, H, W, generator=g, dtype=F64)
    return gt * (torch.rand(S, H, W, generator=g) > 0.25)  # 0 = invalid


@pytest.mark.parametrize("align", sorted(DEPTH_ALIGNERS))
@pytest.mark.parametrize("per", ["frame", "sequence"])
def test_depth_perfect(align, per):
    gt = _depth_clip()
    out = depth_errors(gt.float(), gt.float(), align=align, per=per)
    for key in ("abs_rel", "sq_rel", "rmse", "log_rmse"):
        assert out[key].item() == pytest.approx(0.0, abs=1e-6), key
    for key in ("delta_1_25", "delta_1_25_sq", "delta_1_25_cu"):
        assert out[key].item() == 1.0, key
    assert out["valid_pixels"].item() == (gt > 0).sum().item()


def test_depth_scaled_prediction_aligns_to_zero():
    gt = _depth_clip()
    per_frame = gt * torch.tensor([0.1, 3.0, 7.0], dtype=F64)[:, None, None] + 5 * (gt == 0)  # junk at invalid
    assert depth_errors(per_frame, gt, align="median")["abs_rel"].item() == pytest.approx(0.0, abs=1e-12)
    assert depth_errors(per_frame, gt, align="none")["abs_rel"].item() > 0.5
    assert depth_errors(gt * 4.0, gt, align="scale")["abs_rel"].item() == pytest.approx(0.0, abs=1e-12)
    assert depth_errors(gt * 4.0, gt, align="scale_lstsq")["abs_rel"].item() == pytest.approx(0.0, abs=1e-12)
    shifted = gt * 0.3 + 2.0
    assert depth_errors(shifted, gt, align="scale_shift_lstsq")["rmse"].item() == pytest.approx(0.0, abs=1e-10)


def test_depth_hand_computed_none():
    gt = torch.tensor([[[1.7, 2.0, 3.5, 0.0]]])
    pred = torch.tensor([[[2.0, 2.0, 2.0, 5.0]]])  # the last pixel is invalid GT
    out = depth_errors(pred, gt, align="none")
    expected = {
        "abs_rel": (0.3 / 1.7 + 0 + 1.5 / 3.5) / 3,
        "sq_rel": (0.09 / 1.7 + 0 + 2.25 / 3.5) / 3,
        "rmse": math.sqrt((0.09 + 0 + 2.25) / 3),
        "log_rmse": math.sqrt((math.log(2 / 1.7) ** 2 + 0 + math.log(3.5 / 2) ** 2) / 3),
        "delta_1_25": 2 / 3,  # ratios 1.176, 1, 1.75
        "delta_1_25_sq": 2 / 3,
        "delta_1_25_cu": 1.0,
        "valid_pixels": 3,
    }
    for key, value in expected.items():
        assert out[key].item() == pytest.approx(value, rel=1e-6), key


def test_depth_hand_computed_median_and_per():
    # frame 0: gt (1, 2, 3), pred (10, 20, 40) -> x 0.1 -> (1, 2, 4); frame 1: one pixel, exact after median
    gt = torch.tensor([[[1.0, 2.0, 3.0]], [[5.0, 0.0, 0.0]]])
    pred = torch.tensor([[[10.0, 20.0, 40.0]], [[1.0, 9.0, 9.0]]])
    frame = depth_errors(pred, gt, align="median", per="frame")
    seq = depth_errors(pred, gt, align="median", per="sequence")
    assert frame["abs_rel"].item() == pytest.approx((1 / 3) / 4)  # pooled over 4 valid pixels
    assert seq["abs_rel"].item() == pytest.approx((1 / 3) / 4)
    assert frame["rmse"].item() == pytest.approx((3 * math.sqrt(1 / 3) + 1 * 0.0) / 4)  # weighted frame RMSEs
    assert seq["rmse"].item() == pytest.approx(math.sqrt(1 / 4))
    assert frame["valid_pixels"].item() == seq["valid_pixels"].item() == 4


def test_depth_lstsq_aligners_match_numpy_lstsq():
    gt = _depth_clip(seed=7)
    pred = 0.7 * gt + 0.4 + 0.2 * torch.rand(gt.shape, generator=_gen(8), dtype=F64)
    m = (gt > 0).numpy()
    A = np.stack([pred.numpy()[m], np.ones(m.sum())], 1)
    (s, t), *_ = np.linalg.lstsq(A, gt.numpy()[m], rcond=None)
    aligned = s * pred.numpy()[m] + t
    out = depth_errors(pred, gt, align="scale_shift_lstsq", per="sequence")
    assert out["rmse"].item() == pytest.approx(np.sqrt(np.mean((aligned - gt.numpy()[m]) ** 2)), rel=1e-9)
    s_only = (pred.numpy()[m] @ gt.numpy()[m]) / (pred.numpy()[m] @ pred.numpy()[m])
    out = depth_errors(pred, gt, align="scale_lstsq", per="sequence")
    expected = np.mean(np.abs(s_only * pred.numpy()[m] - gt.numpy()[m]) / gt.numpy()[m])
    assert out["abs_rel"].item() == pytest.approx(expected, rel=1e-9)


def test_depth_max_depth_and_clip():
    gt = torch.tensor([[[1.0, 2.0, 80.0]]])
    pred = torch.tensor([[[1.0, 3.0, 1.0]]])
    out = depth_errors(pred, gt, align="none", max_depth=70)
    assert out["valid_pixels"].item() == 2
    assert out["abs_rel"].item() == pytest.approx(0.25)
    clipped = depth_errors(pred, gt, align="none", max_depth=70, clip_pred=2.0)
    assert clipped["abs_rel"].item() == pytest.approx(0.0)
    clipped = depth_errors(pred, gt, align="none", max_depth=70, clip_pred=(1.5, 2.0))
    assert clipped["abs_rel"].item() == pytest.approx(0.25)


def test_depth_all_invalid_is_nan_with_warning():
    gt = torch.zeros(2, 3, 3)
    with pytest.warns(RuntimeWarning, match="no valid GT pixel"):
        out = depth_errors(torch.ones(2, 3, 3), gt)
    assert all(math.isnan(out[key].item()) for key in DEPTH_KEYS)
    assert out["valid_pixels"].item() == 0


def test_depth_bad_input():
    with pytest.raises(ValueError, match=r"gt: expected the shape of pred \(2, 3, 3\), got \(2, 3, 4\)"):
        depth_errors(torch.ones(2, 3, 3), torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="align: expected one of"):
        depth_errors(torch.ones(2, 3, 3), torch.ones(2, 3, 3), align="lad")
    with pytest.raises(ValueError, match="per: expected"):
        depth_errors(torch.ones(2, 3, 3), torch.ones(2, 3, 3), per="pixel")
