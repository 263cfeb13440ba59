"""Output activations of the prediction heads (the official VGGT semantics).

Dense heads emit (B, C, H, W) maps whose first C-1 channels are the prediction and whose last
channel is the confidence; the camera head emits a 9-vector absT_quaR_FoV per frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

HEAD_ACTIVATIONS = ("norm_exp", "norm", "exp", "relu", "inv_log", "xy_inv_log", "sigmoid", "linear")
CONF_ACTIVATIONS = ("expp1", "expp0", "sigmoid")
POSE_ACTIVATIONS = ("linear", "inv_log", "exp", "relu")


def inv_log(y: torch.Tensor) -> torch.Tensor:
    """Inverse of the signed log transform: sign(y) * (exp(|y|) - 1), elementwise, any shape."""
    return torch.sign(y) * torch.expm1(torch.abs(y))


def expp1(y: torch.Tensor) -> torch.Tensor:
    """1 + exp(y): a confidence in (1, inf), elementwise."""
    return 1 + y.exp()


def base_pose_act(x: torch.Tensor, act_type: str = "linear") -> torch.Tensor:
    """Apply one of `POSE_ACTIVATIONS` elementwise to a slice of the pose encoding."""
    if act_type == "linear":
        return x
    if act_type == "inv_log":
        return inv_log(x)
    if act_type == "exp":
        return torch.exp(x)
    if act_type == "relu":
        return F.relu(x)
    raise ValueError(f"act_type: expected one of {POSE_ACTIVATIONS}, got {act_type!r}")


def activate_pose(
    pred_pose_enc: torch.Tensor,
    trans_act: str = "linear",
    quat_act: str = "linear",
    fl_act: str = "relu",
) -> torch.Tensor:
    """(..., 9) absT_quaR_FoV -> (..., 9): activations on [0:3] translation, [3:7] quaternion, [7:] FoV.

    The default `fl_act="relu"` keeps the predicted field of view (radians) non-negative, as the
    official camera head calls it.
    """
    t = base_pose_act(pred_pose_enc[..., :3], trans_act)
    quat = base_pose_act(pred_pose_enc[..., 3:7], quat_act)
    fov = base_pose_act(pred_pose_enc[..., 7:], fl_act)
    return torch.cat([t, quat, fov], dim=-1)


def _activate_values(xyz: torch.Tensor, activation: str) -> torch.Tensor:
    """Activate the prediction channels (..., C-1) of a dense head."""
    if activation == "norm_exp":
        d = xyz.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        return xyz / d * torch.expm1(d)
    if activation == "norm":
        return xyz / xyz.norm(dim=-1, keepdim=True)
    if activation == "exp":
        return torch.exp(xyz)
    if activation == "relu":
        return F.relu(xyz)
    if activation == "inv_log":
        return inv_log(xyz)
    if activation == "xy_inv_log":
        xy, z = xyz.split([2, 1], dim=-1)
        z = inv_log(z)
        return torch.cat([xy * z, z], dim=-1)
    if activation == "sigmoid":
        return torch.sigmoid(xyz)
    if activation == "linear":
        return xyz
    raise ValueError(f"activation: expected one of {HEAD_ACTIVATIONS}, got {activation!r}")


def _activate_conf(conf: torch.Tensor, conf_activation: str) -> torch.Tensor:
    """Activate the confidence channel (...,) of a dense head."""
    if conf_activation == "expp1":
        return expp1(conf)
    if conf_activation == "expp0":
        return conf.exp()
    if conf_activation == "sigmoid":
        return torch.sigmoid(conf)
    raise ValueError(f"conf_activation: expected one of {CONF_ACTIVATIONS}, got {conf_activation!r}")


def activate_head(
    out: torch.Tensor, activation: str = "norm_exp", conf_activation: str = "expp1"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) head output -> (preds (B, H, W, C-1), conf (B, H, W)).

    `activation` in `HEAD_ACTIVATIONS` applies to the first C-1 channels ("exp" for depth,
    "inv_log" for world points); `conf_activation` in `CONF_ACTIVATIONS` to the last channel.
    """
    if out.dim() != 4 or out.shape[1] < 2:
        raise ValueError(f"out: expected (B, C, H, W) with C >= 2, got {tuple(out.shape)}")
    fmap = out.permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C): channels last
    preds = _activate_values(fmap[..., :-1], activation)
    conf = _activate_conf(fmap[..., -1], conf_activation)
    return preds, conf
