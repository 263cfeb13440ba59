"""Pose metrics on degenerate trajectories (against evo where evo defines a value) and the pairwise AUC
(against a NumPy/SciPy transcription of VGGT's CO3D protocol and hand-computed values)."""

import math
import warnings

import numpy as np
import pytest
import torch
from evo.core import metrics as evo_metrics
from evo.core import trajectory
from scipy.spatial.transform import Rotation

from page4d_lightning.geometry import quat_to_rotmat, se3_inverse, to_homogeneous
from page4d_lightning.metrics import PoseMetrics
from page4d_lightning.metrics.functional import POSE_KEYS, pose_auc, pose_errors, relative_pose_angle_errors

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _extrinsics(S: int, seed: int, move: bool = True) -> torch.Tensor:
    """(S, 3, 4) camera-from-world: random rotations; random centres, or all at (1, 2, 3) if not `move`."""
    g = _gen(seed)
    R = quat_to_rotmat(torch.randn(S, 4, generator=g, dtype=F64))
    centres = torch.randn(S, 3, generator=g, dtype=F64) if move else torch.tensor([1.0, 2, 3], dtype=F64).expand(S, 3)
    return se3_inverse(torch.cat([R, centres[..., None]], -1))


def _path(E: torch.Tensor) -> trajectory.PosePath3D:
    return trajectory.PosePath3D(poses_se3=list(to_homogeneous(se3_inverse(E)).numpy()))


def _evo_rpe(ref: trajectory.PosePath3D, est: trajectory.PosePath3D) -> dict[str, float]:
    out = {}
    for key, relation in (("rpe_trans", evo_metrics.PoseRelation.translation_part),
                          ("rpe_rot", evo_metrics.PoseRelation.rotation_angle_deg)):
        metric = evo_metrics.RPE(relation, delta=1, delta_unit=evo_metrics.Unit.frames, all_pairs=True)
        metric.process_data((ref, est))
        out[key] = metric.get_statistic(evo_metrics.StatisticsType.rmse)
    return out


# ------------------------------------------------------------------------------------ degenerate trajectories


def test_three_frames_match_evo():
    """The smallest trajectory evo can Sim(3)-align: the full protocol agrees to 1e-6."""
    gt, pred = _extrinsics(3, 0), _extrinsics(3, 1)
    ref, est = _path(gt), _path(pred)
    est.align(ref, correct_scale=True)
    ape = evo_metrics.APE(evo_metrics.PoseRelation.translation_part)
    ape.process_data((ref, est))
    expected = {"ate": ape.get_statistic(evo_metrics.StatisticsType.rmse), **_evo_rpe(ref, est)}
    ours = pose_errors(pred, gt)
    for key in POSE_KEYS:
        assert ours[key].item() == pytest.approx(expected[key], rel=1e-6), key


def test_two_frames_are_defined():
    """Two centres always align exactly under Sim(3) (ATE 0); the RPE then depends on the scale alone, which the
    two centres fix. The reference is evo's RPE on the path scaled by hand, not evo's alignment: whether evo
    aligns two poses at all changed between its releases (1.38 does, earlier ones raised)."""
    gt, pred = _extrinsics(2, 2), _extrinsics(2, 3)
    ours = pose_errors(pred, gt)
    assert ours["ate"].item() == pytest.approx(0.0, abs=1e-9)  # two points always align exactly
    # RPE sees only the Sim(3) scale, which two points fix: |c1 - c0| ratio; evo on the scaled path, no align
    c_gt, c_pred = se3_inverse(gt)[..., 3], se3_inverse(pred)[..., 3]
    scale = ((c_gt[1] - c_gt[0]).norm() / (c_pred[1] - c_pred[0]).norm()).item()
    est = _path(pred)
    est.scale(scale)
    expected = _evo_rpe(_path(gt), est)
    for key in ("rpe_trans", "rpe_rot"):
        assert ours[key].item() == pytest.approx(expected[key], rel=1e-6), key


def test_collinear_similarity_is_zero_without_warning():
    gt = _extrinsics(6, 4)
    c = torch.linspace(0, 2, 6, dtype=F64)[:, None] * torch.tensor([1.0, -0.5, 0.2], dtype=F64)  # one line
    gt = se3_inverse(torch.cat([se3_inverse(gt)[..., :3], c[..., None]], -1))
    R_a = quat_to_rotmat(torch.tensor([0.1, 0.4, -0.3, 0.8], dtype=F64))
    c2w = se3_inverse(gt)
    pred = se3_inverse(torch.cat([R_a @ c2w[..., :3], (3.0 * c2w[..., 3] @ R_a.T + 1.0)[..., None]], -1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        errors = pose_errors(pred, gt)
    for key, value in errors.items():
        assert value.item() == pytest.approx(0.0, abs=1e-9), key


@pytest.mark.parametrize("case", ["static_pred", "static_gt", "pure_rotation_float32"])
def test_static_centres_are_nan_with_warning(case):
    moving, still = _extrinsics(5, 5), _extrinsics(5, 6, move=False)
    pred, gt = {"static_pred": (still, moving), "static_gt": (moving, still),
                "pure_rotation_float32": (still.float(), still.float())}[case]
    with pytest.warns(RuntimeWarning, match="static camera centres"):
        errors = pose_errors(pred, gt)
    assert all(math.isnan(errors[k].item()) for k in POSE_KEYS)


def test_pose_metrics_skip_nan_clips():
    pred = torch.stack([_extrinsics(5, 7), _extrinsics(5, 8, move=False), _extrinsics(5, 9)])
    gt = torch.stack([_extrinsics(5, 10), _extrinsics(5, 11), _extrinsics(5, 12)])
    metric = PoseMetrics()
    with pytest.warns(RuntimeWarning, match="static camera centres"):
        metric.update(pred, gt)
    result = metric.compute()
    assert metric.skipped.item() == 1 and metric.count.item() == 2
    for key in POSE_KEYS:
        expected = (pose_errors(pred[0], gt[0])[key] + pose_errors(pred[2], gt[2])[key]) / 2
        torch.testing.assert_close(result[key], expected)
    assert metric.auc_pairs.item() == 3 * 10  # the AUC needs no alignment: the static clip counts


# --------------------------------------------------------------------------------------------------- AUC


def _vggt_auc(pred: np.ndarray, gt: np.ndarray, max_threshold: int) -> float:
    """VGGT test_co3d.py transcribed to NumPy/SciPy: pairs i < j, quaternion angle, eps-normalised t."""
    def hom(E):
        return np.concatenate([E, np.broadcast_to([0.0, 0, 0, 1], (len(E), 1, 4))], 1)

    r_err, t_err = [], []
    for pred_c, gt_c in zip(pred, gt):
        P, G = hom(pred_c), hom(gt_c)
        for i in range(len(P)):
            for j in range(i + 1, len(P)):
                rel_p, rel_g = P[i] @ np.linalg.inv(P[j]), G[i] @ np.linalg.inv(G[j])
                q_p = Rotation.from_matrix(rel_p[:3, :3]).as_quat()
                q_g = Rotation.from_matrix(rel_g[:3, :3]).as_quat()
                loss_q = max(1 - np.dot(q_p, q_g) ** 2, 1e-15)
                r_err.append(np.degrees(np.arccos(1 - 2 * loss_q)))
                t_p = rel_p[:3, 3] / (np.linalg.norm(rel_p[:3, 3]) + 1e-15)
                t_g = rel_g[:3, 3] / (np.linalg.norm(rel_g[:3, 3]) + 1e-15)
                loss_t = max(1 - np.dot(t_p, t_g) ** 2, 1e-15)
                t_err.append(np.degrees(np.arccos(np.sqrt(1 - loss_t))))
    errors = np.maximum(r_err, t_err)
    histogram, _ = np.histogram(errors, bins=np.arange(max_threshold + 1))
    return float(np.mean(np.cumsum(histogram / len(errors))))


@pytest.mark.parametrize("max_threshold", [30, 5])
def test_auc_matches_vggt_protocol(max_threshold):
    gt = torch.stack([_extrinsics(6, s) for s in (20, 21)])
    g = _gen(22)
    identity = torch.tensor([0.0, 0, 0, 1], dtype=F64)
    noise = quat_to_rotmat(identity + 0.03 * torch.randn(2, 6, 4, generator=g, dtype=F64))
    pred = torch.cat([noise @ gt[..., :3], gt[..., 3:] + 0.05 * torch.randn(2, 6, 3, 1, generator=g, dtype=F64)], -1)
    out = pose_auc(pred, gt, max_threshold=max_threshold)
    assert out["pairs"].tolist() == [15.0, 15.0]
    for b in range(2):
        expected = _vggt_auc(pred[b : b + 1].numpy(), gt[b : b + 1].numpy(), max_threshold)
        assert out[f"auc_{max_threshold}"][b].item() == pytest.approx(expected, rel=1e-12)
    pooled = (out["histogram"].sum(0) / 30).cumsum(0).mean().item()  # PoseMetrics pools pairs like VGGT
    assert pooled == pytest.approx(_vggt_auc(pred.numpy(), gt.numpy(), max_threshold), rel=1e-12)
    assert 0.0 < pooled < 1.0


def _two_frames(theta_deg: float, t_gt=(1.0, 0.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """GT: E0 = I, E1 = [I | t_gt]; pred: E1 = [Rz(theta) | (1, 0, 0)]: both pair errors equal theta."""
    th = math.radians(theta_deg)
    Rz = torch.tensor([[math.cos(th), -math.sin(th), 0], [math.sin(th), math.cos(th), 0], [0, 0, 1]], dtype=F64)
    eye = torch.cat([torch.eye(3, dtype=F64), torch.zeros(3, 1, dtype=F64)], -1)
    gt = torch.stack([eye, torch.cat([torch.eye(3, dtype=F64), torch.tensor(t_gt, dtype=F64)[:, None]], -1)])
    pred = torch.stack([eye, torch.cat([Rz, torch.tensor([[1.0], [0], [0]], dtype=F64)], -1)])
    return pred, gt


def test_auc_hand_computed():
    pred, gt = _two_frames(10.5)
    rot, trans = relative_pose_angle_errors(pred, gt)
    assert rot.item() == pytest.approx(10.5, rel=1e-12) and trans.item() == pytest.approx(10.5, rel=1e-12)
    assert pose_auc(pred, gt)["auc_30"].item() == pytest.approx(20 / 30)  # bins 10..29 of 30 reach 1
    assert pose_auc(*_two_frames(2.5), max_threshold=5)["auc_5"].item() == pytest.approx(3 / 5)
    assert pose_auc(*_two_frames(0.0))["auc_30"].item() == pytest.approx(1.0)
    assert pose_auc(*_two_frames(45.0))["auc_30"].item() == 0.0
    # GT pure rotation: zero translation direction is 90 degrees off (VGGT's eps normalisation)
    assert relative_pose_angle_errors(*_two_frames(1.0, t_gt=(0.0, 0.0, 0.0)))[1].item() == pytest.approx(90.0)


def test_auc_and_pose_bad_input():
    pred, gt = _two_frames(1.0)
    with pytest.raises(ValueError, match="max_threshold: expected a positive int"):
        pose_auc(pred, gt, max_threshold=0)
    with pytest.raises(ValueError, match="S >= 2"):
        pose_auc(pred[:1], gt[:1])
    with pytest.raises(ValueError, match=r"gt_extrinsics: expected \(\.\.\., 3, 4\) or \(\.\.\., 4, 4\), got \(2, 3\)"):
        pose_auc(pred, gt[..., 0])
    with pytest.raises(ValueError, match="auc_threshold"):
        PoseMetrics(auc_threshold=-3)
