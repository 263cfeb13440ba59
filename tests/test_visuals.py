"""Image / point-cloud logging: colourisation, patch-mask upsampling, point subsampling, TensorBoard events."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing import event_accumulator

from datamodules import SyntheticDataModule
from page4d_lightning.callbacks import VisualLogger
from page4d_lightning.module import Page4DModule
from page4d_lightning.visuals import (
    clip_grid,
    colorize_confidence,
    colorize_depth,
    colorize_mask,
    point_cloud,
    robust_range,
    upsample_patch_mask,
)

VIRIDIS_LOW, VIRIDIS_HIGH = (68, 1, 84), (253, 231, 37)


def test_robust_range_matches_numpy_percentiles() -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.rand(5, 7, 9, generator=g) * 10
    valid = torch.rand(5, 7, 9, generator=g) > 0.3
    lo, hi = robust_range(values, valid, (2.0, 98.0))
    ref = np.percentile(values[valid].numpy(), [2.0, 98.0])
    assert (lo, hi) == pytest.approx(tuple(ref), rel=1e-5)
    assert robust_range(values, torch.zeros_like(valid)) == (0.0, 1.0), "no valid value: a safe default range"


def test_colorize_depth_inverse_range_and_invalid_black() -> None:
    depth = torch.linspace(1.0, 4.0, 2 * 3 * 4).reshape(2, 3, 4)
    depth[0, 0, 1] = 0.0  # invalid: no depth
    depth[0, 0, 2] = float("nan")
    valid = torch.ones(2, 3, 4, dtype=torch.bool)
    valid[1, 2, 3] = False
    rgb = colorize_depth(depth, valid, value_range=(1.0, 4.0))
    assert rgb.shape == (2, 3, 4, 3) and rgb.dtype == torch.uint8
    for s, y, x in [(0, 0, 1), (0, 0, 2), (1, 2, 3)]:
        assert rgb[s, y, x].tolist() == [0, 0, 0], (s, y, x)
    assert rgb[0, 0, 0].tolist() == list(VIRIDIS_HIGH), "nearest depth (range start) is the brightest colour"
    far = colorize_depth(torch.tensor([4.0, 10.0]), value_range=(1.0, 4.0))
    assert far.tolist() == [list(VIRIDIS_LOW)] * 2, "the far end and beyond clamp to the darkest colour"
    valid_px = (depth > 0) & valid
    assert (rgb[valid_px].sum(-1) > 0).all(), "no valid pixel is black"
    linear = colorize_depth(torch.tensor([1.0, 4.0]), value_range=(1.0, 4.0), inverse=False)
    assert linear.tolist() == [list(VIRIDIS_LOW), list(VIRIDIS_HIGH)]


def test_colorize_depth_default_range_is_robust_to_outliers() -> None:
    depth = torch.full((1, 10, 10), 2.0)
    depth[0, :5] = 1.0
    depth[0, 9, 9] = 1e6  # one outlier must not flatten the rest of the image
    rgb = colorize_depth(depth)
    assert rgb[0, 0, 0].tolist() == list(VIRIDIS_HIGH) and rgb[0, 6, 0].tolist() == list(VIRIDIS_LOW)


def test_confidence_and_mask_colours() -> None:
    conf = 1.0 + torch.arange(12.0).reshape(3, 4).exp()
    rgb = colorize_confidence(conf)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == torch.uint8
    brightness = rgb.float().sum(-1).flatten()
    assert (brightness[1:] >= brightness[:-1]).all(), "higher confidence is never darker"
    mask = colorize_mask(torch.tensor([[True, False]]))
    assert mask.tolist() == [[[255, 255, 255], [0, 0, 0]]]
    assert colorize_mask(torch.tensor([0.5]))[0].tolist() == [128, 128, 128]


def test_upsampled_patch_mask_equals_its_patch_value_on_every_pixel() -> None:
    g = torch.Generator().manual_seed(1)
    patches = torch.rand(2, 3, 4, 5, generator=g)
    up = upsample_patch_mask(patches, 56, 70)
    assert up.shape == (2, 3, 56, 70)
    ys, xs = torch.arange(56) // 14, torch.arange(70) // 14
    reference = patches[:, :, ys[:, None], xs[None, :]]  # explicit pixel -> patch lookup
    assert torch.equal(up, reference)
    with pytest.raises(ValueError, match="mask: expected"):
        upsample_patch_mask(patches, 56, 56)


def test_point_cloud_keeps_the_most_confident_and_at_most_n() -> None:
    S, H, W = 2, 6, 8
    n = S * H * W
    g = torch.Generator().manual_seed(2)
    conf = torch.randperm(n, generator=g).float().reshape(S, H, W) + 1.0  # distinct confidences
    points = torch.stack([torch.arange(n).float(), torch.ones(n), 2 * torch.ones(n)], -1).reshape(S, H, W, 3)
    images = torch.rand(S, 3, H, W, generator=g)

    vertices, colors = point_cloud(points, images, conf, max_points=n, keep_fraction=0.5, opengl_axes=False)
    kept = vertices[0, :, 0].long()  # x encodes the flat pixel index
    expected = torch.nonzero(conf.reshape(-1) >= conf.median() + 0.5).flatten()  # the top half (n is even)
    assert torch.equal(kept.sort().values, expected)
    flat_rgb = (images.permute(0, 2, 3, 1).reshape(-1, 3) * 255).round().to(torch.uint8)
    assert colors.dtype == torch.uint8 and torch.equal(colors[0], flat_rgb[kept]), "each point keeps its pixel colour"

    vertices, colors = point_cloud(points, images, conf, max_points=7, keep_fraction=0.5)
    assert vertices.shape == (1, 7, 3) and colors.shape == (1, 7, 3)
    kept = vertices[0, :, 0].long()
    assert (conf.reshape(-1)[kept] > conf.median()).all()
    assert torch.equal(vertices[0, :, 1:], torch.tensor([-1.0, -2.0]).expand(7, 2)), "OpenCV -> OpenGL flips y, z"

    points[0, 0, 0, 2] = float("inf")
    all_points, _ = point_cloud(points, images, None, max_points=10 * n)
    assert all_points.shape == (1, n - 1, 3), "without confidence every finite point is kept"
    with pytest.raises(ValueError, match="images: expected"):
        point_cloud(points, images[:1], conf)


def _batch_and_predictions(S: int, with_gt_mask: bool) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(3)
    H, W = 28, 42
    batch = {
        "images": torch.rand(1, S, 3, H, W, generator=g),
        "depths": torch.rand(1, S, H, W, generator=g) + 0.5,
        "point_masks": torch.ones(1, S, H, W, dtype=torch.bool),
    }
    if with_gt_mask:
        batch["dynamic_masks"] = torch.rand(1, S, H, W, generator=g) > 0.5
    predictions = {
        "depth": torch.rand(1, S, H, W, 1, generator=g) + 0.5,
        "depth_conf": 1.0 + torch.rand(1, S, H, W, generator=g),
        "dynamic_mask": torch.rand(1, S, 2, 3, generator=g),
    }
    return batch, predictions


def test_clip_grid_layout() -> None:
    batch, predictions = _batch_and_predictions(S=5, with_gt_mask=True)
    grid, columns = clip_grid(batch, predictions, max_frames=3)
    assert columns == ["rgb", "gt_depth", "pred_depth", "depth_conf", "pred_dynamic", "gt_dynamic"]
    assert grid.shape == (3 * 28, 6 * 42, 3) and grid.dtype == torch.uint8
    frames = [0, 2, 4]  # evenly spread, first and last included
    for row, s in enumerate(frames):
        cell = grid[row * 28 : (row + 1) * 28]
        rgb = (batch["images"][0, s].permute(1, 2, 0) * 255).round().to(torch.uint8)
        assert torch.equal(cell[:, :42], rgb)
        assert torch.equal(cell[:, 5 * 42 :, 0], batch["dynamic_masks"][0, s].to(torch.uint8) * 255)

    batch, predictions = _batch_and_predictions(S=2, with_gt_mask=False)
    grid, columns = clip_grid(batch, predictions, max_frames=4)
    assert columns[-1] == "pred_dynamic_overlay" and grid.shape == (2 * 28, 6 * 42, 3)


def test_visual_logger_forward_is_eval_one_clip_and_restores_modes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = Page4DModule(preset="tiny")
    module.model.train()
    frozen = next(m for m in module.model.modules() if len(list(m.children())) == 0)
    frozen.eval()  # a submodule kept in eval on purpose must stay so
    seen: list[tuple[bool, tuple[int, ...]]] = []
    module.model.register_forward_pre_hook(lambda m, args: seen.append((m.training, tuple(args[0].shape))))
    trainer = L.Trainer(accelerator="cpu", logger=TensorBoardLogger(tmp_path), enable_progress_bar=False)
    batch, _ = _batch_and_predictions(S=2, with_gt_mask=True)
    batch["images"] = torch.cat([batch["images"], batch["images"]])  # B = 2: only the first clip is run
    VisualLogger(every_n_steps=1).log_clip(trainer, module, batch, "train")
    assert seen == [(False, (1, 2, 3, 28, 42))]
    assert module.model.training and not frozen.training


def _tags(log_dir: Path) -> event_accumulator.EventAccumulator:
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_training_writes_image_and_mesh_events(tmp_path: Path) -> None:
    L.seed_everything(0)
    data = SyntheticDataModule(num_frames=2, image_size=28, train={"num_clips": 2}, val={"num_clips": 1})
    tb = TensorBoardLogger(tmp_path, name="tb")
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=tb, enable_checkpointing=False, enable_progress_bar=False,
        num_sanity_val_steps=0, callbacks=[VisualLogger(every_n_steps=1, max_points=50)],
    )
    trainer.fit(Page4DModule(preset="tiny"), datamodule=data)
    acc = _tags(Path(tb.log_dir))
    assert {"train/visuals", "val/visuals"} <= set(acc.Tags()["images"])
    assert [e.step for e in acc.Images("train/visuals")] == [1, 2]
    assert {"train/point_cloud_VERTEX", "train/point_cloud_COLOR", "val/point_cloud_VERTEX"} <= set(
        acc.Tags()["tensors"]
    )
    vertex = acc.Tensors("train/point_cloud_VERTEX")[-1].tensor_proto
    assert [d.size for d in vertex.tensor_shape.dim] == [1, 50, 3]


def test_without_tensorboard_it_warns_once_and_training_goes_on(tmp_path: Path) -> None:
    data = SyntheticDataModule(num_frames=2, image_size=28, train={"num_clips": 2})
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        default_root_dir=tmp_path, limit_val_batches=0, callbacks=[VisualLogger(every_n_steps=1)],
    )
    with pytest.warns(UserWarning, match="needs a TensorBoardLogger") as record:
        trainer.fit(Page4DModule(preset="tiny"), datamodule=data)
    assert sum("TensorBoardLogger" in str(w.message) for w in record) == 1
    assert trainer.global_step == 2


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="every_n_steps"):
        VisualLogger(every_n_steps=0)
