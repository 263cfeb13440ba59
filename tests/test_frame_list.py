"""`frame_list`: a `<sequence> <frame id>` file selects exactly the listed frames (dataset names, `@N` positions,
`*`), one clip per listed sequence in file order; bad lines name the file, the line and the sequence."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import datamodules.sintel  # registers "sintel"
import datamodules.tum  # noqa: F401  (registers "tum")
from datamodules import DATASETS
from datamodules.io import ClipFormatError
from datamodules.sequence import read_frame_list
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
