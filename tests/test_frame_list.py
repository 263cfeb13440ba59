"""`frame_list`: a `<sequence> <frame id>` file selects exactly the listed frames (dataset names, `@N` positions,
`*`), one clip per listed sequence in file order; bad lines name the file, the line and the sequence. And the other
evaluation option, `resize: stretch`: the official two steps (VGGT's width-518 bicubic preprocessing with its centre
crop of portrait frames, then the bilinear stretch) reproduced image for image, geometry composed exactly."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import datamodules.sintel  # registers "sintel"
import datamodules.tum  # noqa: F401  (registers "tum")
from datamodules import DATASETS
from datamodules.io import ClipFormatError
from datamodules.sequence import Frame, SequenceDataset, read_frame_list
from datamodules.transforms import OfficialStretch, ResizeCrop
from tests.data.sintel.make_fixture import write_fixture as write_sintel
from tests.data.tum.make_fixture import GAP_FRAME
from tests.data.tum.make_fixture import write_fixture as write_tum


@pytest.fixture(scope="module")
def sintel(tmp_path_factory):
    root = tmp_path_factory.mktemp("sintel_frames")
    write_sintel(root, sequences=("alley_2", "market_5", "temple_3"), num_frames=4)
    return root


def _sintel(root, frame_list, **kwargs):
    kwargs = {"num_frames": 2, "image_size": 28, "normalize": False, "frame_list": str(frame_list), **kwargs}
    return DATASETS["sintel"](root, **kwargs)


def test_names_positions_and_star_select_exactly_the_listed_frames(sintel, tmp_path):
    listing = tmp_path / "frames.txt"
    listing.write_text("# Sintel frames\n\nmarket_5 *   # every frame\nalley_2 frame_0003\nalley_2 @0\n"
                       "alley_2 frame_0004\n")
    ds = _sintel(sintel, listing, stride=3, clips_per_sequence=5)  # num_frames, stride, windows ignored
    assert list(ds.sequences) == ["market_5", "alley_2"] and len(ds) == 2  # file order, temple_3 left out
    market, alley = ds[0], ds[1]
    assert market["seq_name"] == "market_5" and market["ids"].tolist() == [0, 1, 2, 3]
    assert market["frame_names"] == ["frame_0001", "frame_0002", "frame_0003", "frame_0004"]
    assert alley["seq_name"] == "alley_2" and alley["ids"].tolist() == [2, 0, 3]  # listed order
    assert alley["frame_names"] == ["frame_0003", "frame_0001", "frame_0004"]
    assert alley["images"].shape[0] == 3
    reference = DATASETS["sintel"](sintel, num_frames=1, image_size=28, normalize=False)
    assert (alley["depths"][1] == reference.load_clip(0, 1)["depths"][0]).all()  # @0 is alley_2's frame_0001
    narrowed = _sintel(sintel, listing, sequences=["alley_2"])
    assert list(narrowed.sequences) == ["alley_2"] and len(narrowed) == 1


def test_timestamps_name_tum_frames(tmp_path):
    write_tum(tmp_path / "tum", names=("walking_xyz",), num_frames=5)
    seq = "rgbd_dataset_freiburg3_walking_xyz"
    ds = DATASETS["tum"](tmp_path / "tum", num_frames=8, image_size=28, normalize=False)
    names = ds.frame_names(seq)
    assert len(names) == 4 and all(n.startswith("1341847980.") for n in names)  # GAP_FRAME dropped
    listing = tmp_path / "tum.txt"
    listing.write_text(f"{seq} {names[2]}\n{seq} @0\n")
    sample = DATASETS["tum"](tmp_path / "tum", num_frames=8, image_size=28, normalize=False,
                             frame_list=str(listing))[0]
    assert sample["ids"].tolist() == [2, 0] and sample["frame_names"] == [names[2], names[0]]
    assert GAP_FRAME == 3


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("alley_2 @0\ncave_4 frame_0001\n", r"frames\.txt, line 2: sequence 'cave_4' not found"),
        ("alley_2 frame_0009\n", r"frames\.txt, line 1: sequence 'alley_2' has no frame 'frame_0009'"),
        ("# header\nalley_2 @4\n", r"frames\.txt, line 2: sequence 'alley_2' has no frame @4"),
        ("alley_2 @x\n", r"frames\.txt, line 1: sequence 'alley_2' has no frame @x"),
        ("alley_2 frame_0001 extra\n", r"frames\.txt, line 1: expected `<sequence> <frame id>`"),
        ("# nothing\n\n", r"frames\.txt: frame list names no frame"),
    ],
)
def test_bad_lines_name_file_line_and_sequence(sintel, tmp_path, text, pattern):
    listing = tmp_path / "frames.txt"
    listing.write_text(text)
    with pytest.raises(ClipFormatError, match=pattern):
        _sintel(sintel, listing)


def test_missing_list_file(sintel, tmp_path):
    with pytest.raises(ClipFormatError, match=r"nope\.txt: missing frame list"):
        _sintel(sintel, tmp_path / "nope.txt")


FRAMES = Path(__file__).resolve().parents[1] / "experiments" / "eval" / "frames"
NAMING = {  # committed list prefix -> (sequence pattern, frame-name pattern) of the reader it is meant for
    "sintel": (r"[a-z]+_\d", r"frame_\d{4}"),
    "bonn": (r"(?!rgbd_bonn_)[a-z_]+\d?", r"\d+\.\d+"),
    "tum": (r"rgbd_dataset_freiburg3_[a-z_]+", r"\d+\.\d+"),
    "dycheck": (r"[a-z0-9-]+", r"0_\d{5}"),
    "kitti": (r"\d{4}_\d\d_\d\d_drive_\d{4}_sync", r"\d{10}"),
}


@pytest.mark.parametrize("path", sorted(FRAMES.glob("*.txt")), ids=lambda p: p.name)
def test_committed_frame_lists_use_the_readers_naming(path):
    entries = read_frame_list(path)
    seq_pattern, name_pattern = NAMING[path.name.split("_")[0]]
    assert entries
    for line, seq, frame in entries:
        assert re.fullmatch(seq_pattern, seq), f"{path.name}, line {line}: sequence {seq!r}"
        assert frame == "*" or re.fullmatch(r"@\d+", frame) or re.fullmatch(name_pattern, frame), (
            f"{path.name}, line {line}: frame {frame!r}")


class Portrait(SequenceDataset):
    """One 96x72 (H x W) portrait sequence: a random image, a ramp depth and a dynamic square."""

    name = "portrait"

    def find_sequences(self) -> dict[str, int]:
        return {"p": 3}

    def load_frame(self, seq: str, index: int) -> Frame:
        image = np.random.default_rng(index).integers(0, 255, (96, 72, 3), dtype=np.uint8)
        depth = (1.0 + np.arange(96 * 72).reshape(96, 72) / 1000).astype(np.float32)
        mask = np.zeros((96, 72), bool)
        mask[40:56, 30:42] = True
        K = np.array([[70.0, 0.0, 35.2], [0.0, 71.0, 47.9], [0.0, 0.0, 1.0]])
        return Frame(image, K, np.eye(3, 4), depth, mask, source=f"{seq}/{index}")


def test_stretch_reproduces_the_official_two_steps_on_a_portrait_frame(tmp_path):
    """72x96 (W x H) at image_size 56: load_fn's width 56 and H1 = round(96 * 56 / 72 / 14) * 14 = 70, rows 7..62
    kept (a crop, not a stretch: DyCheck's case), then the bilinear resize to 56x56 is the identity."""
    ds = Portrait(str(tmp_path), num_frames=3, image_size=56, normalize=False, resize="stretch", aspect_ratio=1.0)
    sample, frame = ds[0], ds.load_frame("p", 0)
    assert sample["images"].shape == (3, 3, 56, 56)
    official = np.asarray(Image.fromarray(frame.image).resize((56, 70), Image.Resampling.BICUBIC))[7:63]
    np.testing.assert_array_equal((sample["images"][0].permute(1, 2, 0) * 255).round().byte().numpy(), official)
    K, sx, sy = frame.intrinsics, 56 / 72, 70 / 96  # x: 72 -> 56; y: 96 -> 70 (14-rounded), then rows from 7
    want = [[sx * K[0, 0], 0, sx * (K[0, 2] + 0.5) - 0.5], [0, sy * K[1, 1], sy * (K[1, 2] + 0.5) - 0.5 - 7],
            [0, 0, 1]]
    np.testing.assert_allclose(sample["intrinsics"][0].double().numpy(), want, atol=1e-5)
    # depth and masks: the source pixel under each output pixel centre, through both steps (exact nearest)
    rows = np.floor((np.arange(56) + 0.5 + 7) * 96 / 70).astype(int)
    cols = np.floor((np.arange(56) + 0.5) * 72 / 56).astype(int)
    np.testing.assert_array_equal(sample["depths"][0].numpy(), frame.depth[np.ix_(rows, cols)])
    np.testing.assert_array_equal(sample["dynamic_masks"][0].numpy(), frame.dynamic_mask[np.ix_(rows, cols)])
    with pytest.raises(ValueError, match="augment"):
        Portrait(str(tmp_path), image_size=56, resize="stretch", augment="clip")


def test_stretch_of_a_landscape_frame_is_bicubic_then_bilinear():
    image = np.random.default_rng(1).integers(0, 255, (44, 100, 3), dtype=np.uint8)
    plan = OfficialStretch.plan((44, 100), (56, 56), 56)  # 100x44 -> 56x28 (round(24.6 / 14) * 14) -> 56x56
    assert plan.first.out_hw == (28, 56) and plan.out_hw == (56, 56)
    step1 = torch.from_numpy(np.asarray(Image.fromarray(image).resize((56, 28), Image.Resampling.BICUBIC)).copy())
    official = F.interpolate(step1.permute(2, 0, 1)[None].float(), size=(56, 56), mode="bilinear",
                             align_corners=False)[0].permute(1, 2, 0)  # the official resize_or_crop(crop=False)
    assert (torch.from_numpy(plan.image(image)).float() - official).abs().max() <= 1.0  # uint8 rounding only
    # geometry: pixel-centre resizes compose exactly into ONE resize to 56x56
    K = np.array([[90.0, 0.0, 49.3], [0.0, 91.0, 21.7], [0.0, 0.0, 1.0]])
    single = ResizeCrop((44, 100), (56, 56), (0, 0), (56, 56))
    np.testing.assert_allclose(plan.intrinsics(K), single.intrinsics(K), atol=1e-12)
    uv = np.array([[0.0, 0.0], [99.0, 43.0], [49.3, 21.7]])
    np.testing.assert_allclose(plan.points(uv), single.points(uv), atol=1e-12)
    sparse = np.zeros((44, 100), np.float32)  # LiDAR-like returns: re-splatted, never interpolated
    sparse[::5, ::7] = 1.0 + np.arange(sparse[::5, ::7].size).reshape(sparse[::5, ::7].shape)
    out = plan.sparse_depth(sparse)
    assert np.isin(out[out > 0], sparse[sparse > 0]).all() and (out > 0).sum() == (sparse > 0).sum()
