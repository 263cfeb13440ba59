"""Fused rank-1-bias attention vs an explicit dense-bias reference; RoPE and layer basics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from page4d_lightning.models.dynamics import SpatialMaskHead, bias_inputs
from page4d_lightning.models.layers import Attention, Block, biased_sdpa
from page4d_lightning.models.rope import RotaryPositionEmbedding2D, patch_positions

TOL = 1e-5  # float32 max abs error, fused vs dense reference


def dense_reference(q, k, v, query_weight, key_value):
    """softmax(q k^T / sqrt(D) + w_i c_j) v with the N x N bias built explicitly."""
    bias = query_weight[:, None, :, None] * key_value[:, None, None, :]  # (B, 1, N, N)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
    return logits.softmax(dim=-1) @ v


@pytest.mark.parametrize("head_dim", [16, 13, 64])
def test_biased_sdpa_matches_dense_reference(head_dim):
    g = torch.Generator().manual_seed(0)
    b, h, n = 2, 3, 37
    q, k, v = (torch.randn(b, h, n, head_dim, generator=g) for _ in range(3))
    w = torch.zeros(b, n)
    w[:, :5] = 64.0  # special queries biased, as in the aggregator at strength 1
    c = torch.rand(b, n, generator=g) - 0.5
    c[:, :5] = 0.0
    out = biased_sdpa(q, k, v, w, c)
    ref = dense_reference(q, k, v, w, c)
    assert out.shape == (b, h, n, head_dim)
    assert (out - ref).abs().max() <= TOL
    # The bias matters: the plain attention differs on the biased rows only.
    plain = F.scaled_dot_product_attention(q, k, v)
    assert (plain[:, :, :5] - ref[:, :, :5]).abs().max() > 1e-2
    assert (plain[:, :, 5:] - ref[:, :, 5:]).abs().max() <= TOL


def test_biased_sdpa_zero_strength_equals_plain_attention():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 4, 29, 16, generator=g) for _ in range(3))
    c = torch.rand(1, 29, generator=g) - 0.5
    out = biased_sdpa(q, k, v, torch.zeros(1, 29), c)
    assert (out - F.scaled_dot_product_attention(q, k, v)).abs().max() <= TOL


def test_attention_module_fused_vs_dense_with_aggregator_bias():
    """Whole Attention module (qk-norm + RoPE) on tiny global tokens, bias from the mask head."""
    torch.manual_seed(0)
    batch, frames, special, h, w, dim, heads = 1, 3, 5, 3, 4, 32, 4
    p = special + h * w
    attn = Attention(dim, heads, qk_norm=True, rope=RotaryPositionEmbedding2D(100.0)).eval()
    x = torch.randn(batch, frames * p, dim)
    pos = torch.cat([torch.zeros(batch * frames, special, 2, dtype=torch.long),
                     patch_positions(batch * frames, h, w) + 1], dim=1).reshape(batch, frames * p, 2)
    m = torch.rand(batch, frames, h * w) - 0.5
    qw, kv = bias_inputs(m, special, 64.0)
    out = attn(x, pos, qw, kv)

    # Reference: the same projections, then the dense-bias softmax.
    qkv = attn.qkv(x).reshape(batch, frames * p, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    q, k, v = attn.q_norm(qkv[0]), attn.k_norm(qkv[1]), qkv[2]
    q, k = attn.rope(q, pos), attn.rope(k, pos)
    ref = dense_reference(q, k, v, qw, kv).transpose(1, 2).reshape(batch, frames * p, dim)
    ref = attn.proj(ref)
    assert (out - ref).abs().max() <= TOL
    assert (attn(x, pos, torch.zeros_like(qw), kv) - attn(x, pos)).abs().max() <= TOL


def test_bias_inputs_layout():
    m = torch.tensor([[[0.1, -0.2], [0.3, 0.4]]])  # (B=1, S=2, h*w=2)
    qw, kv = bias_inputs(m, 2, 8.0)
    assert qw.tolist() == [[8.0, 8.0, 0.0, 0.0, 8.0, 8.0, 0.0, 0.0]]
    assert torch.allclose(kv, torch.tensor([[0.0, 0.0, 0.1, -0.2, 0.0, 0.0, 0.3, 0.4]]))


def test_mask_head_values_in_range_and_standardised_input():
    torch.manual_seed(0)
    head = SpatialMaskHead(16, hidden=8)
    tokens = torch.randn(2, 3, 5 + 12, 16) * 50 + 7  # scale/offset are removed by the standardisation
    m = head(tokens, 5, 3, 4)
    assert m.shape == (2, 3, 12)
    assert (m > -0.5).all() and (m < 0.5).all()
    m2 = head(tokens / 50 * 3 - 1, 5, 3, 4)
    assert (m - m2).abs().max() < 1e-4
    assert torch.isfinite(head(tokens[:, :, :6], 5, 1, 1)).all()  # one patch: no NaN from the std


def test_rope_is_relative():
    """RoPE scores depend only on position differences: shifting all positions keeps q.k."""
    torch.manual_seed(0)
    rope = RotaryPositionEmbedding2D(100.0)
    q, k = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    pos = torch.randint(0, 5, (1, 6, 2))
    s1 = rope(q, pos) @ rope(k, pos).transpose(-1, -2)
    s2 = rope(q, pos + 3) @ rope(k, pos + 3).transpose(-1, -2)
    assert (s1 - s2).abs().max() < 1e-4
    # Position (0, 0) is the identity rotation (special tokens).
    assert torch.equal(rope(q, torch.zeros(1, 6, 2, dtype=torch.long)), q)


def test_rope_matches_complex_rotation():
    """Independent reference: each 1D half rotates pairs (i, i + d/2) by angle pos * 100^(-2i/d)."""
    torch.manual_seed(0)
    rope = RotaryPositionEmbedding2D(100.0)
    x = torch.randn(1, 1, 3, 8)
    pos = torch.tensor([[[1, 2], [3, 0], [4, 4]]])
    out = rope(x, pos)
    half = 4
    freqs = 100.0 ** (-torch.arange(0, half, 2).float() / half)
    for axis, sl in ((0, slice(0, half)), (1, slice(half, 2 * half))):
        part = x[..., sl]
        z = torch.complex(part[..., : half // 2], part[..., half // 2 :])
        ang = pos[0, :, axis, None].float() * freqs
        rot = z * torch.polar(torch.ones_like(ang), ang)
        ref = torch.cat([rot.real, rot.imag], dim=-1)
        assert (out[..., sl] - ref).abs().max() < 1e-5


def test_rope_table_equals_per_call_rotation():
    """The per-forward table path equals the official per-call form (per half: h cos + rotate_half(h) sin)."""
    torch.manual_seed(0)
    rope = RotaryPositionEmbedding2D(100.0)
    x = torch.randn(2, 3, 10, 16)
    pos = torch.randint(0, 7, (2, 10, 2))

    def rotate_half(h):
        return torch.cat([-h[..., h.shape[-1] // 2 :], h[..., : h.shape[-1] // 2]], dim=-1)

    cos, sin = rope._cos_sin(8, 7, x.device, x.dtype)
    halves = []
    for axis, h in enumerate(x.chunk(2, dim=-1)):
        c, s_ = cos[pos[..., axis]][:, None], sin[pos[..., axis]][:, None]
        halves.append(h * c + rotate_half(h) * s_)
    reference = torch.cat(halves, dim=-1)
    assert torch.equal(rope(x, rope.table(pos, 16)), reference)
    assert torch.equal(rope(x, pos), reference)
    with pytest.raises(ValueError, match="head_dim"):
        rope.table(pos, 18)


def test_block_residual_structure():
    torch.manual_seed(0)
    block = Block(32, 4, init_values=0.0)  # no layer scale -> Identity
    assert not any("ls1" in n for n, _ in block.named_parameters())
    block = Block(32, 4, init_values=0.01, qk_norm=True)
    names = [n for n, _ in block.named_parameters()]
    assert "attn.q_norm.weight" in names and "ls2.gamma" in names
    x = torch.randn(2, 7, 32)
    assert block(x).shape == x.shape
