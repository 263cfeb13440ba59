"""Attention mass of the camera and register tokens on dynamic vs static patches, per aggregator block.

Only the special-token query rows of a block's attention are recomputed (from the block's input, with its own norm,
q/k projections, q/k norms, RoPE and the dynamics bias where the block gets it), a chunk of queries at a time: memory
is linear in the number of tokens, never an N x N matrix. Used by `page4d analyze-layers` (its "attention" measure).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from page4d_lightning.models import PAGE4D
from page4d_lightning.models.layers import Block
from page4d_lightning.models.rope import RopeTable
from page4d_lightning.tools.layer_measures import patch_labels

QUERY_KINDS = ("camera", "registers")


def special_attention(
    block: Block,
    x: Tensor,
    pos: Tensor | RopeTable | None,
    rows: Tensor,
    query_weight: Tensor | None = None,
    key_value: Tensor | None = None,
    chunk: int = 256,
) -> Iterator[tuple[int, Tensor]]:
    """The attention probabilities of the query rows `rows` of `block` over all its keys, `chunk` rows at a time.

    x: (B, N, C) the block's input; pos: what the block got (`RopeTable`, (B, N, 2) positions or None); rows: (R,)
    int64; query_weight, key_value: (B, N) the rank-1 bias the block got (logit[i, j] += w_i c_j), or None.
    Yields (start, probabilities (B, heads, r, N) of rows[start : start + r]): softmax(q k^T / sqrt(D) + bias) from the
    block's own norm1, qkv projection, q/k norms and RoPE; q only for the chunk, never an N x N matrix.
    """
    attn = block.attn
    heads, dim, channels = attn.num_heads, attn.head_dim, x.shape[-1]
    xn = block.norm1(x)
    weight, bias = attn.qkv.weight, attn.qkv.bias

    def project(tokens: Tensor, part: int) -> Tensor:  # (B, n, C) -> (B, heads, n, D)
        sl = slice(part * channels, (part + 1) * channels)
        out = F.linear(tokens, weight[sl], None if bias is None else bias[sl])
        return out.unflatten(-1, (heads, dim)).transpose(1, 2)

    def rotate(t: Tensor, index: Tensor | slice) -> Tensor:
        if attn.rope is None:
            return t
        if isinstance(pos, RopeTable):
            return attn.rope(t, RopeTable(pos.cos[:, :, index], pos.sin[:, :, index]))
        return attn.rope(t, pos[:, index])

    k = rotate(attn.k_norm(project(xn, 1)), slice(None))  # (B, heads, N, D)
    for start in range(0, rows.numel(), chunk):
        r = rows[start : start + chunk]
        q = rotate(attn.q_norm(project(xn[:, r], 0)), r)  # (B, heads, r, D)
        logits = (q @ k.transpose(-1, -2)) * dim**-0.5  # (B, heads, r, N)
        if query_weight is not None and key_value is not None:
            logits = logits + (query_weight[:, r, None] * key_value[:, None, :])[:, None]  # (B, 1, r, N)
        yield start, logits.float().softmax(dim=-1)


def attention_mass(
    model: PAGE4D,
    images: Tensor,
    dynamic_masks: Tensor,
    with_bias: bool = False,
    strength: float = 1.0,
    chunk: int = 256,
) -> dict[str, Tensor]:
    """Attention mass of the camera and register tokens on dynamic vs static patches, per block.

    images (B, S, 3, H, W) in [0, 1], dynamic_masks (B, S, H, W) bool. One aggregator forward at mask strength
    `strength` (with_bias) or 0 (without: no bias anywhere); a pre-hook on every block recomputes the special-token
    rows of its attention (`special_attention`, the bias included where the block got it). Frame block queries see
    their own frame's keys, global ones every frame's. A query counts when its keys hold dynamic and static patches.
    Returns sums over those queries, each (2, depth, 2) float64 indexed [frame / global, block, camera / registers]:
    "dynamic", "static": head-mean attention probability on dynamic / static patch keys; "dynamic_keys",
    "static_keys": the numbers of such keys; "queries". See `summarize_attention`.
    """
    agg, depth = model.aggregator, model.config.depth
    b, s, _, height, width = images.shape
    psi, patch = agg.patch_start_idx, model.config.patch_size
    dyn, stat = patch_labels(dynamic_masks.to(images.device).bool(), patch)  # (B, S, h*w)
    special = dyn.new_zeros(b, s, psi)
    key_dyn = torch.cat([special, dyn], dim=2).double()  # (B, S, P)
    key_stat = torch.cat([special, stat], dim=2).double()
    tokens_per_frame = key_dyn.shape[2]
    kind_of = torch.arange(psi, device=images.device).clamp(max=1)  # 0 camera, 1 registers
    sums = {k: torch.zeros(2, depth, 2, dtype=torch.float64)
            for k in ("dynamic", "static", "dynamic_keys", "static_keys", "queries")}

    def accumulate(kind: int, index: int, block: Block, args: tuple) -> None:
        x, pos, *bias = args
        if kind == 0:  # frame block: (B*S, P, C), one frame per row
            rows, kd, ks = torch.arange(psi, device=x.device), key_dyn.flatten(0, 1), key_stat.flatten(0, 1)
            qkind = kind_of
        else:  # global block: (B, S*P, C), special tokens of every frame
            rows = (torch.arange(s, device=x.device)[:, None] * tokens_per_frame + torch.arange(psi, device=x.device))
            rows, kd, ks = rows.flatten(), key_dyn.flatten(1), key_stat.flatten(1)
            qkind = kind_of.repeat(s)
        counts_d, counts_s = kd.sum(-1), ks.sum(-1)  # (n,)
        use = ((counts_d > 0) & (counts_s > 0)).double()[:, None]  # (n, 1)
        for start, probs in special_attention(block, x, pos, rows, *bias, chunk=chunk):
            p = probs.mean(dim=1).double()  # (n, heads, r, N) -> (n, r, N)
            chunk_kind = qkind[start : start + p.shape[1]]  # (r,)
            values = {"dynamic": (p * kd[:, None]).sum(-1), "static": (p * ks[:, None]).sum(-1),
                      "dynamic_keys": counts_d[:, None].expand_as(p[..., 0]),
                      "static_keys": counts_s[:, None].expand_as(p[..., 0]), "queries": torch.ones_like(p[..., 0])}
            for q in (0, 1):
                for name, v in values.items():
                    sums[name][kind, index, q] += float((v * use)[:, chunk_kind == q].sum())

    handles = [
        block.register_forward_pre_hook(lambda m, a, kind=kind, index=i: accumulate(kind, index, m, a))
        for kind, blocks in enumerate((agg.frame_blocks, agg.global_blocks))
        for i, block in enumerate(blocks)
    ]
    previous = agg.mask_strength
    agg.mask_strength = float(strength) if with_bias else 0.0
    try:
        with torch.no_grad():
            agg(images, keep_layers=())
    finally:
        agg.mask_strength = previous
        for handle in handles:
            handle.remove()
    return sums


def summarize_attention(sums: dict[str, Tensor]) -> dict[str, Tensor]:
    """`attention_mass` sums -> (2, depth, 2) "dynamic_share" and "static_share" (mean mass per query) and "ratio"
    = (mass per dynamic patch) / (mass per static patch); NaN where no query counted."""
    queries = sums["queries"].clamp_min(1e-300)
    per_dynamic = sums["dynamic"] / sums["dynamic_keys"].clamp_min(1e-300)
    per_static = sums["static"] / sums["static_keys"].clamp_min(1e-300)
    missing = sums["queries"] == 0
    nan = torch.full_like(queries, math.nan)
    return {"dynamic_share": torch.where(missing, nan, sums["dynamic"] / queries),
            "static_share": torch.where(missing, nan, sums["static"] / queries),
            "ratio": torch.where(missing, nan, per_dynamic / per_static.clamp_min(1e-300))}
