"""Camera head: iterative refinement of the absT_quaR_FoV pose encoding from camera tokens (VGGT)."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import Block, Mlp
from .activations import activate_pose

POSE_ENCODING_DIMS = {"absT_quaR_FoV": 9}


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x * (1 + scale) + shift (DiT)."""
    return x * (1 + scale) + shift


class CameraHead(nn.Module):
    """Camera tokens of the last aggregator layer -> list of `num_iterations` encodings (B, S, 9).

    Each iteration embeds the previous (detached) encoding, modulates the normalised tokens with it
    (adaLN shift / scale / gate), runs a `trunk_depth`-block transformer across the S frames and adds
    a delta; the returned encodings are activated (translation and quaternion linear, FoV ReLU).
    """

    def __init__(
        self,
        dim_in: int = 2048,
        trunk_depth: int = 4,
        pose_encoding_type: str = "absT_quaR_FoV",
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        init_values: float = 0.01,
        trans_act: str = "linear",
        quat_act: str = "linear",
        fl_act: str = "relu",
    ) -> None:
        super().__init__()
        if pose_encoding_type not in POSE_ENCODING_DIMS:
            raise ValueError(
                f"pose_encoding_type: expected one of {tuple(POSE_ENCODING_DIMS)}, got {pose_encoding_type!r}"
            )
        self.target_dim = POSE_ENCODING_DIMS[pose_encoding_type]
        self.trans_act, self.quat_act, self.fl_act = trans_act, quat_act, fl_act
        self.trunk = nn.Sequential(
            *[Block(dim_in, num_heads, mlp_ratio, init_values=init_values) for _ in range(trunk_depth)]
        )
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, self.target_dim))
        self.embed_pose = nn.Linear(self.target_dim, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, self.target_dim)

    def forward(self, aggregated_tokens_list: list[torch.Tensor], num_iterations: int = 4) -> list[torch.Tensor]:
        """aggregated_tokens_list[-1] (B, S, P, 2C) -> `num_iterations` x (B, S, 9) activated encodings."""
        tokens = self.token_norm(aggregated_tokens_list[-1][:, :, 0])  # camera token: (B, S, P, 2C) -> (B, S, 2C)
        batch, frames, _ = tokens.shape
        pred = None
        preds = []
        for _ in range(num_iterations):
            if pred is None:
                module_input = self.embed_pose(self.empty_pose_tokens.expand(batch, frames, -1))
            else:
                pred = pred.detach()  # no backprop through earlier iterations (official)
                module_input = self.embed_pose(pred)
            shift, scale, gate = self.poseLN_modulation(module_input).chunk(3, dim=-1)
            x = gate * modulate(self.adaln_norm(tokens), shift, scale) + tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            pred = delta if pred is None else pred + delta
            preds.append(activate_pose(pred, self.trans_act, self.quat_act, self.fl_act))
        return preds
