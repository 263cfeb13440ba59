"""The pieces the CPU miniature adds: the `mini` preset and its "page4d" policy, pose recovered from point maps,
the uninformed pose baselines, dynamic-mask quality and supervision, a track head trained from scratch on top of
shipped weights, and the synthetic texture bands."""

from __future__ import annotations

import math

import pytest
import torch

from datamodules.synthetic import SyntheticDynamicDataset
from page4d_lightning.finetune import FINETUNE_PRESETS, FinetunePolicy, preset_for_blocks
from page4d_lightning.geometry import (
    cam_to_world_points,
    depth_to_cam_points,
    patch_fraction,
    pose_from_point_maps,
    se3_inverse,
)
from page4d_lightning.losses import MultitaskLoss, mask_loss
from page4d_lightning.metrics import DynamicMaskMetrics
from page4d_lightning.metrics.functional import (
    mask_confusion,
    mask_scores,
    mean_trajectory,
    pose_baselines,
    pose_errors,
)
from page4d_lightning.models import PAGE4D, PAGE4DConfig, load_weights


def random_extrinsics(g: torch.Generator, frames: int, first_identity: bool = False) -> torch.Tensor:
    """(frames, 3, 4) camera-from-world: random rotations (QR of a Gaussian, det +1) and translations."""
    q, r = torch.linalg.qr(torch.randn(frames, 3, 3, generator=g))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    q = torch.where(torch.linalg.det(q)[:, None, None] < 0, -q, q)
    extrinsics = torch.cat([q, torch.randn(frames, 3, 1, generator=g)], -1)
    if first_identity:
        extrinsics[0] = torch.eye(3, 4)
    return extrinsics


def test_mini_preset_keeps_the_official_block_roles() -> None:
    cfg = PAGE4DConfig.mini()
    assert (cfg.depth, cfg.embed_dim) == (8, 128)
    assert cfg.mask_head_after_block < min(cfg.bias_blocks) and max(cfg.bias_blocks) < cfg.depth
    assert len(cfg.intermediate_layer_idx) == 4 and cfg.intermediate_layer_idx[-1] == cfg.depth - 1


def test_page4d_policy_trains_the_middle_blocks_of_a_shallower_model() -> None:
    model = PAGE4D(PAGE4DConfig.mini())
    policy = FinetunePolicy.from_config("page4d", middle_blocks=model.config.bias_blocks)
    policy.freeze(model)
    trainable = {n.split(".")[1] + "." + n.split(".")[2] for n, p in model.named_parameters()
                 if p.requires_grad and n.startswith("aggregator.") and "_blocks." in n}
    expected = {f"{kind}.{i}" for kind in ("frame_blocks", "global_blocks") for i in (3, 4, 5, 6)}
    assert trainable == expected
    assert [g.name for g in policy.groups] == [g["name"] for g in FINETUNE_PRESETS["page4d"]["groups"]]
    assert any(p.requires_grad for n, p in model.named_parameters() if n.startswith("aggregator.spatial_mask_head"))
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith(("camera_head", "depth_head")))
    # the official model keeps the official globs, untouched
    assert preset_for_blocks("page4d", tuple(range(10, 20))) == FINETUNE_PRESETS["page4d"]


def test_pose_from_point_maps_recovers_the_cameras_up_to_the_map_scale() -> None:
    g = torch.Generator().manual_seed(0)
    extrinsics = random_extrinsics(g, 4)  # (4, 3, 4) camera-from-world
    depth = 1.0 + 3.0 * torch.rand(4, 14, 14, generator=g)
    K = torch.tensor([[20.0, 0, 7], [0, 20.0, 7], [0, 0, 1]]).expand(4, 3, 3)
    cam = depth_to_cam_points(depth, K)
    world = cam_to_world_points(cam, extrinsics)
    recovered = pose_from_point_maps(cam, world)
    torch.testing.assert_close(recovered, extrinsics, atol=1e-4, rtol=1e-4)
    # a point map in other units (x 2.5) gives the same rotations and centres scaled by 2.5
    scaled = pose_from_point_maps(cam, 2.5 * world)
    torch.testing.assert_close(scaled[..., :3], extrinsics[..., :3], atol=1e-4, rtol=1e-4)
    centres = se3_inverse(extrinsics)[..., 3]
    torch.testing.assert_close(se3_inverse(scaled)[..., 3], 2.5 * centres, atol=1e-4, rtol=1e-4)


def test_pose_baselines_floor_and_a_perfect_prediction() -> None:
    g = torch.Generator().manual_seed(1)
    clips = torch.stack([random_extrinsics(g, 4, first_identity=True) for _ in range(12)])
    base = pose_baselines(clips, clips, draws=4)
    assert set(base) == {"constant", "random_centres"}
    for figures in base.values():
        assert all(math.isfinite(v) and v > 0 for v in figures.values())
    # the constant baseline is exactly the errors of the mean trajectory, predicted for every clip
    mean = mean_trajectory(clips)
    expected = pose_errors(mean.expand(12, 4, 3, 4), clips.double())
    assert base["constant"]["rpe_rot"] == pytest.approx(float(expected["rpe_rot"].mean()))
    # the mean of identical trajectories is that trajectory
    torch.testing.assert_close(mean_trajectory(clips[:1].expand(5, 4, 3, 4)), clips[0].double(), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="train_extrinsics"):
        pose_baselines(clips, clips[:, :3])


def test_mask_scores_count_patches_by_their_majority() -> None:
    gt = torch.zeros(1, 1, 4, 6, dtype=torch.bool)  # patch size 2: a 2 x 3 patch grid
    gt[..., 0:2, 0:2] = True  # patch (0, 0) fully dynamic
    gt[..., 2:4, 2:4] = True  # patch (1, 1): all dynamic
    gt[..., 2:4, 0] = True  # patch (1, 0): half -> static (a patch is dynamic when more than half is)
    gt[..., 0, 4] = True  # patch (0, 2): a quarter -> static
    torch.testing.assert_close(patch_fraction(gt, 2)[0, 0], torch.tensor([[1.0, 0.0, 0.25], [0.5, 1.0, 0.0]]))
    pred = torch.tensor([[[[0.9, 0.7, 0.1], [0.2, 0.3, 0.1]]]])  # TP (0,0); FP (0,1); FN (1,1); TN (1,0)
    counts = mask_confusion(pred, gt, 2)
    assert counts.tolist() == [1, 1, 1]
    scores = mask_scores(counts)
    assert float(scores["mask_iou"]) == pytest.approx(1 / 3)
    assert float(scores["mask_precision"]) == pytest.approx(0.5)
    assert float(scores["mask_recall"]) == pytest.approx(0.5)
    # nothing dynamic anywhere: undefined, not a perfect 1 or a 0
    empty = mask_scores(mask_confusion(torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 4, 6, dtype=torch.bool), 2))
    assert all(math.isnan(float(v)) for v in empty.values())
    metric = DynamicMaskMetrics(patch_size=2)
    metric.update(pred, gt)
    metric.update(pred, gt)
    assert float(metric.compute()["mask_iou"]) == pytest.approx(1 / 3)


def test_mask_loss_is_low_for_the_gt_mask_and_names_a_wrong_grid() -> None:
    gt = torch.zeros(2, 3, 28, 28, dtype=torch.bool)
    gt[:, :, :14, :14] = True
    target = patch_fraction(gt, 14)
    batch = {"dynamic_masks": gt, "images": torch.zeros(2, 3, 3, 28, 28)}
    good = mask_loss({"dynamic_mask": target}, batch)["loss_mask"]
    bad = mask_loss({"dynamic_mask": 1 - target}, batch)["loss_mask"]
    assert float(good) < 1e-3 < 5.0 < float(bad)
    with pytest.raises(ValueError, match="not a patch grid"):
        mask_loss({"dynamic_mask": torch.zeros(2, 3, 3, 3)}, batch)
    with pytest.raises(ValueError, match="loss.mask"):
        MultitaskLoss(mask={"weight": 1.0, "gama": 2})


def test_weights_without_a_track_head_load_with_a_fresh_one(tmp_path) -> None:
    from safetensors.torch import save_file

    trunk = PAGE4D(PAGE4DConfig.tiny(enable_track=False))
    path = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, path)
    model = PAGE4D(PAGE4DConfig.tiny(enable_track=True))
    with pytest.raises(ValueError, match="track_head_from='init'"):
        load_weights(model, path)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("track_head.")}
    report = load_weights(model, path, track_head_from="init")
    assert all(k in report.initialised for k in before)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    torch.testing.assert_close(after["aggregator.camera_token"], trunk.state_dict()["aggregator.camera_token"])


def test_synthetic_texture_bands() -> None:
    default = SyntheticDynamicDataset(num_frames=2, image_size=56, num_clips=2)
    explicit = SyntheticDynamicDataset(num_frames=2, image_size=56, num_clips=2, checker_frequency=(2.0, 6.0),
                                       noise_frequency=(2.0, 12.0))
    torch.testing.assert_close(default[1]["images"], explicit[1]["images"], atol=0, rtol=0)
    coarse = SyntheticDynamicDataset(num_frames=2, image_size=56, num_clips=2, checker_frequency=(0.4, 1.2),
                                     noise_frequency=(0.3, 2.0))
    a, b = default[1], coarse[1]
    torch.testing.assert_close(a["depths"], b["depths"], atol=0, rtol=0)  # same geometry, other texture
    assert not torch.equal(a["images"], b["images"])
    scene = coarse.build_scene(1)[0]
    assert 0.4 <= float(scene.checker_freq.min()) <= float(scene.checker_freq.max()) <= 1.2
    with pytest.raises(ValueError, match="checker_frequency"):
        SyntheticDynamicDataset(checker_frequency=(3.0, 1.0))


def test_objects_can_stand_still() -> None:
    """`object_speed: 0` keeps the objects (same placement) but nothing moves: no dynamic pixel, static tracks."""
    moving = SyntheticDynamicDataset(num_frames=3, image_size=56, num_clips=3, num_objects=(2, 2), frame_interval=1.0)
    still = SyntheticDynamicDataset(num_frames=3, image_size=56, num_clips=3, num_objects=(2, 2), frame_interval=1.0,
                                    object_speed=0.0)
    a, b = moving.build_scene(2)[0], still.build_scene(2)[0]
    assert torch.equal(a.centers[0], b.centers[0])  # frame 0: the same objects in the same places
    assert a.dynamic.any() and not b.dynamic.any()
    torch.testing.assert_close(b.centers, b.centers[:1].expand_as(b.centers), atol=0, rtol=0)
    torch.testing.assert_close(b.rotations, b.rotations[:1].expand_as(b.rotations), atol=0, rtol=0)
    sample = still[2]
    assert not sample["dynamic_masks"].any()
    with pytest.raises(ValueError, match="object_speed"):
        SyntheticDynamicDataset(object_speed=-1.0)
