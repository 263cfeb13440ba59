"""Official depth protocols: the LAD "scale" fit and the Adam "scale_shift" fit against straight transcriptions
of PAGE-4D's `video_depth/tools.py` (float64), protocol presets, dynamic/static split."""

import math
import warnings

import numpy as np
import pytest
import torch

from page4d_lightning.metrics import DepthMetrics
from page4d_lightning.metrics.functional import DEPTH_KEYS, DEPTH_PROTOCOLS, depth_errors, depth_protocol

F64 = torch.float64


def _clip(seed: int, S: int = 2, H: int = 6, W: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """GT in (0, 90) with holes (some >= 70: invalid under max_depth 70); pred ~ 1.7 gt + noise + outliers."""
    g = torch.Generator().manual_seed(seed)
    gt = 0.5 + 89.5 * torch.rand(S, H, W, generator=g, dtype=F64) ** 2
    gt = gt * (torch.rand(S, H, W, generator=g, dtype=F64) > 0.2)
    pred = 1.7 * gt + 0.5 + torch.rand(S, H, W, generator=g, dtype=F64)
    pred = torch.where(torch.rand(S, H, W, generator=g, dtype=F64) < 0.1, torch.full_like(pred, 300.0), pred)
    return pred, gt


def _metrics_np(p: np.ndarray, g: np.ndarray) -> dict[str, float]:
    """The official metric block of `depth_evaluation` on the masked 1-D arrays."""
    out = {"abs_rel": np.mean(np.abs(p - g) / g), "sq_rel": np.mean((p - g) ** 2 / g),
           "rmse": np.sqrt(np.mean((p - g) ** 2))}
    p = np.maximum(p, 1e-5)
    out["log_rmse"] = np.sqrt(np.mean((np.log(p) - np.log(g)) ** 2))
    ratio = np.maximum(p / g, g / p)
    for key, thr in (("delta_1_25", 1.25), ("delta_1_25_sq", 1.25**2), ("delta_1_25_cu", 1.25**3)):
        out[key] = np.mean(ratio < thr)
    return out


def _official_scale(pred, gt, max_depth, clip) -> dict[str, float]:
    """`align_with_scale`: IRLS from mean(gt) / mean(pred), 10 steps, s >= 1e-3, then post-clip."""
    mask = (gt > 0) & (gt < max_depth)
    p, g = pred.numpy()[mask.numpy()], gt.numpy()[mask.numpy()]
    s = np.mean(g) / np.mean(p)
    for _ in range(10):
        w = 1.0 / (np.abs(s * p - g) + 1e-8)
        s = np.sum(w * p * g) / np.sum(w * p**2)
    return _metrics_np(np.minimum(max(s, 1e-3) * p, clip), g)


def _official_lad2(pred, gt, max_depth) -> dict[str, float]:
    """`align_with_lad2` + `absolute_value_scaling2`: torch.optim.Adam on sum |s p + t - g| (here float64)."""
    mask = (gt > 0) & (gt < max_depth)
    p, g = pred[mask].clone(), gt[mask]
    p[p < 1e-5] = 0
    s_init = (torch.median(g) / torch.median(p)).item()
    if int(mask.sum()) < 10:
        s, t = s_init, 0.0
    else:
        s_p = torch.tensor([s_init], dtype=F64, requires_grad=True)
        t_p = torch.tensor([0.0], dtype=F64, requires_grad=True)
        optimizer = torch.optim.Adam([s_p, t_p], lr=1e-4)
        prev_loss = None
        for _ in range(1000):
            optimizer.zero_grad()
            loss = torch.sum(torch.abs(s_p * p + t_p - g))
            loss.backward()
            optimizer.step()
            if prev_loss is not None and torch.abs(prev_loss - loss) < 1e-6:
                break
            prev_loss = loss.item()
        s, t = s_p.item(), t_p.item()
    return _metrics_np((s * p + t).numpy(), g.numpy())


@pytest.mark.parametrize("seed", [0, 1])
def test_scale_is_official_lad_fit(seed):
    pred, gt = _clip(seed)
    ours = depth_errors(pred, gt, align="scale", per="sequence", max_depth=70.0, clip_pred=70.0)
    expected = _official_scale(pred, gt, 70.0, 70.0)
    for key in DEPTH_KEYS:
        assert ours[key].item() == pytest.approx(expected[key], rel=1e-9), key
    assert ours["valid_pixels"].item() == int(((gt > 0) & (gt < 70)).sum())
    # robust: the 10 % outliers barely move the LAD scale, unlike least squares
    lstsq = depth_errors(pred, gt, align="scale_lstsq", per="sequence", max_depth=70.0)
    assert ours["delta_1_25"].item() > 0.8 > 0.1 > lstsq["delta_1_25"].item()


def test_scale_is_deterministic_and_order_free_on_small_clips():
    pred, gt = _clip(2, S=3, H=10, W=12)
    first = depth_errors(pred, gt, align="scale", per="sequence", max_depth=70.0)
    again = depth_errors(pred, gt, align="scale", per="sequence", max_depth=70.0)
    perm = torch.randperm(pred.numel(), generator=torch.Generator().manual_seed(3))
    shuffled = depth_errors(pred.flatten()[perm].view_as(pred), gt.flatten()[perm].view_as(gt), align="scale",
                            per="sequence", max_depth=70.0)
    for key in DEPTH_KEYS:
        assert first[key].item() == again[key].item(), key  # bitwise
        # float64, small clip: order-free to 1e-12 (large clips drift ~1e-5: see `_align_depth`)
        assert shuffled[key].item() == pytest.approx(first[key].item(), rel=1e-12), key


@pytest.mark.parametrize(("seed", "size"), [(4, (2, 6, 8)), (5, (1, 3, 3))])  # the second: < 10 valid pixels
def test_scale_shift_is_official_adam_lad(seed, size):
    pred, gt = _clip(seed, *size)
    pred.view(-1)[:3] = 1e-6  # below 1e-5: the official fit zeroes them
    ours = depth_errors(pred, gt, align="scale_shift", per="sequence", max_depth=70.0)
    expected = _official_lad2(pred, gt, 70.0)
    for key in DEPTH_KEYS:
        assert ours[key].item() == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key


def test_batched_scale_fits_equal_per_clip():
    clips = [_clip(s) for s in (6, 7)]
    pred, gt = torch.stack([c[0] for c in clips]), torch.stack([c[1] for c in clips])
    for align in ("scale", "scale_shift"):
        batched = depth_errors(pred, gt, align=align, per="sequence", max_depth=70.0)
        for b in range(2):
            single = depth_errors(pred[b], gt[b], align=align, per="sequence", max_depth=70.0)
            for key in DEPTH_KEYS:
                torch.testing.assert_close(batched[key][b], single[key], rtol=1e-12, atol=1e-12)


def test_protocol_presets():
    assert depth_protocol("video", "sintel") == {"align": "scale", "per": "sequence", "max_depth": 70.0,
                                                 "clip_pred": 70.0}
    assert depth_protocol("video", "bonn", align="scale_shift")["align"] == "scale_shift"
    assert depth_protocol("mono", "kitti") == {"align": "median", "per": "frame", "max_depth": None, "clip_pred": None}
    metric = DepthMetrics.video("bonn")
    assert (metric.align, metric.per, metric.max_depth, metric.clip_pred) == ("scale", "sequence", 70.0, None)
    metric = DepthMetrics.mono("sintel")
    assert (metric.align, metric.per, metric.max_depth, metric.clip_pred) == ("median", "frame", 70.0, 70.0)
    assert all(p["per"] == "sequence" for p in DEPTH_PROTOCOLS["video"].values())
    pred, gt = _clip(8)
    metric = DepthMetrics.video("sintel")
    metric.update(pred[None], gt[None])
    expected = _official_scale(pred, gt, 70.0, 70.0)
    assert metric.compute()["abs_rel"].item() == pytest.approx(expected["abs_rel"], rel=1e-9)
    with pytest.raises(ValueError, match="dataset: expected one of"):
        depth_protocol("video", "nyu")
    with pytest.raises(ValueError, match="kind: expected one of"):
        depth_protocol("stereo", "sintel")
    with pytest.raises(ValueError, match="align: expected one of"):
        DepthMetrics.mono("sintel", align="lad")


@pytest.mark.parametrize("per", ["frame", "sequence"])
def test_dynamic_static_split(per):
    pred, gt = _clip(9)
    dynamic = torch.rand(gt.shape, generator=torch.Generator().manual_seed(10)) > 0.6
    out = depth_errors(pred, gt, align="none", per=per, dynamic_masks=dynamic)
    for name, subset in (("dynamic", dynamic), ("static", ~dynamic)):
        alone = depth_errors(pred, gt * subset, align="none", per=per)
        for key in (*DEPTH_KEYS, "valid_pixels"):
            assert out[f"{key}_{name}"].item() == pytest.approx(alone[key].item(), rel=1e-12), (name, key)
    # with an alignment, both subsets share the whole-clip fit: linear metrics recombine exactly
    out = depth_errors(pred, gt, align="scale", per="sequence", dynamic_masks=dynamic)
    n, n_d, n_s = out["valid_pixels"], out["valid_pixels_dynamic"], out["valid_pixels_static"]
    assert n.item() == n_d.item() + n_s.item()
    for key in ("abs_rel", "sq_rel", "delta_1_25"):
        combined = (out[f"{key}_dynamic"] * n_d + out[f"{key}_static"] * n_s) / n
        assert combined.item() == pytest.approx(out[key].item(), rel=1e-12), key


def test_dynamic_metrics_class_and_empty_subset():
    pred, gt = _clip(11)
    none_dynamic = torch.zeros_like(gt, dtype=torch.bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # an empty dynamic subset is NaN without a warning
        out = depth_errors(pred, gt, dynamic_masks=none_dynamic)
    assert math.isnan(out["abs_rel_dynamic"].item()) and out["valid_pixels_dynamic"].item() == 0
    metric = DepthMetrics(align="median")
    metric.update(pred[None], gt[None])
    assert "abs_rel_dynamic" not in metric.compute()
    dynamic = torch.rand(gt.shape, generator=torch.Generator().manual_seed(12)) > 0.5
    metric.update(pred[None], gt[None], dynamic_masks=dynamic[None])
    result = metric.compute()
    single = depth_errors(pred, gt, dynamic_masks=dynamic)
    torch.testing.assert_close(result["abs_rel_dynamic"], single["abs_rel_dynamic"])  # only the masked clip
    torch.testing.assert_close(result["rmse_static"], single["rmse_static"])
    with pytest.raises(ValueError, match=r"dynamic_masks: expected the shape of pred \(2, 6, 8\), got \(2, 6\)"):
        depth_errors(pred, gt, dynamic_masks=dynamic[..., 0])
