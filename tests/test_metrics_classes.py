"""PoseMetrics / DepthMetrics: class values equal the functional averages; reset; merged (synced) states.

The real 2-process DDP sync of all four classes: test_metrics_ddp.py.
"""

import warnings

import pytest
import torch

from page4d_lightning.geometry import quat_to_rotmat
from page4d_lightning.metrics import DepthMetrics, PoseMetrics
from page4d_lightning.metrics.functional import DEPTH_KEYS, POSE_KEYS, depth_errors, pose_auc, pose_errors


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _extrinsics(B: int, S: int, seed: int) -> torch.Tensor:
    g = _gen(seed)
    R = quat_to_rotmat(torch.randn(B, S, 4, generator=g))
    return torch.cat([R, torch.randn(B, S, 3, 1, generator=g)], -1)


def _depths(B: int, S: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    gt = (0.5 + 4 * torch.rand(B, S, 5, 6, generator=g)) * (torch.rand(B, S, 5, 6, generator=g) > 0.3)
    pred = gt * (0.5 + torch.rand(B, S, 1, 1, generator=g)) + 0.3 * torch.rand(B, S, 5, 6, generator=g)
    return pred, gt


def test_pose_metrics_mean_over_clips_and_reset():
    metric = PoseMetrics()
    clips = [(_extrinsics(2, 5, s), _extrinsics(2, 5, s + 50)) for s in range(2)]
    for pred, gt in clips:
        metric.update(pred, gt)
    result = metric.compute()
    assert set(result) == {*POSE_KEYS, "auc_30"}
    for key in POSE_KEYS:
        per_clip = [pose_errors(p[b], g[b])[key] for p, g in clips for b in range(2)]
        torch.testing.assert_close(result[key], torch.stack(per_clip).mean())
    histogram = sum(pose_auc(p, g)["histogram"].sum(0) for p, g in clips)  # pairs pooled over clips
    torch.testing.assert_close(result["auc_30"], (histogram / (4 * 10)).cumsum(0).mean())
    assert metric.skipped.item() == 0
    metric.reset()
    assert metric.count.item() == 0
    pred, gt = clips[1]
    metric.update(pred[:1], gt[:1])
    torch.testing.assert_close(metric.compute()["ate"], pose_errors(pred[0], gt[0])["ate"])


def test_pose_metrics_merged_states_equal_single_process():
    clips = [(_extrinsics(2, 4, s), _extrinsics(2, 4, s + 70)) for s in range(2)]
    full, rank0, rank1 = PoseMetrics(), PoseMetrics(), PoseMetrics()
    for pred, gt in clips:
        full.update(pred, gt)
    rank0.update(*clips[0])
    rank1.update(*clips[1])
    rank0.merge_state(rank1)  # what a sum all-reduce does in DDP
    for key in (*POSE_KEYS, "auc_30"):
        torch.testing.assert_close(rank0.compute()[key], full.compute()[key])


@pytest.mark.parametrize(("align", "per"), [("median", "frame"), ("scale", "sequence")])
def test_depth_metrics_pixel_weighted_mean_and_reset(align, per):
    metric = DepthMetrics(align=align, per=per)
    batches = [_depths(2, 3, seed) for seed in (1, 2)]
    batches[1][1][1] = 0  # clip 1 of batch 1 has no valid GT: it adds nothing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for pred, gt in batches:
            metric.update(pred, gt)
        per_clip = [depth_errors(p[b], g[b], align=align, per=per) for p, g in batches for b in range(2)]
    result = metric.compute()
    assert set(result) == set(DEPTH_KEYS)
    weights = torch.stack([e["valid_pixels"] for e in per_clip])
    assert weights[-1] == 0 and metric.valid_pixels.item() == weights.sum().item()
    for key in DEPTH_KEYS:
        values = torch.stack([e[key] for e in per_clip])[:-1]
        expected = (values * weights[:-1]).sum() / weights.sum()
        torch.testing.assert_close(result[key], expected.to(result[key]))
    metric.reset()
    assert metric.valid_pixels.item() == 0
    pred, gt = batches[0]
    metric.update(pred[:1], gt[:1])
    single = depth_errors(pred[0], gt[0], align=align, per=per)
    torch.testing.assert_close(metric.compute()["abs_rel"], single["abs_rel"])


def test_depth_metrics_options_and_errors():
    pred, gt = _depths(1, 2, seed=3)
    metric = DepthMetrics(align="none", max_depth=2.0)
    metric.update(pred, gt)
    expected = depth_errors(pred[0], gt[0], align="none", max_depth=2.0)
    torch.testing.assert_close(metric.compute()["rmse"], expected["rmse"])
    with pytest.raises(ValueError, match="align: expected one of"):
        DepthMetrics(align="lad")
    with pytest.raises(ValueError, match=r"pred: expected \(B, S, H, W\), got \(2, 5, 6\)"):
        DepthMetrics().update(pred[0], gt[0])
