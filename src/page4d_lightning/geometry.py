"""The one home of conventions: SE(3)/Sim(3), pose encoding, (un)projection, Umeyama, GT normalisation.

Conventions (DESIGN.md): extrinsics are camera-from-world [R|t] in OpenCV axes (x right, y down, z forward),
(..., 3, 4); intrinsics are pixels of the network input, (..., 3, 3); quaternions are XYZW (scalar last) with
w >= 0; pose encoding `absT_quaR_FoV` = [t (3), quat XYZW (4), fov_h, fov_w] in radians.
Every function takes any leading dims `...`, never loops over batch or frames and computes in torch; those that
readers call on NumPy data (`nearest_rotation`, `se3_inverse`, `quat_to_rotmat`, `relative_to_first`) also take
NumPy arrays and then return NumPy arrays. Shape checks are public (`check_shape`, `check_image_hw`), in the
manner of kornia's `core/check.py`, so metrics and models raise the same messages.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = [
    "check_shape", "check_image_hw", "ROTATION_TOLERANCE", "nearest_rotation", "wxyz_to_xyzw", "relative_to_first",
    "rotmat_to_quat", "quat_to_rotmat", "extri_intri_to_pose_encoding", "pose_encoding_to_extri_intri",
    "se3_inverse", "se3_compose", "to_homogeneous", "camera_centers", "depth_to_cam_points",
    "cam_to_world_points", "depth_to_world_points", "project_points", "umeyama_sim3",
    "normalize_clip", "normalize_sample",
]

_POSE = ((3, 4), (4, 4))
_NORM_KEYS = ("extrinsics", "world_points", "cam_points", "depths", "point_masks")


def _fmt(tail: tuple[int, ...]) -> str:
    return "(..., " + ", ".join(str(d) for d in tail) + ")"


def check_shape(x: Tensor, name: str, tails: tuple[tuple[int, ...], ...]) -> None:
    """Raise ValueError unless `x` is a tensor ending with one of `tails`, e.g. `extrinsics: expected (..., 3, 4)
    or (..., 4, 4), got (2, 3, 3)`."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    for tail in tails:
        if x.ndim >= len(tail) and tuple(x.shape[x.ndim - len(tail):]) == tail:
            return
    expected = " or ".join(_fmt(t) for t in tails)
    raise ValueError(f"{name}: expected {expected}, got {tuple(x.shape)}")


def check_image_hw(image_hw: tuple[int, int]) -> tuple[int, int]:
    """(H, W) as two positive ints, or ValueError naming `image_hw`."""
    if len(image_hw) != 2 or any(int(v) <= 0 for v in image_hw):
        raise ValueError(f"image_hw: expected (H, W) of two positive ints, got {image_hw}")
    return int(image_hw[0]), int(image_hw[1])


ArrayT = TypeVar("ArrayT", Tensor, np.ndarray)


def accepts_numpy(fn: Callable[..., Tensor]) -> Callable[..., Tensor | np.ndarray]:
    """Let a torch function of this module take NumPy arrays: positional arrays become tensors (same dtype, no
    copy when contiguous), and the result goes back to NumPy when any argument was an array."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not any(isinstance(a, np.ndarray) for a in args):
            return fn(*args, **kwargs)
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a for a in args]
        return fn(*tensors, **kwargs).numpy()

    return wrapper


# ----------------------------------------------------------------------------------------------- rotations
ROTATION_TOLERANCE = 1e-2
"""Largest |singular value - 1| of a matrix that `nearest_rotation` accepts and re-orthonormalises: the round-off
of float16 storage (~1e-3) and of rounded JSON stays below it; a scale, a shear or a transposed pose does not."""


@accepts_numpy
def nearest_rotation(M: Tensor, name: str = "rotation") -> Tensor:
    """(..., 3, 3) nearly orthonormal -> the closest rotation U V^T (SVD), removing storage round-off.

    Raises ValueError naming `name` when a matrix holds NaN/inf, is farther than `ROTATION_TOLERANCE` from a
    rotation, or is a reflection (det < 0: a mirrored axis).
    """
    check_shape(M, name, ((3, 3),))
    if not torch.isfinite(M).all():
        raise ValueError(f"{name}: holds NaN/inf")
    U, sv, Vh = torch.linalg.svd(M)
    R = U @ Vh
    det = torch.linalg.det(R)
    bad = ((sv - 1).abs().amax(-1) > ROTATION_TOLERANCE) | (det < 0)
    if bool(bad.any()):
        first = bad.nonzero()[0].tolist()
        values = [round(v, 4) for v in sv[tuple(first)].tolist()]
        raise ValueError(
            f"{name}: not a rotation (singular values {values}, det {float(det[tuple(first)]):.3f}; tolerance "
            f"{ROTATION_TOLERANCE}): a scale, a shear, a mirrored axis or a transposed pose?"
        )
    return R


def wxyz_to_xyzw(q: ArrayT) -> ArrayT:
    """(..., 4) quaternions scalar first (w, x, y, z) -> the project's scalar-last order (x, y, z, w)."""
    return q[..., [1, 2, 3, 0]]




def rotmat_to_quat(R: Tensor) -> Tensor:
    """(..., 3, 3) rotation -> (..., 4) quaternion XYZW, w >= 0.

    Shepperd's method, batched: each element uses the branch of the largest of 4w^2, 4x^2, 4y^2, 4z^2
    (always >= 1), so it is exact near 180 degrees and differentiable everywhere.
    """
    check_shape(R, "R", ((3, 3),))
    r = R.unbind(-1)  # three columns (..., 3)
    r00, r10, r20 = r[0].unbind(-1)
    r01, r11, r21 = r[1].unbind(-1)
    r02, r12, r22 = r[2].unbind(-1)
    # 4w^2, 4x^2, 4y^2, 4z^2 (WXYZ order)
    sq = torch.stack([1 + r00 + r11 + r22, 1 + r00 - r11 - r22, 1 - r00 + r11 - r22, 1 - r00 - r11 + r22], -1)
    # row k = 4 q_k * (w, x, y, z): the four candidate (unnormalised) quaternions, (..., 4, 4)
    cand = torch.stack([
        torch.stack([sq[..., 0], r21 - r12, r02 - r20, r10 - r01], -1),
        torch.stack([r21 - r12, sq[..., 1], r10 + r01, r02 + r20], -1),
        torch.stack([r02 - r20, r10 + r01, sq[..., 2], r12 + r21], -1),
        torch.stack([r10 - r01, r02 + r20, r12 + r21, sq[..., 3]], -1),
    ], -2)
    k = sq.argmax(-1, keepdim=True)  # (..., 1) branch per element
    sel_sq = sq.gather(-1, k)  # (..., 1), >= 1
    sel = cand.gather(-2, k[..., None].expand(*k.shape[:-1], 1, 4)).squeeze(-2)  # (..., 4) WXYZ
    q_wxyz = sel / (2.0 * sel_sq.sqrt())
    q = torch.cat([q_wxyz[..., 1:], q_wxyz[..., :1]], -1)  # WXYZ -> XYZW
    return torch.where(q[..., 3:] < 0, -q, q)


@accepts_numpy
def quat_to_rotmat(q: Tensor) -> Tensor:
    """(..., 4) quaternion XYZW (normalised here) -> (..., 3, 3) rotation."""
    check_shape(q, "q", ((4,),))
    x, y, z, w = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, -1).unflatten(-1, (3, 3))  # (..., 9) -> (..., 3, 3)


# ----------------------------------------------------------------------------------------- pose encoding


def extri_intri_to_pose_encoding(extrinsics: Tensor, intrinsics: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """extrinsics (..., 3, 4) camera-from-world, intrinsics (..., 3, 3) px -> (..., 9) absT_quaR_FoV.

    [0:3] t of [R|t]; [3:7] quat(R) XYZW, w >= 0; [7] fov_h = 2 atan((H/2)/fy); [8] fov_w = 2 atan((W/2)/fx).
    """
    check_shape(extrinsics, "extrinsics", _POSE)
    check_shape(intrinsics, "intrinsics", ((3, 3),))
    H, W = check_image_hw(image_hw)
    quat = rotmat_to_quat(extrinsics[..., :3, :3])
    fov_h = 2 * torch.atan((H / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((W / 2) / intrinsics[..., 0, 0])
    parts = [extrinsics[..., :3, 3], quat, fov_h[..., None], fov_w[..., None]]
    lead = torch.broadcast_shapes(extrinsics.shape[:-2], intrinsics.shape[:-2])
    return torch.cat([p.expand(*lead, p.shape[-1]) for p in parts], -1)


def pose_encoding_to_extri_intri(pose_enc: Tensor, image_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(..., 9) absT_quaR_FoV -> extrinsics (..., 3, 4) camera-from-world, intrinsics (..., 3, 3) px.

    The principal point is put at (W/2, H/2), as the official decoder does.
    """
    check_shape(pose_enc, "pose_enc", ((9,),))
    H, W = check_image_hw(image_hw)
    R = quat_to_rotmat(pose_enc[..., 3:7])
    extrinsics = torch.cat([R, pose_enc[..., :3, None]], -1)
    fy = (H / 2.0) / torch.tan(pose_enc[..., 7] / 2.0)
    fx = (W / 2.0) / torch.tan(pose_enc[..., 8] / 2.0)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    K = [fx, zero, zero + W / 2, zero, fy, zero + H / 2, zero, zero, one]
    intrinsics = torch.stack(K, -1).unflatten(-1, (3, 3))  # (..., 9) -> (..., 3, 3)
    return extrinsics, intrinsics


# -------------------------------------------------------------------------------------------------- SE(3)


def to_homogeneous(T: Tensor) -> Tensor:
    """(..., 3, 4) -> (..., 4, 4) with bottom row [0, 0, 0, 1]; a (..., 4, 4) input is returned as is."""
    check_shape(T, "T", _POSE)
    if T.shape[-2] == 4:
        return T
    bottom = torch.zeros_like(T[..., :1, :])
    bottom[..., 0, 3] = 1
    return torch.cat([T, bottom], -2)


@accepts_numpy
def se3_inverse(T: Tensor) -> Tensor:
    """Closed-form inverse [R^T | -R^T t] of (..., 3, 4) or (..., 4, 4) rigid transforms; same shape back.
    Camera-from-world <-> camera-to-world."""
    check_shape(T, "T", _POSE)
    Rt = T[..., :3, :3].transpose(-1, -2)
    inv = torch.cat([Rt, -Rt @ T[..., :3, 3:]], -1)
    return to_homogeneous(inv) if T.shape[-2] == 4 else inv


def se3_compose(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for (..., 3, 4) / (..., 4, 4) transforms (leading dims broadcast); 3x4 out iff both are 3x4."""
    check_shape(a, "a", _POSE)
    check_shape(b, "b", _POSE)
    out = to_homogeneous(a) @ to_homogeneous(b)
    return out[..., :3, :] if a.shape[-2] == 3 and b.shape[-2] == 3 else out


@accepts_numpy
def relative_to_first(extrinsics: Tensor) -> Tensor:
    """Camera-from-world (..., S, 3|4, 4) -> E_i E_0^-1 (..., S, 3, 4): the same cameras in camera 0's frame.
    Camera 0 becomes exactly [I | 0], not up to rounding."""
    check_shape(extrinsics, "extrinsics", _POSE)
    if extrinsics.ndim < 3:
        raise ValueError(f"extrinsics: expected (..., S, 3, 4), got {tuple(extrinsics.shape)}")
    E = extrinsics[..., :3, :]
    relative = se3_compose(E, se3_inverse(E[..., :1, :, :]))
    first = torch.eye(3, 4, dtype=E.dtype, device=E.device).expand_as(relative[..., :1, :, :])
    return torch.cat([first, relative[..., 1:, :, :]], -3)


def camera_centers(extrinsics: Tensor) -> Tensor:
    """(..., 3, 4) / (..., 4, 4) camera-from-world -> (..., 3) camera centres -R^T t in world units."""
    check_shape(extrinsics, "extrinsics", _POSE)
    R, t = extrinsics[..., :3, :3], extrinsics[..., :3, 3:]
    return -(R.transpose(-1, -2) @ t)[..., 0]


# ------------------------------------------------------------------------------------ (un)projection


def depth_to_cam_points(depth: Tensor, intrinsics: Tensor) -> Tensor:
    """z-depth (..., H, W) and intrinsics (..., 3, 3) -> camera points (..., H, W, 3), OpenCV axes.

    Pixel (v, u) = (row, column) sits at integer coordinates: X = (u - cx) z / fx, Y = (v - cy) z / fy.
    """
    check_shape(intrinsics, "intrinsics", ((3, 3),))
    if depth.ndim < 2:
        raise ValueError(f"depth: expected (..., H, W), got {tuple(depth.shape)}")
    H, W = depth.shape[-2:]
    v, u = torch.meshgrid(
        torch.arange(H, device=depth.device, dtype=depth.dtype),
        torch.arange(W, device=depth.device, dtype=depth.dtype),
        indexing="ij",
    )
    K = intrinsics[..., None, None, :, :]  # (..., 1, 1, 3, 3): broadcast over pixels
    x = (u - K[..., 0, 2]) * depth / K[..., 0, 0]
    y = (v - K[..., 1, 2]) * depth / K[..., 1, 1]
    x, y, z = torch.broadcast_tensors(x, y, depth)
    return torch.stack([x, y, z], -1)


def cam_to_world_points(cam_points: Tensor, extrinsics: Tensor) -> Tensor:
    """cam_points (..., H, W, 3), camera-from-world (..., 3, 4) -> world points R^T (X - t) (..., H, W, 3)."""
    check_shape(cam_points, "cam_points", ((3,),))
    check_shape(extrinsics, "extrinsics", _POSE)
    if cam_points.ndim < 3:
        raise ValueError(f"cam_points: expected (..., H, W, 3), got {tuple(cam_points.shape)}")
    R, t = extrinsics[..., :3, :3], extrinsics[..., None, None, :3, 3]
    H, W = cam_points.shape[-3:-1]
    # (..., H, W, 3) -> (..., H*W, 3): one (H*W, 3) @ (3, 3) product per frame (a per-pixel 1x3 @ 3x3
    # broadcast is ~5x slower); row-vector form: (X - t) R == (R^T (X - t))^T
    world = (cam_points - t).reshape(*cam_points.shape[:-3], H * W, 3) @ R
    return world.reshape(*world.shape[:-2], H, W, 3)


def depth_to_world_points(depth: Tensor, extrinsics: Tensor, intrinsics: Tensor) -> tuple[Tensor, Tensor]:
    """depth (..., H, W), extrinsics (..., 3, 4), intrinsics (..., 3, 3) -> world, cam (..., H, W, 3)."""
    cam = depth_to_cam_points(depth, intrinsics)
    return cam_to_world_points(cam, extrinsics), cam


def project_points(points_world: Tensor, extrinsics: Tensor, intrinsics: Tensor) -> tuple[Tensor, Tensor]:
    """points (..., N, 3) world -> (uv (..., N, 2) px, z (..., N) camera depth).

    No clipping: points with z <= 0 give non-finite or mirrored uv; mask them with `z > 0`.
    """
    check_shape(points_world, "points_world", ((3,),))
    check_shape(extrinsics, "extrinsics", _POSE)
    check_shape(intrinsics, "intrinsics", ((3, 3),))
    R, t = extrinsics[..., None, :3, :3], extrinsics[..., None, :3, 3]  # (..., 1, 3, 3): broadcast over N
    cam = (R @ points_world[..., None])[..., 0] + t  # (..., N, 3)
    pix = (intrinsics[..., None, :, :] @ cam[..., None])[..., 0]  # (..., N, 3) homogeneous pixels
    z = cam[..., 2]
    return pix[..., :2] / pix[..., 2:], z


# ------------------------------------------------------------------------------------------------ Sim(3)


def umeyama_sim3(
    src: Tensor, dst: Tensor, weights: Tensor | None = None, with_scale: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """Least-squares Sim(3) with dst ~ scale * R @ src + t (Umeyama 1991, reflection-corrected).

    src, dst (..., N, 3); weights (..., N) >= 0 or None (uniform) -> scale (...), R (..., 3, 3), t (..., 3).
    with_scale=False gives the rigid (Kabsch) fit with scale = 1.
    """
    check_shape(src, "src", ((3,),))
    if dst.shape != src.shape:
        raise ValueError(f"dst: expected the shape of src {tuple(src.shape)}, got {tuple(dst.shape)}")
    if weights is None:
        weights = torch.ones_like(src[..., 0])
    elif weights.shape != src.shape[:-1]:
        raise ValueError(f"weights: expected {tuple(src.shape[:-1])}, got {tuple(weights.shape)}")
    w = (weights / weights.sum(-1, keepdim=True))[..., None]  # (..., N, 1), sums to 1
    mu_s, mu_d = (w * src).sum(-2), (w * dst).sum(-2)  # (..., 3)
    xs, xd = src - mu_s[..., None, :], dst - mu_d[..., None, :]
    cov = (w * xd).transpose(-1, -2) @ xs  # (..., 3, 3) = sum_i w_i xd_i xs_i^T
    U, D, Vh = torch.linalg.svd(cov)
    sign = torch.sign(torch.linalg.det(U) * torch.linalg.det(Vh))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    corr = torch.stack([torch.ones_like(sign), torch.ones_like(sign), sign], -1)  # diag(1, 1, +-1)
    R = (U * corr[..., None, :]) @ Vh
    if with_scale:
        var_s = (w * xs.square()).sum((-1, -2))
        scale = (D * corr).sum(-1) / var_s
    else:
        scale = torch.ones_like(sign)
    t = mu_d - scale[..., None] * (R @ mu_s[..., None])[..., 0]
    return scale, R, t


# ------------------------------------------------------------------------------- resize / crop bookkeeping


def resize_crop_source_points(
    uv: np.ndarray, scale_xy: tuple[float, float], offset_xy: tuple[int, int], window_xy: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """Network-input pixels (..., 2) (x, y; OpenCV pixel centres) -> pixels of the source image, for an image that
    was cropped to a window at `window_xy`, resized by `scale_xy` (x, y) and cropped at `offset_xy` (the inverse of
    `datamodules.transforms.ResizeCrop.points`)."""
    (sx, sy), (x0, y0), (wx, wy) = scale_xy, offset_xy, window_xy
    out = np.array(uv, dtype=np.float64, copy=True)
    out[..., 0] = (out[..., 0] + 0.5 + x0) / sx - 0.5 + wx
    out[..., 1] = (out[..., 1] + 0.5 + y0) / sy - 0.5 + wy
    return out


def resize_crop_source_intrinsics(
    K: np.ndarray, scale_xy: tuple[float, float], offset_xy: tuple[int, int], window_xy: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """(..., 3, 3) pixel intrinsics of the network input -> of the source image (inverse of `ResizeCrop.intrinsics`)."""
    (sx, sy), (x0, y0), (wx, wy) = scale_xy, offset_xy, window_xy
    K = np.array(K, dtype=np.float64, copy=True)
    K[..., 0, :2] /= sx
    K[..., 1, 1] /= sy
    K[..., 0, 2] = (K[..., 0, 2] + 0.5 + x0) / sx - 0.5 + wx
    K[..., 1, 2] = (K[..., 1, 2] + 0.5 + y0) / sy - 0.5 + wy
    return K


# ----------------------------------------------------------------------------------- GT normalisation


def normalize_clip(batch: dict) -> dict:
    """Per-clip GT normalisation (official `normalize_camera_extrinsics_and_points_batch`) on (B, S, ...).

    Needs `extrinsics (B,S,3,4)|(B,S,4,4)`, `world_points (B,S,H,W,3)`, `point_masks (B,S,H,W) bool`; also
    normalises `cam_points (B,S,H,W,3)` and `depths (B,S,H,W)` when present. Returns a NEW dict: extrinsics
    E_i E_0^-1 (3x4), world points in camera 0's frame, all lengths divided by
    s = sum(|X| mask) / (sum(mask) + 1e-3) clamped to [1e-6, 1e6], NaN/inf -> 0, plus `scale (B,)` = s.
    A clip whose first frame has no valid pixel gets all `point_masks` False first.
    """
    for key in ("extrinsics", "world_points", "point_masks"):
        if key not in batch:
            raise ValueError(f"batch: missing key {key!r}, needs {_NORM_KEYS[:3]}")
    extr, world, masks = batch["extrinsics"], batch["world_points"], batch["point_masks"]
    check_shape(extr, "extrinsics", _POSE)
    if extr.ndim != 4:
        raise ValueError(f"extrinsics: expected (B, S, 3, 4) or (B, S, 4, 4), got {tuple(extr.shape)}")
    B, S = extr.shape[:2]
    if masks.ndim != 4 or tuple(masks.shape[:2]) != (B, S):
        raise ValueError(f"point_masks: expected ({B}, {S}, H, W), got {tuple(masks.shape)}")
    H, W = masks.shape[-2:]
    shapes = {"world_points": (B, S, H, W, 3), "cam_points": (B, S, H, W, 3), "depths": (B, S, H, W)}
    for key, shape in shapes.items():
        if key in batch and tuple(batch[key].shape) != shape:
            raise ValueError(f"{key}: expected {shape}, got {tuple(batch[key].shape)}")

    masks = masks.bool()
    first_ok = masks[:, 0].flatten(1).any(-1)  # (B,)
    if not bool(first_ok.all()):
        logger.debug("normalize_clip: %d clip(s) without valid first-frame pixels", int((~first_ok).sum()))
    masks = masks & first_ok[:, None, None, None]

    first = extr[:, :1]  # (B, 1, 3|4, 4): camera 0 of each clip
    new_extr = relative_to_first(extr)  # (B, S, 3, 4)
    R0, t0 = first[:, 0, :3, :3], first[:, 0, :3, 3]  # (B, 3, 3), (B, 3)
    identity = torch.eye(3, 4, dtype=extr.dtype, device=extr.device).expand(B, 3, 4)
    already_first = torch.equal(first[:, 0, :3, :], identity)
    if already_first:  # the clip is already in camera 0's frame (readers build it so): no transform needed
        new_world = world
    else:  # (B, S*H*W, 3) @ (B, 3, 3)^T + t0: one batched matmul instead of S*H*W tiny 3x3 products
        new_world = torch.baddbmm(t0[:, None], world.reshape(B, -1, 3), R0.transpose(-1, -2)).reshape(world.shape)

    # |X| over valid pixels: squared components summed by a (3,) matmul (faster than norm(dim=-1) on 3-wide rows)
    dist = (new_world * new_world).reshape(B, -1, 3) @ new_world.new_ones(3)  # (B, S*H*W)
    dist = dist.sqrt_().reshape(masks.shape).masked_fill_(~masks, 0.0)  # fill, not multiply: NaN * 0 is NaN
    scale = (dist.sum((1, 2, 3)) / (masks.sum((1, 2, 3)) + 1e-3)).clamp(1e-6, 1e6)  # (B,)

    out = dict(batch)
    out["point_masks"] = masks
    out["extrinsics"] = torch.cat([new_extr[..., :3], new_extr[..., 3:] / scale[:, None, None, None]], -1)
    scale_5d = scale[:, None, None, None, None]
    # in place only on our own baddbmm result, never on the caller's tensor
    out["world_points"] = new_world / scale_5d if already_first else new_world.div_(scale_5d)
    if "cam_points" in batch:
        out["cam_points"] = batch["cam_points"] / scale[:, None, None, None, None]
    if "depths" in batch:
        out["depths"] = batch["depths"] / scale[:, None, None, None]
    for key in ("extrinsics", "world_points", "cam_points", "depths"):
        if key in out:  # every one is a fresh tensor here, so in place is safe
            out[key] = out[key].nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    out["scale"] = scale
    return out


def normalize_sample(sample: dict) -> dict:
    """`normalize_clip` for one unbatched clip (S, ...); `scale` comes back as a 0-dim tensor."""
    present = [k for k in _NORM_KEYS if k in sample]
    batch = dict(sample)
    batch.update({k: sample[k].unsqueeze(0) for k in present})  # add B = 1
    out = normalize_clip(batch)
    out.update({k: out[k].squeeze(0) for k in [*present, "scale"]})  # drop B
    return out



# ------------------------------------------------------------------------------------------ patch grid


def patch_fraction(masks: Tensor, patch_size: int) -> Tensor:
    """(..., H, W) bool / float pixel masks -> (..., H/p, W/p) the share of each p x p patch that is set: the token
    grid of the model (H and W multiples of p)."""
    H, W = masks.shape[-2:]
    if H % patch_size or W % patch_size:
        raise ValueError(f"masks: expected H and W multiples of the patch size {patch_size}, got {(H, W)}")
    lead = masks.shape[:-2]
    x = masks.float().reshape(-1, 1, H, W)
    return torch.nn.functional.avg_pool2d(x, patch_size).reshape(*lead, H // patch_size, W // patch_size)


def pose_from_point_maps(cam_points: Tensor, world_points: Tensor, weights: Tensor | None = None) -> Tensor:
    """Camera poses recovered from point maps (Procrustes), per frame.

    cam_points (..., H, W, 3) the frame's points in its own camera (e.g. unprojected depth), world_points
    (..., H, W, 3) the same pixels in the world (camera 0) frame, weights (..., H, W) >= 0 or None. Fits
    world ~ s R cam + t per frame (Umeyama, with scale, so depth and point maps may differ in scale) -> (..., 3, 4)
    camera-from-world [R^T | -R^T t]: the camera motion that the two maps imply.
    """
    check_shape(cam_points, "cam_points", ((3,),))
    if world_points.shape != cam_points.shape:
        raise ValueError(f"world_points: expected the shape of cam_points {tuple(cam_points.shape)}, "
                         f"got {tuple(world_points.shape)}")
    src, dst = cam_points.flatten(-3, -2), world_points.flatten(-3, -2)  # (..., H*W, 3)
    w = None if weights is None else weights.flatten(-2)
    _, R, t = umeyama_sim3(src, dst, w)
    Rt = R.transpose(-1, -2)
    return torch.cat([Rt, -(Rt @ t[..., None])], -1)
