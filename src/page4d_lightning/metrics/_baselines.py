"""Uninformed pose baselines: what ATE / RPE a predictor scores when it knows nothing about the camera.

A pose figure means little on its own: with few frames, the Sim(3) alignment in `pose_errors` absorbs much of
any trajectory, so even random centres score a modest ATE. Two baselines give the floor that a model must beat
to claim it learned relative pose:
- `constant`: one trajectory for every clip, the mean of the training clips' GT trajectories (per frame: the
  chordal mean rotation and the mean centre, in camera 0's frame). It is what a camera head converges to when
  it ignores the images, the best image-blind prediction under these losses.
- `random_centres`: identity rotations and centres drawn from a Gaussian with each clip's GT spread, averaged
  over `draws` draws: the figure of a trajectory with the right scale and no information.
"""

from __future__ import annotations

import torch
from torch import Tensor

from page4d_lightning.geometry import camera_centers, check_shape, se3_inverse
from page4d_lightning.metrics._pose import POSE_KEYS, pose_errors

__all__ = ["mean_trajectory", "pose_baselines"]


def mean_trajectory(extrinsics: Tensor) -> Tensor:
    """(N, S, 3|4, 4) camera-from-world trajectories, camera 0 at the identity -> (S, 3, 4) their per-frame mean:
    the chordal mean of the world-from-camera rotations (projected onto SO(3)) and the mean camera centre."""
    check_shape(extrinsics, "extrinsics", ((3, 4), (4, 4)))
    if extrinsics.ndim != 4 or len(extrinsics) == 0:
        raise ValueError(f"extrinsics: expected (N >= 1, S, 3, 4), got {tuple(extrinsics.shape)}")
    cam_to_world = se3_inverse(extrinsics[..., :3, :].double())  # (N, S, 3, 4): [R_wc | centre]
    U, _, Vh = torch.linalg.svd(cam_to_world[..., :3].mean(0))  # chordal mean: the rotation nearest the mean
    sign = torch.sign(torch.linalg.det(U @ Vh))
    rotation = U @ torch.diag_embed(torch.stack([torch.ones_like(sign), torch.ones_like(sign), sign], -1)) @ Vh
    centre = cam_to_world[..., 3].mean(0)  # (S, 3)
    return se3_inverse(torch.cat([rotation, centre[..., None]], -1))


def _random_centre_trajectories(gt_extrinsics: Tensor, generator: torch.Generator) -> Tensor:
    """(N, S, 3, 4) -> (N, S, 3, 4) identity rotations, Gaussian centres with each clip's RMS GT spread."""
    centres = camera_centers(gt_extrinsics[..., :3, :].double())  # (N, S, 3)
    spread = (centres - centres.mean(-2, keepdim=True)).square().sum(-1).mean(-1).sqrt() / 3**0.5  # (N,)
    noise = torch.randn(centres.shape, generator=generator, dtype=torch.float64) * spread[:, None, None]
    rotation = torch.eye(3, dtype=torch.float64).expand(*centres.shape[:-1], 3, 3)
    return torch.cat([rotation, -noise[..., None]], -1)  # R = I: t = -centre


def _mean_errors(pred: Tensor, gt: Tensor) -> dict[str, float]:
    errors = pose_errors(pred, gt)
    return {key: float(errors[key].nanmean()) for key in POSE_KEYS}


def pose_baselines(
    gt_extrinsics: Tensor, train_extrinsics: Tensor, draws: int = 16, seed: int = 0
) -> dict[str, dict[str, float]]:
    """ATE / RPE of the two uninformed baselines (module docstring) on the clips `gt_extrinsics`.

    gt_extrinsics: (N, S, 3|4, 4) the evaluation clips; train_extrinsics: (M, S, 3|4, 4) the training clips whose
    mean trajectory is the constant prediction. Returns {"constant": {...}, "random_centres": {...}}, each
    {"ate", "rpe_trans", "rpe_rot"}: means over clips (as `PoseMetrics`), random centres also over `draws`.
    """
    check_shape(gt_extrinsics, "gt_extrinsics", ((3, 4), (4, 4)))
    if train_extrinsics.shape[-3] != gt_extrinsics.shape[-3]:
        raise ValueError(
            f"train_extrinsics: expected S = {gt_extrinsics.shape[-3]} frames like gt_extrinsics, "
            f"got {tuple(train_extrinsics.shape)}"
        )
    gt = gt_extrinsics[..., :3, :].double()
    constant = mean_trajectory(train_extrinsics).expand_as(gt)
    generator = torch.Generator().manual_seed(seed)
    runs = [_mean_errors(_random_centre_trajectories(gt, generator), gt) for _ in range(draws)]
    return {
        "constant": _mean_errors(constant, gt),
        "random_centres": {key: sum(r[key] for r in runs) / draws for key in POSE_KEYS},
    }
