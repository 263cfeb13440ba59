"""SyntheticDynamicDataset: determinism, shapes, exact geometry, tracks, and that moving objects matter for pose.

Independent references: `page4d_lightning.geometry` for (un)projection and Kabsch/Umeyama, the scene's own
object poses for where a tracked surface point is at time t, and brute-force ray casting (no culling) for the
renderer's screen-rectangle culling.
"""

from __future__ import annotations

import math

import pytest
import torch

from datamodules import DATASETS, SyntheticDataModule, SyntheticDynamicDataset
from datamodules.synthetic.render import cast_rays, intrinsics_for, render
from datamodules.synthetic.scene import BOX, SPHERE
from page4d_lightning.geometry import (
    cam_to_world_points,
    depth_to_cam_points,
    normalize_sample,
    project_points,
    se3_compose,
    se3_inverse,
    umeyama_sim3,
)

SMALL = {"num_frames": 4, "image_size": 56, "normalize": False, "num_clips": 50}


def _rotation_angle_deg(R: torch.Tensor) -> torch.Tensor:
    """Rotation angle of (..., 3, 3) rotations, degrees: |R - I|_F = 2 sqrt(2) sin(angle / 2), well conditioned
    near 0 (unlike acos of the trace in float32)."""
    dist = (R - torch.eye(3, dtype=R.dtype)).flatten(-2).norm(dim=-1)
    return torch.rad2deg(2 * torch.asin((dist / (2 * math.sqrt(2))).clamp(max=1.0)))


def _nearest(values: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """values (H, W, ...) at the nearest pixel of uv (N, 2) (x = column, y = row; clamped into the image)."""
    H, W = values.shape[:2]
    col = uv[:, 0].round().long().clamp(0, W - 1)
    row = uv[:, 1].round().long().clamp(0, H - 1)
    return values[row, col]


def _track_world(ds: SyntheticDynamicDataset, index: int, sample: dict) -> torch.Tensor:
    """World position (S, N, 3) of every tracked surface point over time, from the scene's object poses: the
    query's frame-0 world point, attached to the moving object whose surface it lies on (or static)."""
    scene, _ = ds.build_scene(index)
    q = sample["tracks"][0].long()  # (N, 2) integer pixel centres
    x0 = sample["world_points"][0][q[:, 1], q[:, 0]]  # (N, 3)
    out = x0.expand(ds.num_frames, -1, -1).clone()
    for n in sample["dynamic_masks"][0][q[:, 1], q[:, 0]].nonzero()[:, 0].tolist():
        for p in scene.dynamic.nonzero()[:, 0].tolist():
            local = scene.rotations[0, p].T @ (x0[n] - scene.centers[0, p])
            half = scene.half_sizes[p]
            if scene.kinds[p] == SPHERE:
                on_surface = abs(float(local.norm() / half[0]) - 1) < 1e-4
            else:
                assert scene.kinds[p] == BOX
                ratio = (local.abs() / half).max()
                on_surface = abs(float(ratio) - 1) < 1e-4
            if on_surface:
                out[:, n] = (scene.rotations[:, p] @ local) + scene.centers[:, p]
                break
        else:
            raise AssertionError(f"track {n} is dynamic but on no moving object's surface")
    return out


@pytest.mark.parametrize(
    ("num_frames", "width", "aspect", "height"), [(1, 42, 1.0, 42), (4, 56, 0.75, 42), (3, 28, 2.0, 56)]
)
def test_shapes_and_dtypes(num_frames: int, width: int, aspect: float, height: int) -> None:
    ds = SyntheticDynamicDataset(num_frames=num_frames, image_size=width, aspect_ratio=aspect, normalize=False,
                                 num_tracks=16, num_clips=3, seed=3)
    assert len(ds) == 3
    s = ds[2]
    S, H, W, N = num_frames, height, width, 16
    shapes = {"images": (S, 3, H, W), "depths": (S, H, W), "extrinsics": (S, 3, 4), "intrinsics": (S, 3, 3),
              "world_points": (S, H, W, 3), "cam_points": (S, H, W, 3), "point_masks": (S, H, W),
              "dynamic_masks": (S, H, W), "tracks": (S, N, 2), "track_vis_mask": (S, N), "track_positive_mask": (N,),
              "ids": (S,)}
    for key, shape in shapes.items():
        assert tuple(s[key].shape) == shape, key
    for key in ("images", "depths", "extrinsics", "intrinsics", "world_points", "cam_points", "tracks"):
        assert s[key].dtype == torch.float32, key
        assert torch.isfinite(s[key]).all(), key
    for key in ("point_masks", "dynamic_masks", "track_vis_mask", "track_positive_mask"):
        assert s[key].dtype == torch.bool, key
    assert s["ids"].dtype == torch.long and s["ids"].tolist() == list(range(S))
    assert s["dataset"] == "synthetic" and s["seq_name"] == "synthetic_train_3_000002"
    assert 0 <= s["images"].min() and s["images"].max() <= 1 and s["images"].std() > 0.05
    assert (s["depths"] > 0).all() and s["point_masks"].all()  # a closed room: every pixel has a depth
    K = s["intrinsics"][0]
    assert torch.allclose(K[:2, 2], torch.tensor([W / 2, H / 2]))
    fov = math.degrees(2 * math.atan(W / 2 / K[0, 0]))
    assert 50 <= fov <= 70 and K[0, 0] == K[1, 1]
    assert s["track_positive_mask"].all() and s["track_vis_mask"][0].all()


def test_bad_arguments_and_registry() -> None:
    for kwargs in ({"image_size": 50}, {"image_size": 0}, {"num_frames": 0}, {"aspect_ratio": 0.0},
                   {"num_objects": (3, 1)}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            SyntheticDynamicDataset(**kwargs)
    with pytest.raises(IndexError):
        SyntheticDynamicDataset(num_clips=2)[2]
    assert DATASETS["synthetic"] is SyntheticDynamicDataset
    assert SyntheticDynamicDataset(image_size=14, aspect_ratio=0.1).height == 14


def test_deterministic_and_leaves_global_rng_alone() -> None:
    rng_state = torch.get_rng_state()
    a, b = SyntheticDynamicDataset(**SMALL)[7], SyntheticDynamicDataset(**SMALL)[7]
    assert torch.equal(torch.get_rng_state(), rng_state)
    for key in ("images", "depths", "extrinsics", "world_points", "tracks", "track_vis_mask", "dynamic_masks"):
        assert torch.equal(a[key], b[key]), key
    others = [SyntheticDynamicDataset(**SMALL)[8], SyntheticDynamicDataset(**SMALL, seed=1)[7],
              SyntheticDynamicDataset(**SMALL, split="val")[7]]
    for other in others:
        assert not torch.allclose(a["extrinsics"], other["extrinsics"])
        assert (a["images"] - other["images"]).abs().mean() > 0.05


def test_exact_geometry() -> None:
    ds = SyntheticDynamicDataset(**SMALL)
    for index in range(3):
        s = ds[index]
        cam = depth_to_cam_points(s["depths"], s["intrinsics"])  # K^-1 [u, v, 1] * depth
        assert torch.allclose(cam, s["cam_points"], rtol=1e-6, atol=1e-6)
        world = cam_to_world_points(s["cam_points"], s["extrinsics"])
        assert torch.allclose(world, s["world_points"], atol=2e-5)
        R = s["extrinsics"][:, :, :3]
        assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(4, 3, 3), atol=1e-5)


def test_culled_render_matches_brute_force_ray_casting() -> None:
    ds = SyntheticDynamicDataset(num_frames=4, image_size=70, normalize=False)
    for index in range(4):
        scene, _ = ds.build_scene(index)
        K = intrinsics_for(scene.fov_x, 70, 70)
        out = render(scene, K, 70, 70)
        v, u = torch.meshgrid(torch.arange(70.0), torch.arange(70.0), indexing="ij")
        d_cam = torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)], -1)
        dirs = (d_cam @ scene.cam_rotations.transpose(1, 2)[:, None]).unbind(-1)  # (S, H, W) world planes
        t, prim = cast_rays(scene, scene.cam_centers, dirs)
        # float32 rounding: the renderer builds each primitive's ray directions separably, the reference by
        # matrix products; grazing rays (sphere silhouettes) amplify that to ~2e-5 at a few pixels; a culling
        # error (a missed primitive) would be off by > 1e-2
        rel = (out["depths"] - t).abs() / t
        assert rel.max() < 1e-4 and rel.median() < 1e-6, (rel.max(), rel.median())
        assert (out["prim"] == prim.long()).float().mean() > 0.999  # ties at edges may differ


def test_static_points_are_consistent_across_frames_and_dynamic_ones_are_not() -> None:
    ds = SyntheticDynamicDataset(**SMALL)
    static_err, dynamic_err = [], []
    for index in range(4):
        s = ds[index]
        for t in range(1, 4):
            uv, z = project_points(s["world_points"][0].reshape(-1, 3), s["extrinsics"][t], s["intrinsics"][t])
            inside = (z > 0) & (uv[:, 0] > -0.5) & (uv[:, 0] < 55.5) & (uv[:, 1] > -0.5) & (uv[:, 1] < 55.5)
            visible = inside & ((_nearest(s["depths"][t], uv) - z).abs() < 0.02 * z)  # not occluded
            err = (_nearest(s["world_points"][t], uv) - s["world_points"][0].reshape(-1, 3)).norm(dim=-1)
            err = err * s["intrinsics"][t, 0, 0] / z  # in pixel footprints
            dynamic = s["dynamic_masks"][0].reshape(-1)
            static_err.append(err[visible & ~dynamic])
            dynamic_err.append(err[inside & dynamic])
    static_err, dynamic_err = torch.cat(static_err), torch.cat(dynamic_err)
    # static: the same world point up to the nearest-pixel rounding (<= 0.71 footprints when fronto-parallel)
    assert static_err.numel() > 1000 and static_err.median() < 0.75 and torch.quantile(static_err, 0.9) < 3
    # moving objects moved: projected with the static assumption they miss their surface point by several pixels
    assert dynamic_err.numel() > 100 and dynamic_err.median() > max(2.0, 5 * float(static_err.median()))


def test_tracks_follow_surface_points() -> None:
    ds = SyntheticDynamicDataset(**SMALL, num_tracks=48)
    n_occluded = n_dynamic = 0
    surface_err, in_front = [], []
    for index in range(5):
        s = ds[index]
        q = s["tracks"][0]
        assert torch.equal(q, q.round())  # queries: exact pixel centres of frame 0
        track_world = _track_world(ds, index, s)  # (S, N, 3)
        dyn = s["dynamic_masks"][0][q[:, 1].long(), q[:, 0].long()]
        n_dynamic += int(dyn.sum())
        if s["dynamic_masks"][0].sum() >= 24:
            assert dyn.sum() == 24  # about half of the tracks on moving objects when they are visible
        for t in range(4):
            uv, z = project_points(track_world[t], s["extrinsics"][t], s["intrinsics"][t])
            vis = s["track_vis_mask"][t]
            assert torch.allclose(s["tracks"][t][vis], uv[vis], atol=2e-3)  # exact projections
            # visible: the rendered surface at the track's pixel is the tracked point, up to the pixel rounding
            # (distance in pixel footprints z / fx: <= 0.71 for a fronto-parallel surface)
            err = (_nearest(s["world_points"][t], uv[vis]) - track_world[t][vis]).norm(dim=-1)
            surface_err.append(err * s["intrinsics"][t, 0, 0] / z[vis])
            # in the image but invisible: something is in front of the tracked point
            inside = (z > 0) & (uv[:, 0] > 0) & (uv[:, 0] < 55) & (uv[:, 1] > 0) & (uv[:, 1] < 55)
            hidden = inside & ~vis
            in_front.append(_nearest(s["depths"][t], uv[hidden]) < z[hidden] * 0.99)
            n_occluded += int(hidden.sum())
    surface_err, in_front = torch.cat(surface_err), torch.cat(in_front)
    assert surface_err.numel() > 500 and surface_err.median() < 0.75 and torch.quantile(surface_err, 0.9) < 3
    assert n_occluded > 5 and in_front.float().mean() > 0.8 and n_dynamic > 60


def test_moving_objects_corrupt_rigid_pose_from_all_tracks() -> None:
    """Relative pose 0 -> t from 3D track correspondences: static tracks give it exactly, all tracks do not."""
    ds = SyntheticDynamicDataset(**SMALL, num_tracks=64)
    static_errors, all_errors = [], []  # (rotation deg, translation m) per clip and frame
    for index in range(6):
        s = ds[index]
        track_world = _track_world(ds, index, s)
        q = s["tracks"][0].long()
        dynamic = s["dynamic_masks"][0][q[:, 1], q[:, 0]]
        cam = (s["extrinsics"][:, None, :, :3] @ track_world[..., None])[..., 0] + s["extrinsics"][:, None, :, 3]
        for t in range(1, 4):
            both = s["track_vis_mask"][0] & s["track_vis_mask"][t]
            truth = se3_compose(s["extrinsics"][t], se3_inverse(s["extrinsics"][0]))  # camera 0 -> camera t
            for use, errors in ((both & ~dynamic, static_errors), (both, all_errors)):
                _, R, trans = umeyama_sim3(cam[0][use], cam[t][use], with_scale=False)
                errors.append([float(_rotation_angle_deg(R.T @ truth[:, :3])), float((trans - truth[:, 3]).norm())])
    static_errors, all_errors = torch.tensor(static_errors), torch.tensor(all_errors)
    assert static_errors[:, 0].max() < 0.01 and static_errors[:, 1].max() < 1e-3  # ~exact (float32)
    ratios = all_errors / static_errors.clamp_min(torch.tensor([0.01, 1e-3]))  # floors: 0.01 deg, 1 mm
    assert (ratios.median(dim=0).values > 3).all(), ratios.median(dim=0).values


def test_dynamic_content_present_but_static_dominates() -> None:
    ds = SyntheticDynamicDataset(**{**SMALL, "num_frames": 3})
    fractions = torch.stack([ds[i]["dynamic_masks"].float().mean((1, 2)) for i in range(10)])  # (clips, S)
    assert (fractions > 0).float().mean() >= 0.8
    assert 0.05 < fractions.mean() < 0.5


def test_normalized_sample() -> None:
    """normalize=True places the points in camera 0's frame directly; it matches the generic path (world frame,
    then `normalize_sample`) up to float32 rounding of the two computation orders (lengths ~1 after scaling)."""
    for index in (4, 5):
        raw = SyntheticDynamicDataset(**SMALL)[index]
        s = SyntheticDynamicDataset(**{**SMALL, "normalize": True})[index]
        ref = normalize_sample(raw)
        for key in ("extrinsics", "world_points", "cam_points", "depths", "scale"):
            assert torch.allclose(s[key], ref[key], rtol=1e-5, atol=1e-5), key
        assert torch.equal(s["extrinsics"][0], torch.eye(3, 4))  # exactly
        # camera 0 is the world frame now: its camera points are its world points
        assert torch.allclose(s["world_points"][0], s["cam_points"][0], atol=1e-6)
        assert torch.allclose(s["depths"], s["cam_points"][..., 2])
        for key in ("images", "tracks", "track_vis_mask", "dynamic_masks"):  # the same rendering
            assert torch.equal(s[key], raw[key]), key
        assert torch.allclose(s["depths"] * s["scale"], raw["depths"])
        assert raw["depths"].mean() > s["depths"].mean() * 1.5


def test_datamodule_batches() -> None:
    dm = SyntheticDataModule(num_frames=2, image_size=28, batch_size=2, train={"num_clips": 4, "num_tracks": 8})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (2, 2, 3, 28, 28) and batch["tracks"].shape == (2, 2, 8, 2)
    assert batch["abandon_pose"].tolist() == [False, False] and batch["scale"].shape == (2,)
