"""DPT and track heads: official state-dict layout, shapes/activations, chunking, gradients, and the
small building blocks against direct computations."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import torch

from page4d_lightning.models.heads.dpt import DPTHead
from page4d_lightning.models.heads.dpt_blocks import ResidualConvUnit
from page4d_lightning.models.heads.pos_embed import (
    create_uv_grid,
    get_2d_embedding,
    get_2d_sincos_pos_embed,
    make_sincos_pos_embed,
    position_grid_to_embed,
)
from page4d_lightning.models.heads.track import TrackHead
from page4d_lightning.models.heads.track_modules import CorrBlock, sample_features4d

FIXTURE = Path(__file__).parent / "data" / "reference" / "heads_state_dict.json.gz"

TINY_DPT = dict(dim_in=64, features=16, out_channels=(8, 16, 32, 32), intermediate_layer_idx=(0, 1, 2, 3))
TINY_TRACK = dict(
    dim_in=64,
    features=16,
    out_channels=(8, 16, 32, 32),
    intermediate_layer_idx=(0, 1, 2, 3),
    hidden_size=32,
    depth=2,
    num_heads=4,
    num_virtual_tracks=4,
    corr_levels=3,
    corr_radius=2,
    iters=3,
)
PATCH_START = 5  # 1 camera + 4 register tokens precede the patches
QUERIES = torch.tensor([[[10.0, 20.0], [50.5, 33.25], [90.0, 61.0]]])  # (1, 3, 2) pixels of a 98x70 image


def _inputs(seed: int = 0, B: int = 1, S: int = 3, H: int = 70, W: int = 98, dim: int = 64):
    """Four token layers (B, S, PATCH_START + H/14 * W/14, dim) and images (B, S, 3, H, W)."""
    g = torch.Generator().manual_seed(seed)
    P = PATCH_START + (H // 14) * (W // 14)
    tokens = [torch.randn(B, S, P, dim, generator=g) for _ in range(4)]
    return tokens, torch.rand(B, S, 3, H, W, generator=g)


def _assert_all_params_get_grad(module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{name}: no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient"


# ----------------------------------------------------------------------------- official layout


def test_state_dict_names_and_shapes_match_official() -> None:
    with gzip.open(FIXTURE, "rt") as f:
        reference = [(k, list(s)) for k, s in json.load(f)["keys"]]
    with torch.device("meta"):
        heads = {
            "point_head": DPTHead(dim_in=2048, output_dim=4),
            "depth_head": DPTHead(dim_in=2048, output_dim=2, activation="exp"),
            "track_head": TrackHead(dim_in=2048),
        }
    ours = [(f"{prefix}.{k}", list(v.shape)) for prefix, head in heads.items() for k, v in head.state_dict().items()]
    assert len(ours) == len(reference) == 518
    for mine, ref in zip(ours, reference):
        assert mine == ref


# ----------------------------------------------------------------------------- DPT head


def test_dpt_depth_shapes_and_activations() -> None:
    torch.manual_seed(0)
    head = DPTHead(output_dim=2, activation="exp", **TINY_DPT)
    tokens, images = _inputs()
    depth, conf = head(tokens, images, PATCH_START)
    assert depth.shape == (1, 3, 70, 98, 1)
    assert conf.shape == (1, 3, 70, 98)
    assert (depth > 0).all() and torch.isfinite(depth).all()
    assert (conf > 1).all() and torch.isfinite(conf).all()


def test_dpt_points_shapes() -> None:
    torch.manual_seed(0)
    head = DPTHead(output_dim=4, activation="inv_log", **TINY_DPT)
    tokens, images = _inputs(1)
    points, conf = head(tokens, images, PATCH_START)
    assert points.shape == (1, 3, 70, 98, 3)
    assert conf.shape == (1, 3, 70, 98)
    assert (conf > 1).all() and torch.isfinite(points).all()
    assert (points < 0).any() and (points > 0).any()  # inv_log keeps the sign


@pytest.mark.parametrize("feature_only", [False, True])
def test_dpt_chunked_equals_unchunked(feature_only: bool) -> None:
    torch.manual_seed(0)
    head = DPTHead(
        output_dim=2, activation="exp", feature_only=feature_only, down_ratio=2 if feature_only else 1, **TINY_DPT
    )
    tokens, images = _inputs(2, B=2)
    full = head(tokens, images, PATCH_START, frames_chunk_size=None)
    for chunk in (1, 2):
        out = head(tokens, images, PATCH_START, frames_chunk_size=chunk)
        if feature_only:
            torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-5)
        else:
            torch.testing.assert_close(out[0], full[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out[1], full[1], rtol=1e-5, atol=1e-5)


def test_dpt_feature_only_down_ratio_shape() -> None:
    torch.manual_seed(0)
    head = DPTHead(feature_only=True, down_ratio=2, pos_embed=False, **TINY_DPT)
    tokens, images = _inputs()
    feats = head(tokens, images, PATCH_START)
    assert feats.shape == (1, 3, 16, 35, 49)


def test_dpt_gradients_reach_all_parameters() -> None:
    torch.manual_seed(0)
    head = DPTHead(output_dim=4, **TINY_DPT)
    tokens, images = _inputs(3)
    tokens = [t.requires_grad_() for t in tokens]
    points, conf = head(tokens, images, PATCH_START, frames_chunk_size=2)
    (points.square().mean() + conf.mean()).backward()
    _assert_all_params_get_grad(head)
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in tokens)


def test_dpt_rejects_bad_inputs() -> None:
    head = DPTHead(output_dim=2, activation="exp", **TINY_DPT)
    tokens, images = _inputs()
    with pytest.raises(ValueError, match="aggregated_tokens_list"):
        head(tokens, images, PATCH_START + 1)
    with pytest.raises(ValueError, match="multiples of patch_size"):
        head(tokens, images[..., :97], PATCH_START)
    with pytest.raises(ValueError, match="aggregated_tokens_list"):
        head(tokens[:3], images, PATCH_START)
    with pytest.raises(ValueError, match="frames_chunk_size"):
        head(tokens, images, PATCH_START, frames_chunk_size=0)
    with pytest.raises(ValueError, match="out_channels"):
        DPTHead(dim_in=64, out_channels=(8, 16, 32))


def test_residual_conv_unit_skips_relu_of_input() -> None:
    """Official unit: conv2(relu(conv1(relu(x)))) + relu(x) (its in-place ReLU rewrites the skip)."""
    torch.manual_seed(0)
    unit = ResidualConvUnit(4)
    x = torch.randn(2, 4, 5, 6)
    x_before = x.clone()
    r = torch.clamp(x, min=0)
    expected = (
        torch.nn.functional.conv2d(
            torch.clamp(torch.nn.functional.conv2d(r, unit.conv1.weight, unit.conv1.bias, padding=1), min=0),
            unit.conv2.weight,
            unit.conv2.bias,
            padding=1,
        )
        + r
    )
    torch.testing.assert_close(unit(x), expected)
    assert torch.equal(x, x_before)  # the caller's tensor is left alone


# ----------------------------------------------------------------------------- track head


def test_track_head_outputs() -> None:
    torch.manual_seed(0)
    head = TrackHead(**TINY_TRACK)
    tokens, images = _inputs(4)
    coords, vis, conf = head(tokens, images, PATCH_START, query_points=QUERIES)
    assert len(coords) == 3
    for c in coords:
        assert c.shape == (1, 3, 3, 2) and torch.isfinite(c).all()
        torch.testing.assert_close(c[:, 0], QUERIES, rtol=0, atol=1e-5)  # tracker starts at the query
    assert vis.shape == conf.shape == (1, 3, 3)
    assert ((vis > 0) & (vis < 1)).all() and ((conf > 0) & (conf < 1)).all()
    # later frames move away from the query (the update transformer is live)
    assert not torch.allclose(coords[-1][:, 1:], QUERIES[:, None].expand(1, 2, 3, 2))

    coords2, _, _ = head(tokens, images, PATCH_START, query_points=QUERIES, iters=2)
    assert len(coords2) == 2
    torch.testing.assert_close(coords2[0], coords[0])


def test_track_head_gradients_reach_all_parameters() -> None:
    torch.manual_seed(0)
    head = TrackHead(**TINY_TRACK)
    tokens, images = _inputs(5)
    coords, vis, conf = head(tokens, images, PATCH_START, query_points=QUERIES)
    loss = sum(c.square().mean() for c in coords) + vis.mean() + conf.mean()
    loss.backward()
    _assert_all_params_get_grad(head)


def test_track_head_deterministic_from_seed() -> None:
    tokens, images = _inputs(6)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        head = TrackHead(**TINY_TRACK)
        outs.append(head(tokens, images, PATCH_START, query_points=QUERIES))
    for a, b in zip(outs[0][0], outs[1][0]):
        assert torch.equal(a, b)
    assert torch.equal(outs[0][1], outs[1][1]) and torch.equal(outs[0][2], outs[1][2])


def test_track_head_without_conf_and_bad_queries() -> None:
    torch.manual_seed(0)
    head = TrackHead(predict_conf=False, **TINY_TRACK)
    tokens, images = _inputs(7)
    _, vis, conf = head(tokens, images, PATCH_START, query_points=QUERIES)
    assert conf is None and vis.shape == (1, 3, 3)
    with pytest.raises(ValueError, match="query_points"):
        head(tokens, images, PATCH_START, query_points=QUERIES[0])
    with pytest.raises(ValueError, match="query_points"):
        head(tokens, images, PATCH_START, query_points=QUERIES.expand(2, -1, -1))


# ----------------------------------------------------------------------------- building blocks


def _manual_bilinear_border(fmap: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """fmap (C, H, W) at pixel (x, y), border padding: clamp, then blend the 4 neighbours."""
    _, H, W = fmap.shape
    x, y = min(max(x, 0.0), W - 1.0), min(max(y, 0.0), H - 1.0)
    x0, y0 = int(math.floor(x)), int(math.floor(y))
    x1, y1 = min(x0 + 1, W - 1), min(y0 + 1, H - 1)
    wx, wy = x - x0, y - y0
    return (
        (1 - wx) * (1 - wy) * fmap[:, y0, x0]
        + wx * (1 - wy) * fmap[:, y0, x1]
        + (1 - wx) * wy * fmap[:, y1, x0]
        + wx * wy * fmap[:, y1, x1]
    )


def test_sample_features4d_matches_manual_bilinear() -> None:
    g = torch.Generator().manual_seed(0)
    fmap = torch.randn(1, 3, 5, 6, generator=g)
    points = [(1.25, 2.5), (4.0, 0.0), (-3.0, 1.5), (5.0, 4.0), (2.7, 9.0)]
    out = sample_features4d(fmap, torch.tensor([points]))
    assert out.shape == (1, 5, 3)
    expected = torch.stack([_manual_bilinear_border(fmap[0], x, y) for x, y in points])
    torch.testing.assert_close(out[0], expected, rtol=1e-5, atol=1e-6)


def test_sincos_embed_hand_case() -> None:
    # D = 4, omega_0 = 100: frequencies 1 and 100 ** -0.5 = 0.1
    emb = make_sincos_pos_embed(4, torch.tensor([0.0, 1.0, 2.0]))
    expected = torch.tensor([[math.sin(p), math.sin(0.1 * p), math.cos(p), math.cos(0.1 * p)] for p in (0.0, 1.0, 2.0)])
    torch.testing.assert_close(emb, expected)


def test_uv_grid_and_grid_embedding_hand_case() -> None:
    uv = create_uv_grid(3, 2, aspect_ratio=1.5)  # (H=2, W=3, 2)
    d = math.sqrt(1.5**2 + 1)
    sx, sy = 1.5 / d * 2 / 3, 1 / d / 2
    expected = torch.tensor([[[-sx, -sy], [0.0, -sy], [sx, -sy]], [[-sx, sy], [0.0, sy], [sx, sy]]])
    torch.testing.assert_close(uv, expected)
    emb = position_grid_to_embed(uv, 8)  # (2, 3, 8): x block then y block, 2 frequencies each
    u, v = uv[1, 2].tolist()
    row = [math.sin(u), math.sin(0.1 * u), math.cos(u), math.cos(0.1 * u)]
    row += [math.sin(v), math.sin(0.1 * v), math.cos(v), math.cos(0.1 * v)]
    torch.testing.assert_close(emb[1, 2], torch.tensor(row))


def test_tracker_pos_embed_hand_case() -> None:
    emb = get_2d_sincos_pos_embed(8, (2, 3))  # (1, 8, H=2, W=3), base 10000: frequencies 1 and 0.01
    assert emb.shape == (1, 8, 2, 3)
    x, y = 2.0, 1.0  # column 2, row 1
    expected = [math.sin(x), math.sin(0.01 * x), math.cos(x), math.cos(0.01 * x)]
    expected += [math.sin(y), math.sin(0.01 * y), math.cos(y), math.cos(0.01 * y)]
    torch.testing.assert_close(emb[0, :, 1, 2], torch.tensor(expected))


def test_flow_embedding_hand_case() -> None:
    # C = 4: frequencies 0 and 2 * 1000 / 4 = 500, interleaved sin/cos, x block then y block
    xy = torch.tensor([[[0.003, -0.002]]])
    pe = get_2d_embedding(xy, 4, cat_coords=True)
    x, y = 0.003, -0.002
    expected = [x, y, 0.0, 1.0, math.sin(500 * x), math.cos(500 * x), 0.0, 1.0, math.sin(500 * y), math.cos(500 * y)]
    torch.testing.assert_close(pe[0, 0], torch.tensor(expected))


def test_corr_block_hand_case() -> None:
    C, H, W = 2, 4, 6
    fmap = torch.arange(C * H * W, dtype=torch.float32).reshape(1, 1, C, H, W) / 10
    target = torch.tensor([1.0, -0.5]).reshape(1, 1, 1, C)
    corr = [
        [(fmap[0, 0, 0, r, c] - 0.5 * fmap[0, 0, 1, r, c]).item() / math.sqrt(C) for c in range(W)] for r in range(H)
    ]
    pooled = [
        [sum(corr[2 * r + a][2 * c + b] for a in (0, 1) for b in (0, 1)) / 4 for c in range(W // 2)]
        for r in range(H // 2)
    ]

    block = CorrBlock(fmap, num_levels=2, radius=1)
    x, y = 0, 2  # level 0 window reaches x = -1 (zero padded); level 1 centre (0, 1)
    out = block.corr_sample(target, torch.tensor([[[[float(x), float(y)]]]]))
    assert out.shape == (1, 1, 1, 2 * 9)

    def window(grid: list[list[float]], cx: int, cy: int) -> list[float]:
        # index i * 3 + j offsets x by i - 1 and y by j - 1 (official layout)
        vals = []
        for i in range(3):
            for j in range(3):
                xx, yy = cx + i - 1, cy + j - 1
                inside = 0 <= xx < len(grid[0]) and 0 <= yy < len(grid)
                vals.append(grid[yy][xx] if inside else 0.0)
        return vals

    expected = window(corr, x, y) + window(pooled, x // 2, y // 2)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_corr_block_rejects_too_many_levels() -> None:
    with pytest.raises(ValueError, match="too small"):
        CorrBlock(torch.zeros(1, 1, 4, 6, 8), num_levels=4)
