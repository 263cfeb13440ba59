"""MultitaskLoss: official term names, weighting, masking and robustness, on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from page4d_lightning.geometry import extri_intri_to_pose_encoding
from page4d_lightning.losses import (
    MultitaskLoss,
    camera_loss,
    filter_by_quantile,
    gradient_loss,
    normal_loss,
    regression_loss,
)

B, S, H, W = 2, 3, 14, 28


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    extrinsics = torch.zeros(B, S, 3, 4)
    extrinsics[..., :3, :3] = torch.eye(3)
    extrinsics[..., :3, 3] = torch.randn(B, S, 3, generator=g)
    intrinsics = torch.tensor([[20.0, 0, W / 2], [0, 20.0, H / 2], [0, 0, 1]]).expand(B, S, 3, 3).clone()
    depths = 1 + torch.rand(B, S, H, W, generator=g)
    return {
        "images": torch.rand(B, S, 3, H, W, generator=g),
        "extrinsics": extrinsics,
        "intrinsics": intrinsics,
        "depths": depths,
        "world_points": torch.randn(B, S, H, W, 3, generator=g),
        "point_masks": torch.ones(B, S, H, W, dtype=torch.bool),
        "abandon_pose": torch.zeros(B, dtype=torch.bool),
        "abandon_geometry": torch.zeros(B, dtype=torch.bool),
    }


def _perfect_predictions(batch: dict[str, torch.Tensor]) -> dict[str, object]:
    enc = extri_intri_to_pose_encoding(batch["extrinsics"], batch["intrinsics"], (H, W))
    return {
        "pose_enc": enc,
        "pose_enc_list": [enc.clone() for _ in range(4)],
        "depth": batch["depths"][..., None].clone(),
        "depth_conf": torch.ones(B, S, H, W),
        "world_points": batch["world_points"].clone(),
        "world_points_conf": torch.ones(B, S, H, W),
    }


def test_perfect_prediction_gives_zero_regression_terms() -> None:
    batch = _batch()
    terms = MultitaskLoss(
        camera={"weight": 5.0},
        depth={"weight": 1.0, "gradient_loss_fn": "grad"},
        point={"weight": 1.0, "gradient_loss_fn": "normal"},
    )(_perfect_predictions(batch), batch)
    for name in (
        "loss_camera",
        "loss_T",
        "loss_R",
        "loss_FL",
        "loss_reg_depth",
        "loss_grad_depth",
        "loss_reg_point",
        "loss_grad_point",
    ):
        assert terms[name].abs().item() < 1e-5, name
    # conf = 1 -> conf term = gamma * 0 * 1 - alpha * log(1) = 0
    assert terms["loss_conf_depth"].abs().item() < 1e-6
    assert set(terms) >= {"objective", "loss_conf_depth", "loss_conf_point"}


def test_camera_loss_stage_weights_and_components() -> None:
    batch = _batch()
    preds = _perfect_predictions(batch)
    # stage i gets an offset of (i + 1) on translation only: L_T_i = i + 1 (l1 mean)
    preds["pose_enc_list"] = [p.clone() for p in preds["pose_enc_list"]]
    for i, p in enumerate(preds["pose_enc_list"]):
        p[..., :3] += i + 1
    out = camera_loss(preds, batch, gamma=0.6, weight_trans=1.0, weight_rot=1.0, weight_focal=0.5)
    expected = sum(0.6 ** (3 - i) * (i + 1) for i in range(4)) / 4
    assert out["loss_T"].item() == pytest.approx(expected, rel=1e-5)
    assert out["loss_camera"].item() == pytest.approx(expected, rel=1e-5)
    assert out["loss_R"].item() == pytest.approx(0.0, abs=1e-6)


def test_camera_loss_translation_clamped_and_abandon_pose() -> None:
    batch = _batch()
    preds = _perfect_predictions(batch)
    preds["pose_enc_list"] = [p.clone() for p in preds["pose_enc_list"]]
    for p in preds["pose_enc_list"]:
        p[0, ..., :3] += 1000.0  # clip 0 is wildly off: clamped at 100 per element
    out = camera_loss(preds, batch)
    assert out["loss_T"].item() == pytest.approx(100 / 2 * sum(0.6**k for k in range(4)) / 4, rel=1e-5)
    batch["abandon_pose"] = torch.tensor([True, False])
    assert camera_loss(preds, batch)["loss_T"].item() == pytest.approx(0.0, abs=1e-5)
    # a first frame with <= 100 valid pixels also removes the clip
    batch["abandon_pose"][:] = False
    batch["point_masks"][0, 0] = False
    assert camera_loss(preds, batch)["loss_T"].item() == pytest.approx(0.0, abs=1e-5)


def test_regression_loss_hand_computed() -> None:
    pred = torch.zeros(1, 1, 2, 2, 1)
    gt = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2, 1)
    mask = torch.tensor([[True, True], [True, False]]).reshape(1, 1, 2, 2)
    conf = torch.full((1, 1, 2, 2), 2.0)
    loss_conf, loss_grad, loss_reg = regression_loss(pred, gt, mask, conf, None, gamma=0.3, alpha=0.06)
    assert loss_reg.item() == pytest.approx(2.0)  # mean of 1, 2, 3
    assert loss_conf.item() == pytest.approx(0.3 * 2.0 * 2.0 - 0.06 * math.log(2.0))
    assert loss_grad.item() == 0.0


def test_gradient_loss_hand_computed() -> None:
    pred = torch.tensor([[0.0, 1.0], [0.0, 0.0]]).reshape(1, 2, 2, 1)
    gt = torch.zeros_like(pred)
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    # residual 1 at (0,1): |x-diff| = 1 on row 0, |y-diff| = 1 on column 1 -> (1 + 1) / 4 pixels
    assert gradient_loss(pred, gt, mask).item() == pytest.approx(0.5)


def test_normal_loss_zero_for_same_surface_and_positive_for_tilted() -> None:
    v, u = torch.meshgrid(torch.arange(6.0), torch.arange(6.0), indexing="ij")
    plane = torch.stack([u, v, torch.ones_like(u)], dim=-1)[None]
    tilted = torch.stack([u, v, 1 + 0.5 * u], dim=-1)[None]
    mask = torch.ones(1, 6, 6, dtype=torch.bool)
    assert normal_loss(plane, plane, mask).item() == pytest.approx(0.0, abs=1e-6)
    expected = 1 - 1 / math.sqrt(1 + 0.25)  # 1 - cos of the angle between the two normals
    assert normal_loss(tilted, plane, mask).item() == pytest.approx(expected, rel=1e-5)


def test_quantile_filter_drops_the_top_values() -> None:
    t = torch.arange(2000.0) / 100.0  # 0 .. 19.99
    kept = filter_by_quantile(t, 0.98)
    assert kept.max().item() < torch.quantile(t, 0.98).item() + 1e-6
    assert kept.numel() == pytest.approx(0.98 * 2000, abs=2)
    assert torch.equal(filter_by_quantile(t[:500], 0.98), t[:500])  # too few values: unchanged


def test_non_finite_ground_truth_is_zeroed_and_abandon_geometry_zeroes_depth() -> None:
    batch = _batch()
    preds = _perfect_predictions(batch)
    batch["depths"][0, 0, 0, 0] = float("nan")
    terms = MultitaskLoss(camera={"weight": 1.0}, depth={"weight": 1.0}, point={"weight": 1.0})(preds, batch)
    assert torch.isfinite(terms["objective"])
    batch["abandon_geometry"] = torch.tensor([False, True])
    terms = MultitaskLoss(camera={"weight": 1.0}, depth={"weight": 1.0}, point={"weight": 1.0})(preds, batch)
    assert terms["loss_reg_depth"].item() == 0.0 and terms["loss_reg_point"].item() == 0.0


def test_objective_is_the_weighted_sum_and_backpropagates() -> None:
    batch = _batch()
    preds = _perfect_predictions(batch)
    preds["depth"] = (preds["depth"] + 0.1).requires_grad_(True)
    loss = MultitaskLoss(
        camera={"weight": 5.0},
        depth={"weight": 2.0, "gradient_loss_fn": "grad"},
        point={"weight": 1.0, "gradient_loss_fn": "normal"},
    )
    terms = loss(preds, batch)
    expected = (
        5.0 * terms["loss_camera"]
        + 2.0 * (terms["loss_conf_depth"] + terms["loss_reg_depth"] + terms["loss_grad_depth"])
        + terms["loss_conf_point"]
        + terms["loss_reg_point"]
        + terms["loss_grad_point"]
    )
    assert terms["objective"].item() == pytest.approx(expected.item(), rel=1e-6)
    terms["objective"].backward()
    assert preds["depth"].grad is not None and preds["depth"].grad.abs().sum() > 0


def test_no_active_term_is_an_error() -> None:
    with pytest.raises(ValueError, match="no active loss term"):
        MultitaskLoss(camera={"weight": 0.0})(_perfect_predictions(_batch()), _batch())


@pytest.mark.parametrize(("task", "block", "typo"), [
    ("depth", {"weight": 1.0, "gama": 0.3}, "gama"),
    ("camera", {"weight": 5.0, "loss_typ": "l1"}, "loss_typ"),
    ("point", {"weight": 1.0, "gradient_loss": "normal"}, "gradient_loss"),
    ("track", {"wieght": 1.0}, "wieght"),
])
def test_a_misspelled_loss_key_is_named(task: str, block: dict, typo: str) -> None:
    with pytest.raises(ValueError, match=rf"loss\.{task}: unknown key\(s\) \['{typo}'\]"):
        MultitaskLoss(**{task: block})
