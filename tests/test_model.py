"""PAGE4D: exact official state dict, tiny-preset forward/backward, dynamics bias, checkpointing, validation."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from page4d_lightning.models import PAGE4D, PAGE4DConfig

REFERENCE = Path(__file__).parent / "data" / "reference" / "page4d_state_dict_keys.json.gz"
H, W = 70, 98  # 5 x 7 patches


@pytest.fixture(scope="module")
def reference() -> dict:
    with gzip.open(REFERENCE, "rt") as f:
        return json.load(f)


def _names_shapes(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def test_full_preset_state_dict_equals_official(reference):
    with torch.device("meta"):
        model = PAGE4D(PAGE4DConfig.vggt_1b())
    ours = _names_shapes(model)
    ref = [(k, tuple(s)) for k, s in reference["keys"]]
    assert len(ours) == reference["num_keys"] == 1803
    assert ours == ref  # names, order and shapes
    assert sum(v.numel() for v in model.state_dict().values()) == reference["num_elements"]
    buffers = {k: list(v.shape) for k, v in model.named_buffers() if k not in model.state_dict()}
    assert buffers == reference["non_persistent_buffers"]
    assert all(k.startswith("aggregator.spatial_mask_head.") for k in reference["absent_in_vggt_1b"])


def test_full_preset_without_track_head(reference):
    with torch.device("meta"):
        model = PAGE4D(PAGE4DConfig.vggt_1b(enable_track=False))
    ref = [(k, tuple(s)) for k, s in reference["keys"] if not k.startswith("track_head.")]
    assert _names_shapes(model) == ref


def test_tiny_preset_shares_official_indices():
    """Block indices and freeze globs mean the same in both presets."""
    tiny, full = PAGE4DConfig.tiny(), PAGE4DConfig.vggt_1b()
    for name in ("depth", "mask_head_after_block", "bias_blocks", "intermediate_layer_idx", "patch_size",
                 "num_register_tokens", "camera_trunk_depth"):
        assert getattr(tiny, name) == getattr(full, name), name
    assert full.bias_blocks == tuple(range(10, 20)) and full.mask_head_after_block == 9


@pytest.fixture(scope="module")
def tiny_model() -> PAGE4D:
    torch.manual_seed(0)
    return PAGE4D(PAGE4DConfig.tiny(enable_track=True))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(1, 3, 3, H, W, generator=torch.Generator().manual_seed(1))


def test_tiny_forward_shapes_and_ranges(tiny_model, images):
    tiny_model.train()
    out = tiny_model(images)
    assert out["pose_enc"].shape == (1, 3, 9)
    assert len(out["pose_enc_list"]) == 4 and all(p.shape == (1, 3, 9) for p in out["pose_enc_list"])
    assert out["depth"].shape == (1, 3, H, W, 1) and out["depth_conf"].shape == (1, 3, H, W)
    assert out["world_points"].shape == (1, 3, H, W, 3) and out["world_points_conf"].shape == (1, 3, H, W)
    assert out["dynamic_mask"].shape == (1, 3, H // 14, W // 14)
    assert "track" not in out and "images" not in out  # no query points; images only in eval mode
    for key, value in out.items():
        for t in value if isinstance(value, list) else [value]:
            assert torch.isfinite(t).all(), key
    assert ((out["dynamic_mask"] > 0) & (out["dynamic_mask"] < 1)).all()
    assert (out["depth"] > 0).all() and (out["depth_conf"] > 1).all()
    assert (out["pose_enc"][..., 7:] >= 0).all()  # FoV through ReLU
    assert all(t.dtype == torch.float32 for t in (out["pose_enc"], out["depth"], out["world_points"]))


def test_tiny_forward_with_query_points_unbatched_eval(tiny_model, images):
    tiny_model.eval()
    query = torch.tensor([[10.0, 20.0], [50.0, 33.0], [90.0, 60.0], [1.0, 1.0]])  # (N, 2) pixels (x, y)
    with torch.no_grad():
        out = tiny_model(images[0], query_points=query)  # (S, 3, H, W) and (N, 2): batch added
    assert out["track"].shape == (1, 3, 4, 2)
    assert len(out["track_list"]) == 4 and all(t.shape == (1, 3, 4, 2) for t in out["track_list"])
    assert out["vis"].shape == (1, 3, 4) and out["conf"].shape == (1, 3, 4)
    assert ((out["vis"] >= 0) & (out["vis"] <= 1)).all()
    assert torch.isfinite(out["track"]).all()
    assert torch.equal(out["images"], images)
    assert out["pose_enc"].shape == (1, 3, 9)


@pytest.fixture(scope="module")
def small_images() -> torch.Tensor:
    return torch.rand(1, 2, 3, 28, 42, generator=torch.Generator().manual_seed(2))


def _small_model(seed: int = 0, **changes) -> PAGE4D:
    torch.manual_seed(seed)
    return PAGE4D(PAGE4DConfig.tiny().replace(enable_depth=False, enable_point=False, **changes))


def test_strength_changes_pose_and_mask_head_in_graph_at_zero(small_images):
    model = _small_model()
    assert model.mask_strength == 0.0
    out0 = model(small_images)
    out0["pose_enc"].sum().backward()
    grads = [p.grad for p in model.aggregator.spatial_mask_head.parameters()]
    assert all(g is not None for g in grads)  # in the graph (zero gradient) at strength 0
    assert all(torch.count_nonzero(g) == 0 for g in grads)
    model.zero_grad(set_to_none=True)
    model.set_mask_strength(1.0)
    out1 = model(small_images)
    assert (out1["pose_enc"] - out0["pose_enc"]).abs().max() > 1e-4
    out1["pose_enc"].sum().backward()
    assert any(torch.count_nonzero(p.grad) > 0 for p in model.aggregator.spatial_mask_head.parameters())
    # The mask itself does not depend on the strength.
    assert torch.allclose(out0["dynamic_mask"], out1["dynamic_mask"])


def test_zero_strength_without_grad_equals_plain_path(small_images):
    """No-grad inference at strength 0 runs plain attention: same numbers as the in-graph zero bias."""
    model = _small_model().eval()
    with torch.no_grad():
        plain = model(small_images)["pose_enc"]
    with torch.enable_grad():
        biased = model(small_images)["pose_enc"]
    assert (plain - biased).abs().max() <= 1e-5


def test_mask_head_reads_detached_tokens(small_images):
    model = _small_model(enable_camera=False)
    out = model(small_images)
    out["dynamic_mask"].sum().backward()
    assert all(p.grad is None for p in model.aggregator.frame_blocks.parameters())
    assert model.aggregator.spatial_mask_head.head0[0].weight.grad.abs().sum() > 0


def test_gradient_checkpointing_identical_outputs_and_grads(small_images):
    ref_model = _small_model(seed=3)
    ref_model.set_mask_strength(0.5)
    ckpt_model = _small_model(seed=3, gradient_checkpointing=True)
    ckpt_model.set_mask_strength(0.5)
    assert ckpt_model.aggregator.gradient_checkpointing
    outs, grads = [], []
    for model in (ref_model, ckpt_model):
        pose = model(small_images)["pose_enc"]
        pose.square().sum().backward()
        outs.append(pose.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert torch.equal(outs[0], outs[1])
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 100
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-7, rtol=1e-5), name
    ckpt_model.set_gradient_checkpointing(False)
    assert not ckpt_model.aggregator.gradient_checkpointing and not ckpt_model.config.gradient_checkpointing


def test_gradient_checkpointing_under_bf16_autocast(small_images):
    model = _small_model(seed=4, gradient_checkpointing=True)
    model.set_mask_strength(1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(small_images)
    assert out["pose_enc"].dtype == torch.float32  # heads run with autocast disabled
    out["pose_enc"].sum().backward()
    assert torch.isfinite(model.aggregator.global_blocks[12].attn.qkv.weight.grad).all()


def test_deterministic_from_seed(small_images):
    a = _small_model(seed=7).eval()
    b = _small_model(seed=7).eval()
    with torch.no_grad():
        assert torch.equal(a(small_images)["pose_enc"], b(small_images)["pose_enc"])
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize(
    ("shape", "fill", "match"),
    [
        ((3, 3, 70, 97), 0.5, r"multiples of 14.*\(1, 3, 3, 70, 97\)"),
        ((1, 3, 3, 71, 98), 0.5, r"multiples of 14"),
        ((3, 70, 98), 0.5, r"expected \(S, 3, H, W\) or \(B, S, 3, H, W\), got \(3, 70, 98\)"),
        ((1, 3, 1, 70, 98), 0.5, r"\(1, 3, 1, 70, 98\)"),
        ((1, 2, 3, 14, 14), -2.0, r"values in \[0, 1\].*-2"),
        ((1, 2, 3, 14, 14), 255.0, r"values in \[0, 1\].*255"),
    ],
)
def test_input_validation(shape, fill, match):
    model = _small_model(enable_camera=False)
    with pytest.raises(ValueError, match=match):
        model(torch.full(shape, fill))


def test_input_validation_tolerates_resampling_overshoot_and_checks_queries():
    model = _small_model(enable_camera=False).eval()
    x = torch.full((1, 2, 3, 14, 28), 1.03)
    with torch.no_grad():
        assert model(x)["dynamic_mask"].shape == (1, 2, 1, 2)
    with pytest.raises(ValueError, match=r"query_points.*\(2, 4, 3\)"):
        model(x, query_points=torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="strength"):
        model.set_mask_strength(-1.0)


def test_models_import_without_lightning():
    """models/ is pure PyTorch: importable with `lightning` blocked."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('lightning', 'pytorch_lightning'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import page4d_lightning.models\n"
        "assert not any(m.split('.')[0] in ('lightning', 'pytorch_lightning') for m in sys.modules)\n"
    )
    src = Path(__file__).resolve().parents[1] / "src"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(src)}, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_the_aggregator_keeps_only_the_layers_the_heads_read(small_images):
    """Memory: of the 24 aggregator outputs the heads read 4 (+ the last for the camera); the others are dropped
    as soon as the next block has run. The kept ones equal those of a forward that keeps everything."""
    torch.manual_seed(0)
    model = PAGE4D(PAGE4DConfig.tiny(enable_track=True)).eval()
    depth = model.aggregator.depth
    dpt_layers = {i % depth for i in model.depth_head.intermediate_layer_idx}
    assert model.layers_read() == dpt_layers | {depth - 1} and len(model.layers_read()) < depth
    kept: list[list[int]] = []
    model.aggregator.register_forward_hook(lambda _m, _i, out: kept.append([i for i, t in enumerate(out[0])
                                                                            if t is not None]))
    query = torch.tensor([[10.0, 12.0], [20.0, 5.0]])
    with torch.no_grad():
        model(small_images)
        model(small_images, query_points=query)
        everything, _, _ = model.aggregator(small_images)
        only_read, _, _ = model.aggregator(small_images, keep_layers=model.layers_read())
    assert kept[0] == sorted(model.layers_read())
    track_layers = {i % depth for i in model.track_head.feature_extractor.intermediate_layer_idx}
    assert kept[1] == sorted(model.layers_read(query) | track_layers)
    for i in range(depth):
        if i in model.layers_read():
            assert torch.equal(only_read[i], everything[i])
        else:
            assert only_read[i] is None and everything[i] is not None
