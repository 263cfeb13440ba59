"""`page4d analyze-layers`: each measure on a model built so that the right answer is known, the query-chunked
attention against the full matrix and the block's own output, and the command end to end: CSV, PNG and a freeze
policy that `page4d fit --model.finetune` trains with."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from datamodules import DATASETS, collate_clips
from page4d_lightning.finetune import FinetunePolicy, read_finetune_file
from page4d_lightning.metrics.functional import depth_errors
from page4d_lightning.models import PAGE4D, PAGE4DConfig
from page4d_lightning.tools.analyze_layers import COLUMNS, finetune_policy, rank_blocks
from page4d_lightning.tools.attention_mass import attention_mass, special_attention, summarize_attention
from page4d_lightning.tools.layer_measures import (
    gaussian_like_patches,
    layer_sensitivity,
    noise_sensitivity,
    patch_labels,
)
from tests.page4d_process import experiment_copy, explain, run_page4d

pytestmark = pytest.mark.usefixtures("one_thread")

DEPTH = 24
TAP_LEVEL = 2  # the depth head's level fed by layer 17 (intermediate_layer_idx 4, 11, 17, 23)


@pytest.fixture(scope="module")
def clips() -> list[dict]:
    """Two synthetic clips, 2 frames at 56 px, each with dynamic and static patches."""
    dataset = DATASETS["synthetic"](root=None, num_frames=2, image_size=56, split="val", num_clips=4)
    return [collate_clips([dataset[i]]) for i in (1, 2)]


def _model(**overrides) -> PAGE4D:
    torch.manual_seed(0)
    return PAGE4D(PAGE4DConfig.tiny(**overrides)).eval()


def test_noise_keeps_special_tokens_and_matches_patch_statistics() -> None:
    tokens = torch.randn(2, 5 + 4096, 4) * torch.tensor([1.0, 2.0, 0.5, 3.0]) + torch.tensor([0.0, 5.0, -1.0, 2.0])
    out = gaussian_like_patches(tokens, 5, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :5], tokens[:, :5])
    before, after = tokens[:, 5:], out[:, 5:]
    std = before.std(dim=1)
    assert ((after.mean(dim=1) - before.mean(dim=1)).abs() < 0.1 * std).all()  # 4096 draws: ~0.016 std
    assert ((after.std(dim=1) / std - 1).abs() < 0.1).all()
    assert (after - before).abs().mean() > 0.5 * std.mean()  # the content is gone


def test_noise_after_the_only_tap_the_heads_read_changes_nothing(clips: list[dict]) -> None:
    """The depth head and the track head read only layer 17 (the other levels' projections are zeroed): noise on
    blocks 20 and 23 leaves depth and tracks exactly as they were, noise on blocks 4, 11 and 17 changes them."""
    model = _model(enable_track=True)
    with torch.no_grad():
        for head in (model.depth_head, model.track_head.feature_extractor):
            for level, project in enumerate(head.projects):
                if level != TAP_LEVEL:
                    project.weight.zero_()
                    project.bias.zero_()
    result = noise_sensitivity(model, clips, layers=[4, 11, 17, 20, 23])
    for (kind, index), row in result["blocks"].items():
        if index > 17:
            assert row["abs_rel_increase"] == 0.0 and row["track_epe_increase"] == 0.0, (kind, index)
        else:
            assert row["abs_rel_increase"] != 0.0 and row["track_epe_increase"] != 0.0, (kind, index)
    # the clean baseline is the pixel-weighted static AbsRel of `depth_errors`
    total = pixels = 0.0
    for batch in clips:
        with torch.no_grad():
            depth = model(batch["images"])["depth"][..., 0]
        errors = depth_errors(depth, batch["depths"] * batch["point_masks"], dynamic_masks=batch["dynamic_masks"])
        total += float(errors["abs_rel_static"] * errors["valid_pixels_static"])
        pixels += float(errors["valid_pixels_static"])
    assert result["baseline"]["abs_rel_static"] == pytest.approx(total / pixels, rel=1e-9)


def _capture(model: PAGE4D, images: torch.Tensor, blocks: list) -> list[tuple]:
    """(block input args, attention output before `proj`) of each block in one aggregator forward."""
    seen: dict[int, list] = {id(b): [] for b in blocks}
    handles = []
    for block in blocks:
        handles.append(block.register_forward_pre_hook(lambda m, a: seen[id(m)].append(a)))
        handles.append(block.attn.proj.register_forward_pre_hook(lambda m, a, b=block: seen[id(b)].append(a[0])))
    with torch.no_grad():
        model.aggregator(images, keep_layers=())
    for handle in handles:
        handle.remove()
    return [tuple(seen[id(b)]) for b in blocks]


def _full_attention(block, x, pos, query_weight=None, key_value=None) -> torch.Tensor:
    """softmax over the full (N x N) logits of `block` (the naive computation): (B, heads, N, N)."""
    attn = block.attn
    b, n, c = x.shape
    q, k, _ = attn.qkv(block.norm1(x)).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.rope(attn.q_norm(q), pos), attn.rope(attn.k_norm(k), pos)
    logits = q @ k.transpose(-1, -2) / attn.head_dim**0.5
    if query_weight is not None:
        logits = logits + (query_weight[:, :, None] * key_value[:, None, :])[:, None]
    return logits.softmax(dim=-1)


def test_chunked_special_attention_equals_the_full_matrix_and_the_block_output(clips: list[dict]) -> None:
    """Frame block 3 and global block 12 (a bias block, at strength 1 with a sharp mask head): the special-token rows
    computed 3 at a time equal the rows of the full attention matrix, and, times v, the block's own attention output
    (flash-style SDPA with the bias folded into q and k)."""
    model = _model()
    with torch.no_grad():
        model.aggregator.spatial_mask_head.head0[4].weight.mul_(100.0)
    model.set_mask_strength(1.0)
    images = clips[0]["images"]
    frames, psi = images.shape[1], model.aggregator.patch_start_idx
    blocks = [model.aggregator.frame_blocks[3], model.aggregator.global_blocks[12]]
    for copies, block, (args, attn_out) in zip((1, frames), blocks, _capture(model, images, blocks)):
        x, pos, query_weight, key_value = args  # frame block: (B*S, P, C), one frame per row; global: (B, S*P, C)
        tokens = x.shape[1] // copies
        rows = (torch.arange(copies)[:, None] * tokens + torch.arange(psi)).flatten()  # every frame's special tokens
        with torch.no_grad():
            chunks = special_attention(block, x, pos, rows, query_weight, key_value, chunk=3)
            chunked = torch.cat([p for _, p in chunks], dim=2)
            full = _full_attention(block, x, pos, query_weight, key_value)[:, :, rows]
            plain = torch.cat([p for _, p in special_attention(block, x, pos, rows)], dim=2)
            v = block.attn.qkv(block.norm1(x))[..., 2 * x.shape[-1] :]
            v = v.unflatten(-1, (block.attn.num_heads, -1)).transpose(1, 2)  # (B, heads, N, D)
        torch.testing.assert_close(chunked, full, atol=1e-5, rtol=0)
        out = (chunked @ v).transpose(1, 2).flatten(2)  # (B, heads, R, D) -> (B, R, C)
        torch.testing.assert_close(out, attn_out[:, rows], atol=1e-5, rtol=1e-4)
        assert (query_weight is not None) == (block is blocks[1])
        if query_weight is not None:  # the bias matters here: without it the rows differ
            assert (plain - full).abs().max() > 0.1


def test_the_bias_sends_camera_attention_to_the_patches_the_mask_keeps(clips: list[dict]) -> None:
    """A mask head made sharp (m = +-0.5) adds +-32 to the camera logits in global blocks 10-19 at strength 1: those
    blocks give the predicted dynamic patches (almost) no attention and the kept patches nearly all of it; blocks
    before the first bias block see the same input with and without the bias."""
    model = _model()
    with torch.no_grad():
        model.aggregator.spatial_mask_head.head0[4].weight.mul_(1e4)
    images = clips[0]["images"]
    with torch.no_grad():
        predicted = model(images)["dynamic_mask"] > 0.5  # (B, S, h, w): m = -0.5, the bias pushes these away
    assert predicted.flatten(2).any(-1).all() and (~predicted).flatten(2).any(-1).all()
    pixels = predicted.repeat_interleave(14, -2).repeat_interleave(14, -1)  # (B, S, H, W)
    plain = summarize_attention(attention_mass(model, images, pixels))
    biased = summarize_attention(attention_mass(model, images, pixels, with_bias=True, strength=1.0))
    flipped = summarize_attention(attention_mass(model, images, ~pixels, with_bias=True, strength=1.0))
    assert model.mask_strength == 0.0  # restored
    for i in range(10, 20):
        assert biased["ratio"][1, i, 0] < 1e-6 and flipped["ratio"][1, i, 0] > 1e6, i
        assert biased["dynamic_share"][1, i, 0] < 1e-6
        assert 1e-3 < plain["ratio"][1, i, 0] < 1e3, i
    assert torch.equal(plain["ratio"][0, :11], biased["ratio"][0, :11])  # frame blocks 0-10 come before global 10
    assert torch.equal(plain["ratio"][1, :10], biased["ratio"][1, :10])


def test_mask_swap_is_zero_before_the_only_block_that_mixes_tokens(clips: list[dict]) -> None:
    """Every attention branch is off (layer scale 0) except global block 7's: the camera token cannot see the image
    before it, so blanking dynamic patches moves nothing up to global block 6, and moves it from global block 7 on."""
    model = _model()
    with torch.no_grad():
        for kind in ("frame_blocks", "global_blocks"):
            for i, block in enumerate(getattr(model.aggregator, kind)):
                if (kind, i) != ("global_blocks", 7):
                    block.ls1.gamma.zero_()
    rows = {(r["kind"], r["index"]): r for r in layer_sensitivity(model, clips)}
    for (kind, index), row in rows.items():
        sees = index > 7 or (kind, index) == ("global", 7)
        assert (row["dynamic_shift"] > 0) == sees and (row["static_shift"] > 0) == sees, (kind, index)


def test_top_k_blocks_become_a_policy_that_trains_exactly_them(tmp_path: Path) -> None:
    rows = [{"block": f"aggregator.{k}_blocks.{i}", "kind": k, "index": i, "score": float(i if k == "global" else -i)}
            for k in ("frame", "global") for i in range(DEPTH)]
    rows[3]["score"] = None  # not measured: never ranked
    chosen = rank_blocks(rows, "score", top_k=3)
    assert [(r["kind"], r["index"]) for r in chosen] == [("global", 23), ("global", 22), ("global", 21)]
    assert rows[3]["rank"] is None and sum(r["selected"] for r in rows) == 3
    policy = finetune_policy([("global", 23), ("frame", 10), ("frame", 2)])
    assert [g["name"] for g in policy["groups"]] == ["frame_blocks", "global_blocks", "mask_head"]
    assert policy["groups"][0]["params"] == ["aggregator.frame_blocks.2.*", "aggregator.frame_blocks.10.*"]
    assert policy["groups"][1]["lr"] == 1e-5 and policy["groups"][2]["follows_mask_strength"] is True
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    model = PAGE4D(PAGE4DConfig.tiny())
    FinetunePolicy.from_config(str(path)).freeze(model)
    trained = {n.split(".")[1] + "." + n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"frame_blocks.2", "frame_blocks.10", "global_blocks.23", "spatial_mask_head.head0"}
    (tmp_path / "bad.yaml").write_text("trainable: [x]\n")
    with pytest.raises(ValueError, match=r"bad.yaml is not a valid policy"):
        read_finetune_file(str(tmp_path / "bad.yaml"))


def test_the_command_writes_csv_png_and_a_policy_that_trains(tmp_path: Path) -> None:
    config = experiment_copy("synthetic_scratch", tmp_path)
    out = tmp_path / "analysis"
    run = run_page4d("analyze-layers", "--config", str(config), "--out", str(out), "--num-clips", "2",
                     "--layers", "4,17", "--top-k", "3", "--data.init_args.image_size", "56",
                     "--data.init_args.num_frames", "2", cwd=tmp_path)
    assert run.returncode == 0, explain(run)
    assert "RANDOM weights" in run.stdout and f"wrote {out / 'finetune_policy.yaml'}" in run.stdout
    with open(out / "layers.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["block", "kind", "index", *(c for cols in COLUMNS.values() for c in cols),
                              "rank", "selected"]
    assert [r["block"] for r in table] == [f"aggregator.{k}_blocks.{i}" for k in ("frame", "global")
                                           for i in range(DEPTH)]
    noised = [r["block"] for r in table if r["noise_abs_rel_static"]]
    assert noised == [f"aggregator.{k}_blocks.{i}" for k in ("frame", "global") for i in (4, 17)]
    assert all(r["attn_camera_ratio"] and r["swap_ratio"] for r in table)
    selected = sorted(r["block"] for r in table if r["selected"] == "True")
    with Image.open(out / "layers.png") as image:
        assert image.size[0] > 500 and image.mode == "RGB"
    policy = yaml.safe_load((out / "finetune_policy.yaml").read_text())
    assert sorted(policy["trainable"]) == sorted([f"{b}.*" for b in selected] + ["aggregator.spatial_mask_head.*"])

    small = ["--data.init_args.image_size", "28", "--data.init_args.num_frames", "2", "--data.init_args.num_workers",
             "0", "--data.init_args.val.num_clips", "1", "--trainer.enable_progress_bar", "false"]
    fit = run_page4d("fit", "--config", str(config), *small, "--trainer.max_steps", "2",
                     "--model.finetune", str(out / "finetune_policy.yaml"), cwd=tmp_path)
    assert fit.returncode == 0, explain(fit)
    checkpoint = torch.load(tmp_path / "checkpoints" / "synthetic_scratch" / "last.ckpt", weights_only=False)
    assert checkpoint["hyper_parameters"]["finetune"] == policy  # the policy itself, not the file name
    groups = checkpoint["optimizer_states"][0]["param_groups"]
    assert [g["name"] for g in groups] == [g["name"] for g in policy["groups"]]
    expected = PAGE4D(PAGE4DConfig.tiny())
    FinetunePolicy.from_config(policy).freeze(expected)
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in expected.parameters())
    assert checkpoint["global_step"] == 2


def test_unknown_measure_and_missing_split_are_usage_errors(tmp_path: Path) -> None:
    from page4d_lightning.cli import main

    config = experiment_copy("synthetic_scratch", tmp_path)
    assert main(["analyze-layers", "--config", str(config), "--out", str(tmp_path), "--measures", "nois"]) == 2
    assert main(["analyze-layers", "--config", str(config), "--out", str(tmp_path), "--split", "test",
                 "--data.init_args.test", "null"]) == 2
    assert not (tmp_path / "layers.csv").exists()


def test_patch_labels_follow_the_half_rule() -> None:
    mask = torch.zeros(1, 1, 28, 28, dtype=torch.bool)
    mask[..., :14, :8] = True  # patch (0, 0): 8/14 dynamic; patch (0, 1) none
    mask[..., 14:, 14:20] = True  # patch (1, 1): 6/14 dynamic: neither dynamic nor static
    dynamic, static = patch_labels(mask, 14)
    assert dynamic.tolist() == [[[True, False, False, False]]]
    assert static.tolist() == [[[False, True, True, False]]]
