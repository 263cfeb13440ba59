"""geometry.py: conventions, round trips, references (kornia, torch.linalg), gradcheck, shape errors."""

import math
import re

import numpy as np
import pytest
import torch
from kornia.geometry.conversions import quaternion_to_rotation_matrix, rotation_matrix_to_quaternion

from page4d_lightning.geometry import (
    camera_centers,
    depth_to_world_points,
    extri_intri_to_pose_encoding,
    nearest_rotation,
    normalize_clip,
    normalize_sample,
    pose_encoding_to_extri_intri,
    project_points,
    quat_to_rotmat,
    relative_to_first,
    rotmat_to_quat,
    se3_compose,
    se3_inverse,
    to_homogeneous,
    umeyama_sim3,
    wxyz_to_xyzw,
)

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _axis_angle_quat(axis: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """(..., 3) axes, angle -> (..., 4) XYZW."""
    half = math.radians(angle_deg) / 2
    axis = axis / axis.norm(dim=-1, keepdim=True)
    return torch.cat([axis * math.sin(half), torch.full_like(axis[..., :1], math.cos(half))], -1)


def _test_rotations(n: int = 64) -> torch.Tensor:
    """(M, 3, 3): random ones, 179.9 and 180 degrees about random axes, identity."""
    g = _gen(1)
    q = torch.randn(n, 4, generator=g, dtype=F64)
    axes = torch.randn(8, 3, generator=g, dtype=F64)
    q = torch.cat([q, _axis_angle_quat(axes, 179.9), _axis_angle_quat(axes, 180.0)])
    # coordinate axes at exactly 180 degrees hit the x/y/z branches with exact zeros elsewhere
    q = torch.cat([q, _axis_angle_quat(torch.eye(3, dtype=F64), 180.0)])
    return torch.cat([quat_to_rotmat(q), torch.eye(3, dtype=F64)[None]])


def _random_extrinsics(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = _gen(seed)
    R = quat_to_rotmat(torch.randn(*shape, 4, generator=g, dtype=F64))
    t = torch.randn(*shape, 3, 1, generator=g, dtype=F64)
    return torch.cat([R, t], -1)


# ----------------------------------------------------------------------------------------- rotations


def test_quat_matrix_against_kornia():
    R = _test_rotations()
    q = rotmat_to_quat(R)
    assert q.shape == (R.shape[0], 4)
    assert (q[:, 3] >= 0).all()
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(R.shape[0], dtype=F64))
    q_kornia = rotation_matrix_to_quaternion(R)  # WXYZ
    q_kornia = torch.cat([q_kornia[:, 1:], q_kornia[:, :1]], -1)
    sign = torch.sign((q * q_kornia).sum(-1, keepdim=True))  # equal up to sign
    torch.testing.assert_close(q, sign * q_kornia, atol=1e-6, rtol=0)
    qr = torch.randn(5, 4, generator=_gen(2), dtype=F64)
    expected = quaternion_to_rotation_matrix(torch.cat([qr[:, 3:], qr[:, :3]], -1) / qr.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(quat_to_rotmat(qr), expected)


def test_rotmat_quat_round_trip_near_180():
    R = _test_rotations()
    torch.testing.assert_close(quat_to_rotmat(rotmat_to_quat(R)), R, atol=1e-12, rtol=0)
    # float32 stays accurate at 180 degrees too (largest-diagonal branch)
    R32 = R.float()
    torch.testing.assert_close(quat_to_rotmat(rotmat_to_quat(R32)), R32, atol=2e-6, rtol=0)


def test_rotmat_to_quat_leading_dims_and_values():
    R = _test_rotations()[:12].reshape(3, 4, 3, 3)
    q = rotmat_to_quat(R)
    assert q.shape == (3, 4, 4)
    torch.testing.assert_close(q.reshape(12, 4), rotmat_to_quat(R.reshape(12, 3, 3)))
    # 90 degrees about z: q = (0, 0, sin 45, cos 45)
    Rz = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    torch.testing.assert_close(rotmat_to_quat(Rz), torch.tensor([0, 0, 0.5**0.5, 0.5**0.5], dtype=F64))


# ------------------------------------------------------------------------------------- pose encoding


def test_pose_encoding_round_trip():
    H, W = 28, 42
    R = _test_rotations()
    M = R.shape[0]
    t = torch.randn(M, 3, 1, generator=_gen(3), dtype=F64)
    extr = torch.cat([R, t], -1).reshape(M // 2, 2, 3, 4)  # (B, S, 3, 4)
    f = 20 + 30 * torch.rand(M, 2, generator=_gen(4), dtype=F64)
    K = torch.zeros(M, 3, 3, dtype=F64)
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = f[:, 0], f[:, 1], W / 2, H / 2, 1
    K = K.reshape(M // 2, 2, 3, 3)
    enc = extri_intri_to_pose_encoding(extr, K, (H, W))
    assert enc.shape == (M // 2, 2, 9)
    torch.testing.assert_close(enc[..., :3], extr[..., 3])
    assert (enc[..., 6] >= 0).all()
    torch.testing.assert_close(enc[..., 7], 2 * torch.atan(H / 2 / K[..., 1, 1]))
    torch.testing.assert_close(enc[..., 8], 2 * torch.atan(W / 2 / K[..., 0, 0]))
    extr2, K2 = pose_encoding_to_extri_intri(enc, (H, W))
    torch.testing.assert_close(extr2, extr, atol=1e-12, rtol=0)
    torch.testing.assert_close(K2, K)
    torch.testing.assert_close(extri_intri_to_pose_encoding(extr2, K2, (H, W)), enc)


def test_pose_encoding_identity_and_dtype():
    enc = extri_intri_to_pose_encoding(
        torch.eye(3, 4), torch.tensor([[10.0, 0, 5], [0, 10.0, 5], [0, 0, 1]]), (20, 10)
    )
    expected = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2 * math.atan(1.0), 2 * math.atan(0.5)])
    torch.testing.assert_close(enc, expected)
    assert enc.dtype == torch.float32


def test_gradcheck_decode_and_quat_to_rotmat():
    enc = torch.randn(2, 3, 9, generator=_gen(5), dtype=F64)
    enc[..., 7:] = 0.5 + torch.rand(2, 3, 2, generator=_gen(6), dtype=F64)  # valid FoVs in radians
    enc.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: pose_encoding_to_extri_intri(e, (14, 28)), (enc,))
    q = torch.randn(4, 4, generator=_gen(7), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(quat_to_rotmat, (q,))
    R = _test_rotations(8)[:8].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(rotmat_to_quat, (R,))


# ------------------------------------------------------------------------------------------------ SE(3)


def test_se3_inverse_compose_centres():
    T = _random_extrinsics((2, 5))
    T4 = to_homogeneous(T)
    assert T4.shape == (2, 5, 4, 4)
    torch.testing.assert_close(se3_inverse(T4), torch.linalg.inv(T4))
    torch.testing.assert_close(se3_inverse(T), torch.linalg.inv(T4)[..., :3, :])
    other = _random_extrinsics((5,), seed=1)
    assert se3_compose(T, other).shape == (2, 5, 3, 4)
    torch.testing.assert_close(se3_compose(T4, other), T4 @ to_homogeneous(other))
    torch.testing.assert_close(se3_compose(T, se3_inverse(T)), torch.eye(3, 4, dtype=F64).expand(2, 5, 3, 4))
    centres = camera_centers(T)
    torch.testing.assert_close(centres, torch.linalg.inv(T4)[..., :3, 3])
    # the camera centre maps to the camera origin
    torch.testing.assert_close((T[..., :3] @ centres[..., None])[..., 0] + T[..., 3], torch.zeros(2, 5, 3, dtype=F64))


def test_depth_world_project_round_trip():
    B, S, H, W = 2, 3, 4, 5
    extr = _random_extrinsics((B, S), seed=8)
    K = torch.tensor([[6.0, 0, 2.5], [0, 7.0, 1.5], [0, 0, 1]], dtype=F64).expand(B, S, 3, 3)
    depth = 1 + torch.rand(B, S, H, W, generator=_gen(9), dtype=F64)
    world, cam = depth_to_world_points(depth, extr, K)
    assert world.shape == cam.shape == (B, S, H, W, 3)
    torch.testing.assert_close(cam[..., 2], depth)
    # pixel (row 1, column 3) by hand: X = (3 - 2.5) z / 6, Y = (1 - 1.5) z / 7
    z = depth[0, 0, 1, 3]
    torch.testing.assert_close(cam[0, 0, 1, 3], torch.stack([0.5 * z / 6, -0.5 * z / 7, z]))
    uv, zz = project_points(world.flatten(2, 3), extr, K)  # (B, S, H*W, 2)
    v, u = torch.meshgrid(torch.arange(H, dtype=F64), torch.arange(W, dtype=F64), indexing="ij")
    torch.testing.assert_close(uv, torch.stack([u, v], -1).flatten(0, 1).expand(B, S, H * W, 2))
    torch.testing.assert_close(zz, depth.flatten(2))


# ----------------------------------------------------------------------------------------------- Sim(3)


def test_umeyama_recovers_sim3():
    g = _gen(10)
    src = torch.randn(3, 12, 3, generator=g, dtype=F64)
    R = quat_to_rotmat(torch.randn(3, 4, generator=g, dtype=F64))
    s = torch.tensor([0.5, 1.0, 3.0], dtype=F64)
    t = torch.randn(3, 3, generator=g, dtype=F64)
    dst = s[:, None, None] * (src @ R.transpose(-1, -2)) + t[:, None]
    s_hat, R_hat, t_hat = umeyama_sim3(src, dst)
    torch.testing.assert_close(s_hat, s)
    torch.testing.assert_close(R_hat, R)
    torch.testing.assert_close(t_hat, t)
    # weights: corrupted points with weight 0 do not move the fit
    dst_bad = dst.clone()
    dst_bad[:, :3] += 10
    w = torch.ones(3, 12, dtype=F64)
    w[:, :3] = 0
    s_w, R_w, t_w = umeyama_sim3(src, dst_bad, weights=w)
    torch.testing.assert_close((s_w, R_w, t_w), (s, R, t))
    # rigid fit: scale 1 and exact on a rigid transform
    s_r, R_r, t_r = umeyama_sim3(src, src @ R.transpose(-1, -2) + t[:, None], with_scale=False)
    torch.testing.assert_close((s_r, R_r, t_r), (torch.ones(3, dtype=F64), R, t))


def test_umeyama_reflection_corrected():
    src = torch.randn(10, 3, generator=_gen(11), dtype=F64)
    dst = src * torch.tensor([1.0, 1.0, -1.0], dtype=F64)  # a mirror image: no rotation fits exactly
    _, R, _ = umeyama_sim3(src, dst)
    torch.testing.assert_close(torch.linalg.det(R), torch.tensor(1.0, dtype=F64))


# ------------------------------------------------------------------------------------- normalisation


def _clip_batch(B: int = 2, S: int = 3, H: int = 4, W: int = 5, seed: int = 12) -> dict:
    g = _gen(seed)
    extr = _random_extrinsics((B, S), seed=seed)
    K = torch.tensor([[5.0, 0, 2.5], [0, 5.0, 2.0], [0, 0, 1]], dtype=F64).expand(B, S, 3, 3)
    depths = 1 + 4 * torch.rand(B, S, H, W, generator=g, dtype=F64)
    masks = torch.rand(B, S, H, W, generator=g) > 0.3
    depths = depths * masks
    world, cam = depth_to_world_points(depths, extr, K)
    return {"extrinsics": extr, "intrinsics": K, "depths": depths, "world_points": world, "cam_points": cam,
            "point_masks": masks, "seq_name": ["a", "b"][:B]}


def test_normalize_clip_against_loop_reference():
    batch = _clip_batch()
    out = normalize_clip(batch)
    assert out is not batch and out["seq_name"] is batch["seq_name"] and out["intrinsics"] is batch["intrinsics"]
    eye = torch.eye(3, 4, dtype=F64).expand(2, 3, 4)
    torch.testing.assert_close(out["extrinsics"][:, 0], eye)  # first camera becomes identity
    for b in range(2):  # independent per-clip reference with general 4x4 inverses
        E = to_homogeneous(batch["extrinsics"][b])
        m = batch["point_masks"][b]
        X = batch["world_points"][b][m]  # (M, 3) valid world points
        X0 = X @ E[0, :3, :3].T + E[0, :3, 3]
        s = X0.norm(dim=-1).sum() / (m.sum() + 1e-3)
        torch.testing.assert_close(out["scale"][b], s)
        rel = E @ torch.linalg.inv(E[0])
        torch.testing.assert_close(out["extrinsics"][b, :, :, :3], rel[:, :3, :3])
        torch.testing.assert_close(out["extrinsics"][b, :, :, 3], rel[:, :3, 3] / s)
        torch.testing.assert_close(out["world_points"][b][m], X0 / s)
        torch.testing.assert_close(out["depths"][b], batch["depths"][b] / s)
        torch.testing.assert_close(out["cam_points"][b], batch["cam_points"][b] / s)
    # normalised GT stays self-consistent: depths unproject to the normalised world points
    world, _ = depth_to_world_points(out["depths"], out["extrinsics"], batch["intrinsics"])
    torch.testing.assert_close(world[out["point_masks"]], out["world_points"][out["point_masks"]])
    single = normalize_sample({k: v[1] if torch.is_tensor(v) else v for k, v in batch.items()})
    assert single["scale"].shape == ()
    torch.testing.assert_close(single["world_points"], out["world_points"][1])


def test_normalize_clip_hand_computed_single_frame():
    # one frame, two valid pixels; camera [I | (0, 0, 1)]; world points (0, 0, 1) and (3, 0, 3)
    extr = torch.tensor([[[[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]]]])
    world = torch.tensor([[[[[0.0, 0, 1], [3, 0, 3]]]]])  # (1, 1, 1, 2, 3)
    cam = world + torch.tensor([0.0, 0, 1])
    batch = {"extrinsics": extr, "world_points": world, "cam_points": cam, "depths": cam[..., 2],
             "point_masks": torch.ones(1, 1, 1, 2, dtype=torch.bool)}
    out = normalize_clip(batch)
    s = (2.0 + 5.0) / (2 + 1e-3)  # norms of (0, 0, 2) and (3, 0, 4)
    torch.testing.assert_close(out["scale"], torch.tensor([s]))
    torch.testing.assert_close(out["extrinsics"], torch.eye(3, 4).expand(1, 1, 3, 4))
    torch.testing.assert_close(out["world_points"], torch.tensor([[[[[0.0, 0, 2], [3, 0, 4]]]]]) / s)
    torch.testing.assert_close(out["depths"], torch.tensor([[[[2.0, 4.0]]]]) / s)


def test_normalize_clip_no_valid_first_frame_and_nan():
    batch = _clip_batch()
    batch["point_masks"][1, 0] = False  # clip 1: first frame has no valid pixel
    batch["world_points"][0, 2, 0, 0] = float("nan")
    batch["point_masks"][0, 2, 0, 0] = False
    out = normalize_clip(batch)
    assert not out["point_masks"][1].any()
    assert out["point_masks"][0].equal(batch["point_masks"][0])
    torch.testing.assert_close(out["scale"][1], torch.tensor(1e-6, dtype=F64))  # clamped, as officially
    assert torch.isfinite(out["scale"][0])
    assert out["world_points"][0, 2, 0, 0].eq(0).all()  # NaN -> 0
    for key in ("extrinsics", "world_points", "cam_points", "depths"):
        assert torch.isfinite(out[key]).all(), key


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: se3_inverse(torch.zeros(2, 8, 3, 3)), "T: expected (..., 3, 4) or (..., 4, 4), got (2, 8, 3, 3)"),
        (lambda: camera_centers(torch.zeros(2, 8, 3, 3)),
         "extrinsics: expected (..., 3, 4) or (..., 4, 4), got (2, 8, 3, 3)"),
        (lambda: extri_intri_to_pose_encoding(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), (14, 14)),
         "intrinsics: expected (..., 3, 3), got (2, 3, 4)"),
        (lambda: pose_encoding_to_extri_intri(torch.zeros(2, 8), (14, 14)), "pose_enc: expected (..., 9), got (2, 8)"),
        (lambda: pose_encoding_to_extri_intri(torch.zeros(2, 9), (14,)), "image_hw: expected (H, W)"),
        (lambda: quat_to_rotmat(torch.zeros(3)), "q: expected (..., 4), got (3,)"),
        (lambda: umeyama_sim3(torch.zeros(4, 3), torch.zeros(5, 3)),
         "dst: expected the shape of src (4, 3), got (5, 3)"),
        (lambda: normalize_clip({"extrinsics": torch.zeros(2, 3, 4)}), "batch: missing key 'world_points'"),
        (lambda: normalize_clip({**_clip_batch(), "depths": torch.zeros(2, 3, 4)}),
         "depths: expected (2, 3, 4, 5), got (2, 3, 4)"),
    ],
)
def test_bad_shapes_raise(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


# ------------------------------------------------------------------- conventions the readers share (NumPy too)
def test_nearest_rotation_removes_round_off_and_rejects_what_is_no_rotation() -> None:
    R = quat_to_rotmat(torch.tensor([0.3, -0.2, 0.5, 0.8], dtype=torch.float64))
    stored = R.numpy().astype(np.float16).astype(np.float64)  # PointOdyssey's float16 cameras
    assert np.abs(stored @ stored.T - np.eye(3)).max() > 1e-5
    fixed = nearest_rotation(stored)
    assert isinstance(fixed, np.ndarray) and fixed.dtype == np.float64
    np.testing.assert_allclose(fixed @ fixed.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(fixed, R.numpy(), atol=2e-3)
    torch.testing.assert_close(nearest_rotation(R), R)  # tensors in, tensors out
    for bad, why in ((1.05 * R, "singular values"), (R @ torch.diag(torch.tensor([1.0, 1, -1], dtype=R.dtype)), "det"),
                     (torch.full((3, 3), float("nan"), dtype=R.dtype), "NaN")):
        with pytest.raises(ValueError, match=f"cam: .*{why}"):
            nearest_rotation(bad, "cam")


def test_relative_to_first_is_E_i_E_0_inverse_with_an_exact_first_camera() -> None:
    E = se3_inverse(torch.cat([quat_to_rotmat(torch.randn(2, 5, 4, dtype=torch.float64)),
                               torch.randn(2, 5, 3, 1, dtype=torch.float64)], -1))
    rel = relative_to_first(E)
    expected = to_homogeneous(E) @ torch.linalg.inv(to_homogeneous(E[:, :1]))
    torch.testing.assert_close(rel, expected[..., :3, :])
    assert torch.equal(rel[:, 0], torch.eye(3, 4, dtype=E.dtype).expand(2, 3, 4))
    np.testing.assert_allclose(relative_to_first(E[0].numpy()), rel[0].numpy(), atol=1e-12)


def test_wxyz_quaternions_give_the_same_rotation() -> None:
    q = torch.randn(7, 4, dtype=torch.float64)
    wxyz = q[:, [3, 0, 1, 2]].numpy()
    np.testing.assert_allclose(quat_to_rotmat(wxyz_to_xyzw(wxyz)), quat_to_rotmat(q).numpy(), atol=1e-12)


def test_resize_crop_source_mapping_inverts_resize_crop() -> None:
    from datamodules.transforms import ResizeCrop
    from page4d_lightning.geometry import resize_crop_source_intrinsics, resize_crop_source_points

    plan = ResizeCrop((480, 640), (378, 518), (7, 3), (364, 504), window=(10, 20, 400, 600))
    uv = np.random.default_rng(0).uniform(0, 300, (20, 2))
    back = resize_crop_source_points(plan.points(uv), plan.scale_xy, plan.offset_xy, plan.window_xyhw[:2])
    np.testing.assert_allclose(back, uv, atol=1e-9)
    K = np.array([[500.0, 0, 321.3], [0, 480.0, 239.1], [0, 0, 1]])
    K_back = resize_crop_source_intrinsics(plan.intrinsics(K), plan.scale_xy, plan.offset_xy, plan.window_xyhw[:2])
    np.testing.assert_allclose(K_back, K, atol=1e-9)
