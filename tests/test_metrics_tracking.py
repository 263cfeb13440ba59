"""TAP-Vid tracking metrics: a hand-computed clip and a NumPy transcription of the reference definition."""

import math

import numpy as np
import pytest
import torch

from page4d_lightning.metrics import TrackingMetrics
from page4d_lightning.metrics.functional import TRACKING_KEYS, tracking_errors


def _hand_clip() -> tuple[torch.Tensor, ...]:
    """S=3, N=2 at 128x512 (raster scale: x 0.5, y 2); frame 0 is the query frame and holds garbage."""
    gt = torch.full((3, 2, 2), 50.0)
    gt[..., 0] = 100.0
    gt_vis = torch.tensor([[True, True], [True, True], [True, False]])
    pred = gt.clone()
    pred[0] = 1000.0
    pred[1, 0, 0] += 3.0  # raster distance 1.5
    pred[2, 0, 1] += 1.5  # raster distance 3.0
    pred[1, 1, 0] += 20.0  # raster distance 10
    pred_vis = torch.tensor([[False, False], [True, False], [True, True]])
    return pred, pred_vis, gt, gt_vis


def test_hand_computed():
    out = tracking_errors(*_hand_clip(), image_hw=(128, 512))
    expected = {
        "occlusion_accuracy": 2 / 4,
        "pts_within_1": 0.0, "pts_within_2": 1 / 3, "pts_within_4": 2 / 3, "pts_within_8": 2 / 3, "pts_within_16": 1.0,
        "jaccard_1": 0.0, "jaccard_2": 1 / 5, "jaccard_4": 2 / 4, "jaccard_8": 2 / 4, "jaccard_16": 2 / 4,
        "delta_avg": 8 / 15, "average_jaccard": 1.7 / 5,
    }
    assert set(out) == set(TRACKING_KEYS)
    for key, value in expected.items():
        assert out[key].item() == pytest.approx(value, rel=1e-12), key
    probabilities = tracking_errors(*_hand_clip()[:1], _hand_clip()[1].double() * 0.8 + 0.1, *_hand_clip()[2:],
                                    image_hw=(128, 512))  # 0.9 / 0.1 against the 0.5 threshold
    assert probabilities["average_jaccard"].item() == pytest.approx(1.7 / 5)


def _tapvid_np(pred, pred_vis, gt, gt_vis, hw, query_frame, mode) -> dict[str, float]:
    """The reference definition on (n, t) arrays, per video, in 256x256 raster coordinates."""
    scale = np.array([256.0 / hw[1], 256.0 / hw[0]])
    pred, gt = pred.transpose(1, 0, 2) * scale, gt.transpose(1, 0, 2) * scale  # (n, t, 2)
    occluded, pred_occluded = ~gt_vis.T, ~pred_vis.T
    t = occluded.shape[1]
    eye = np.eye(t, dtype=np.int32)
    table = np.cumsum(eye, axis=1) - eye if mode == "first" else 1 - eye
    evaluation = table[query_frame] > 0  # (n, t)
    out = {"occlusion_accuracy": np.sum((pred_occluded == occluded) & evaluation) / np.sum(evaluation)}
    visible, pred_visible = ~occluded, ~pred_occluded
    for thr in (1, 2, 4, 8, 16):
        within = np.sum((pred - gt) ** 2, -1) < thr**2
        correct = within & visible
        out[f"pts_within_{thr}"] = np.sum(correct & evaluation) / np.sum(visible & evaluation)
        fp = np.sum((((~visible) & pred_visible) | ((~within) & pred_visible)) & evaluation)
        out[f"jaccard_{thr}"] = np.sum(correct & pred_visible & evaluation) / (np.sum(visible & evaluation) + fp)
    out["delta_avg"] = np.mean([out[f"pts_within_{t}"] for t in (1, 2, 4, 8, 16)])
    out["average_jaccard"] = np.mean([out[f"jaccard_{t}"] for t in (1, 2, 4, 8, 16)])
    return out


def _random_clips(B: int, S: int, N: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(B, S, N, 2, generator=g, dtype=torch.float64) * torch.tensor([320.0, 96.0], dtype=torch.float64)
    pred = gt + 4.0 * torch.randn(B, S, N, 2, generator=g, dtype=torch.float64)
    gt_vis = torch.rand(B, S, N, generator=g) > 0.25
    pred_vis = torch.where(torch.rand(B, S, N, generator=g) > 0.2, gt_vis, ~gt_vis)
    return pred, pred_vis, gt, gt_vis


@pytest.mark.parametrize("mode", ["first", "strided"])
def test_matches_reference_definition(mode):
    pred, pred_vis, gt, gt_vis = _random_clips(2, 6, 9, seed=1)
    query = torch.randint(0, 3, (2, 9), generator=torch.Generator().manual_seed(2))
    out = tracking_errors(pred, pred_vis, gt, gt_vis, (96, 320), query_frame=query, query_mode=mode)
    for b in range(2):
        expected = _tapvid_np(pred[b].numpy(), pred_vis[b].numpy(), gt[b].numpy(), gt_vis[b].numpy(), (96, 320),
                              query[b].numpy(), mode)
        for key in TRACKING_KEYS:
            assert out[key][b].item() == pytest.approx(expected[key], rel=1e-12), (b, key)


def test_query_frame_and_masked_tracks_are_not_scored():
    pred, pred_vis, gt, gt_vis = _random_clips(1, 5, 6, seed=3)
    base = tracking_errors(pred, pred_vis, gt, gt_vis, (96, 320))
    pred[:, 0] += 500.0  # the query frame (0) is never evaluated
    pred_vis[:, 0] = ~pred_vis[:, 0]
    moved = tracking_errors(pred, pred_vis, gt, gt_vis, (96, 320))
    mask = torch.ones(1, 6, dtype=torch.bool)
    mask[0, 2] = False
    pred[:, 1:, 2] += 500.0  # a masked-out track may be anything
    masked = tracking_errors(pred, pred_vis, gt, gt_vis, (96, 320), track_mask=mask)
    keep = [0, 1, 3, 4, 5]
    subset = tracking_errors(pred[:, :, keep], pred_vis[:, :, keep], gt[:, :, keep], gt_vis[:, :, keep], (96, 320))
    for key in TRACKING_KEYS:
        assert moved[key].item() == base[key].item(), key
        assert masked[key].item() == pytest.approx(subset[key].item(), rel=1e-12), key


def test_no_visible_point_is_nan_and_metric_skips():
    pred, pred_vis, gt, gt_vis = _random_clips(2, 4, 5, seed=4)
    gt_vis[1, 1:] = False
    with pytest.warns(RuntimeWarning, match="without a GT-visible evaluation point"):
        out = tracking_errors(pred, pred_vis, gt, gt_vis, (96, 320))
    assert all(math.isnan(out[k][1].item()) for k in TRACKING_KEYS) and not math.isnan(out["delta_avg"][0].item())
    metric = TrackingMetrics()
    more = _random_clips(1, 4, 5, seed=5)
    with pytest.warns(RuntimeWarning, match="1 clip\\(s\\) without a GT-visible evaluation point"):
        metric.update(pred, pred_vis, gt, gt_vis, (96, 320))
    metric.update(*more, (96, 320))
    assert metric.count.item() == 2 and metric.skipped.item() == 1
    single = tracking_errors(*more, (96, 320))
    for key in TRACKING_KEYS:
        torch.testing.assert_close(metric.compute()[key], (out[key][0] + single[key][0]) / 2)


def test_bad_input():
    pred, pred_vis, gt, gt_vis = _random_clips(1, 4, 5, seed=6)
    with pytest.raises(ValueError, match=r"gt_tracks: expected the shape of pred_tracks \(1, 4, 5, 2\), got \(1, 4, 4"):
        tracking_errors(pred, pred_vis, gt[:, :, :4], gt_vis, (96, 320))
    with pytest.raises(ValueError, match=r"pred_vis: expected \(1, 4, 5\), got \(1, 4\)"):
        tracking_errors(pred, pred_vis[..., 0], gt, gt_vis, (96, 320))
    with pytest.raises(ValueError, match="image_hw: expected"):
        tracking_errors(pred, pred_vis, gt, gt_vis, (96, 0))
    with pytest.raises(ValueError, match=r"query_frame: expected values in \[0, 3\]"):
        tracking_errors(pred, pred_vis, gt, gt_vis, (96, 320), query_frame=4)
    with pytest.raises(ValueError, match=r"track_mask: expected \(1, 5\)"):
        tracking_errors(pred, pred_vis, gt, gt_vis, (96, 320), track_mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="query_mode"):
        TrackingMetrics(query_mode="last")
