"""Any video for `page4d predict`: a video file (decoded with PyAV), a folder of frames, or a glob of images.

    page4d predict --ckpt_path X --input video.mp4 --out DIR          # the shorthand (cli.py) for
    page4d predict --ckpt_path X --data datamodules.video.VideoDataModule --data.input video.mp4 \
        --trainer.callbacks+=page4d_lightning.export.VideoExportWriter --trainer.callbacks.out DIR

Frames are selected by target `fps` (the first frame at or after each 1/fps tick), then every `stride`-th, then
the first `max_frames`; each is resized aspect-preserving to width `image_size` and centre-cropped to a height
that is a multiple of 14 (`transforms.output_size` with the source aspect, `ResizeCrop.plan`: the official `crop`
preprocessing). One item is the whole video: `images (S,3,H,W)` in [0, 1], `frame_indices (S,)` (original frame
numbers), `timestamps (S,)` seconds, the `resize_crop` plan (to go back to input pixels), `source`, `seq_name`,
`window` / `overlap` (the module then predicts in chained windows, `inference.predict_sequence`) and, with
`query_points` (a file of `x y` lines in input pixels of the first selected frame) or `query_grid` (g: a g x g
grid), `query_points (N,2)` in network pixels.
"""

from __future__ import annotations

import glob
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.base import Page4DDataModule
from datamodules.transforms import ResizeCrop, output_size
from page4d_lightning.geometry import resize_crop_source_points

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
FRAME_FOLDER_FPS = 30.0  # the time base of a folder / glob of frames (no timestamps in image files)
EXPECTED_INPUT = ("expected a video file (mp4, mov, avi, mkv, webm, ... decoded with PyAV), a folder of frames "
                  f"({', '.join(IMAGE_SUFFIXES)}) or a quoted glob such as 'frames/*.jpg'")


def _check_options(stride: int, fps: float | None, max_frames: int | None) -> None:
    if stride < 1:
        raise ValueError(f"stride: expected >= 1 (keep every stride-th frame), got {stride}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps: expected a target frame rate > 0, got {fps}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames: expected >= 1, got {max_frames}")


def image_files(input: str) -> list[Path] | None:
    """The frames of a folder or a glob, sorted by name; None when `input` is neither (a video file)."""
    path = Path(input)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{input}: a folder without images; expected frames named *{'|*'.join(IMAGE_SUFFIXES)}")
        return files
    if any(c in input for c in "*?[") and not path.exists():
        files = sorted(Path(p) for p in glob.glob(input) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{input}: the glob matches no image file; {EXPECTED_INPUT}")
        return files
    if not path.exists():
        raise ValueError(f"{input}: no such file or folder; {EXPECTED_INPUT}")
    return None


def read_frames(
    input: str, stride: int = 1, fps: float | None = None, max_frames: int | None = None
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, float]:
    """Decode and select frames: (list of (h, w, 3) uint8 RGB, original indices (S,), timestamps (S,) s, source fps).

    Raises ValueError naming the path and what was expected: unreadable video, zero frames, a folder without
    images, frames of different sizes."""
    _check_options(stride, fps, max_frames)
    files = image_files(input)
    frames: list[np.ndarray] = []
    indices: list[int] = []
    times: list[float] = []
    next_tick = -math.inf  # target fps: keep the first frame at or after each 1/fps tick
    kept = 0

    def take(index: int, time_s: float) -> bool:
        nonlocal kept, next_tick
        if fps is not None:
            if time_s + 1e-6 < next_tick:
                return False
            next_tick = (math.floor(time_s * fps + 1e-6) + 1) / fps
        kept += 1
        return (kept - 1) % stride == 0

    def add(image: np.ndarray, index: int, time_s: float, name: str) -> None:
        if frames and image.shape != frames[0].shape:
            h0, w0 = frames[0].shape[:2]
            raise ValueError(f"{name}: frame {index} is {image.shape[1]}x{image.shape[0]} (WxH) but the first frame "
                             f"is {w0}x{h0}; expected frames of one size")
        frames.append(image)
        indices.append(index)
        times.append(time_s)

    if files is not None:
        source_fps = FRAME_FOLDER_FPS
        for index, file in enumerate(files):
            if max_frames is not None and len(frames) >= max_frames:
                break
            if not take(index, index / source_fps):
                continue
            bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"{file}: cannot read the image; expected a {'/'.join(IMAGE_SUFFIXES)} file")
            add(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), index, index / source_fps, str(file))
    else:
        import av

        try:
            with av.open(input) as container:
                if not container.streams.video:
                    raise ValueError(f"{input}: no video stream; {EXPECTED_INPUT}")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                source_fps = float(rate) if rate else FRAME_FOLDER_FPS
                for index, frame in enumerate(container.decode(stream)):
                    if max_frames is not None and len(frames) >= max_frames:
                        break
                    time_s = float(frame.time) if frame.time is not None else index / source_fps
                    if take(index, time_s):
                        add(frame.to_ndarray(format="rgb24"), index, time_s, input)
        except av.FFmpegError as err:
            raise ValueError(f"{input}: cannot decode the video ({err}); {EXPECTED_INPUT}") from err
    if not frames:
        raise ValueError(f"{input}: zero frames (stride {stride}, fps {fps}, max_frames {max_frames}); "
                         "expected at least one decodable frame")
    return frames, np.asarray(indices, np.int64), np.asarray(times, np.float64), source_fps


def read_query_points(path: str) -> np.ndarray:
    """A text file of `x y` lines (pixels of the input frames; `#` comments) -> (N, 2) float64."""
    rows = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise ValueError(f"{path}: cannot read the query points ({err}); expected a text file of `x y` lines") from err
    for number, line in enumerate(lines, 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        try:
            if len(parts) != 2:
                raise ValueError
            rows.append([float(parts[0]), float(parts[1])])
        except ValueError:
            raise ValueError(f"{path}:{number}: expected `x y` (input pixels), got {line!r}") from None
    if not rows:
        raise ValueError(f"{path}: no query point; expected `x y` lines in input pixels")
    return np.asarray(rows, np.float64)


def grid_points(out_hw: tuple[int, int], size: int) -> np.ndarray:
    """A size x size grid of network pixels, cell centres."""
    if size < 1:
        raise ValueError(f"query_grid: expected >= 1 points per side, got {size}")
    h, w = out_hw
    ys, xs = (np.arange(size) + 0.5) * h / size - 0.5, (np.arange(size) + 0.5) * w / size - 0.5
    return np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)


def source_points(plan: ResizeCrop, uv: np.ndarray) -> np.ndarray:
    """Network pixels (..., 2) -> input pixels: the inverse of `ResizeCrop.points`."""
    return resize_crop_source_points(uv, plan.scale_xy, plan.offset_xy, plan.window_xyhw[:2])


class VideoDataset(Dataset):
    """One item: the whole selected video (module docstring)."""

    def __init__(
        self,
        input: str,
        stride: int = 1,
        fps: float | None = None,
        max_frames: int | None = None,
        image_size: int = 518,
        window: int | None = None,
        overlap: int = 8,
        query_points: str | None = None,
        query_grid: int | None = None,
    ) -> None:
        _check_options(stride, fps, max_frames)
        if window is not None and not 1 <= overlap < window:
            raise ValueError(f"overlap: expected 1 <= overlap < window ({window}), got {overlap}")
        if query_points is not None and query_grid is not None:
            raise ValueError("query_points and query_grid: give one of them")
        self.input, self.stride, self.fps, self.max_frames = str(input), stride, fps, max_frames
        self.image_size, self.window, self.overlap = image_size, window, overlap
        self.query_file = read_query_points(query_points) if query_points is not None else None
        self.query_points, self.query_grid = query_points, query_grid
        output_size((1, 1), image_size, 1.0)  # fail early on a bad image_size
        image_files(self.input)  # fail early on a missing path / an empty folder

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index != 0:
            raise IndexError(f"index: a video is one item, got {index}")
        frames, indices, times, source_fps = read_frames(self.input, self.stride, self.fps, self.max_frames)
        source_hw = frames[0].shape[:2]
        plan = ResizeCrop.plan(source_hw, output_size(source_hw, self.image_size, None))
        images = np.stack([plan.image(f) for f in frames])  # (S, H, W, 3) uint8
        item: dict[str, Any] = {
            "images": torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0,
            "source_frames": torch.from_numpy(np.stack(frames)),  # (S, h, w, 3) uint8, for the exports
            "frame_indices": torch.from_numpy(indices),
            "timestamps": torch.from_numpy(times),
            "source_fps": source_fps,
            "resize_crop": asdict(plan),
            "source": self.input,
            "seq_name": Path(self.input.rstrip("/")).stem.replace("*", "_") or "video",
            "window": self.window,
            "overlap": self.overlap,
            "sampling": {"stride": self.stride, "fps": self.fps, "max_frames": self.max_frames,
                         "image_size": self.image_size},
        }
        if self.query_file is not None:
            uv = plan.points(self.query_file)
            outside = ~plan.inside(uv)
            if outside.any():
                bad = self.query_file[outside][0]
                raise ValueError(f"{self.query_points}: query point ({bad[0]:g}, {bad[1]:g}) falls outside the "
                                 f"centre crop the model sees (input pixels {self.crop_box(plan)})")
            item["query_points"] = torch.from_numpy(uv).float()
        elif self.query_grid is not None:
            item["query_points"] = torch.from_numpy(grid_points(plan.out_hw, self.query_grid)).float()
        return item

    @staticmethod
    def crop_box(plan: ResizeCrop) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the input region the network input covers (pixel edges)."""
        (x0, y0), (x1, y1) = source_points(plan, np.array([[-0.5, -0.5], [plan.out_hw[1] - 0.5,
                                                                            plan.out_hw[0] - 0.5]])) + 0.5
        return float(x0), float(y0), float(x1), float(y1)


def collate_video(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of one video: tensors get a batch dimension, the rest (strings, plans, settings) stays as it is
    (`seq_name` becomes a list, as in clip batches)."""
    if len(items) != 1:
        raise ValueError(f"a video batch holds one video, got {len(items)}")
    item = items[0]
    batch = {k: v[None] if isinstance(v, torch.Tensor) else v for k, v in item.items()}
    batch["seq_name"] = [item["seq_name"]]
    return batch


class VideoDataModule(Page4DDataModule):
    """Predict-only DataModule over one video (module docstring).

    Args:
        input: a video file, a folder of frames or a glob of images.
        stride: keep every stride-th frame (after the fps selection).
        fps: target frames per second (None: every frame).
        max_frames: at most this many frames (None: all).
        image_size: network input width (a multiple of 14); the height keeps the aspect, centre-cropped to a
            multiple of 14 (at most the width).
        window: predict in overlapping windows of this many frames chained by Sim(3) (None: one window).
        overlap: frames shared by consecutive windows.
        query_points: a file of `x y` lines (input pixels of the first frame) to track.
        query_grid: track a g x g grid instead.
        num_workers: DataLoader workers (decoding runs in the worker).
    """

    def __init__(
        self,
        input: str,
        stride: int = 1,
        fps: float | None = None,
        max_frames: int | None = None,
        image_size: int = 518,
        window: int | None = None,
        overlap: int = 8,
        query_points: str | None = None,
        query_grid: int | None = None,
        num_workers: int = 0,
    ) -> None:
        L.LightningDataModule.__init__(self)  # not Page4DDataModule's: no dataset registry, no splits
        self.save_hyperparameters()
        self.num_workers = num_workers
        self.dataset_args = {"input": input, "stride": stride, "fps": fps, "max_frames": max_frames,
                             "image_size": image_size, "window": window, "overlap": overlap,
                             "query_points": query_points, "query_grid": query_grid}
        self.dataset: VideoDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if stage not in (None, "predict"):
            raise ValueError(f"VideoDataModule serves `page4d predict` only, not {stage!r}")
        if self.dataset is None:
            self.dataset = VideoDataset(**self.dataset_args)

    def train_dataloader(self) -> DataLoader:
        raise ValueError("VideoDataModule serves `page4d predict` only")

    val_dataloader = test_dataloader = train_dataloader

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass

    def predict_dataloader(self) -> DataLoader:
        if self.dataset is None:
            self.setup("predict")
        return DataLoader(self.dataset, batch_size=1, num_workers=self.num_workers, collate_fn=collate_video)
