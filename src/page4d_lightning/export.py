"""Exports of a predicted video (`page4d predict --input ... --out DIR`), each written with its field's library.

`export_video(out_dir, prediction, meta)` writes, under a fresh `DIR/<video name>[_N]/` (nothing is overwritten):

    cameras.json                extrinsics (camera-from-world, OpenCV, frame 0 = identity) and intrinsics in input
                                and network pixels per frame, the resize/crop plan, frame indices and timestamps
    trajectory_tum.txt          TUM trajectory (camera-to-world, `timestamp tx ty tz qx qy qz qw`; evo)
    depth/frame_NNNNNN.png      16-bit depth at input resolution; depth = value * `depth_scale` (PNG text chunk);
    depth/frame_NNNNNN.npy      float32 depth at input resolution (0 = outside the crop the model saw)
    confidence/frame_NNNNNN.{png,npy}   the depth confidence (1 + exp), stored the same way (`scale` chunk)
    dynamic_mask/frame_NNNNNN.png       the dynamic mask at input resolution, 8-bit: value / 255 = 0.5 - m
    dynamic_mask_patch/frame_NNNNNN.png the same per 14 x 14 patch (the model's own resolution)
    points.ply                  coloured, confidence-filtered points: the static scene (property dynamic = 0) plus
                                each frame's dynamic points (dynamic = 1, frame = its original index) (plyfile)
    colmap/                     a COLMAP workspace: sparse/0/{cameras,images,points3D}.bin (pycolmap; PINHOLE per
                                frame, input pixels, the static points) and images/frame_NNNNNN.png (the input
                                frames), the layout Gaussian-splatting trainers read (`train.py -s DIR/colmap`)
    tracks.mp4, tracks.json     with query points: tracks drawn on the input frames (PyAV), positions in input pixels
    recording.rrd               Rerun recording: cameras, images, depth, dynamic points over the `frame` timeline
    report.html                 self-contained report: trajectory plot, depth/confidence/mask strips, settings, timing
    manifest.json               every file above, the settings and the timings

NNNNNN is the frame's index in the original video. Depth is in the model's unit (scale-free; frame 0's window).
`prediction` holds numpy arrays per frame (`inference.predict_sequence`'s keys, network resolution) and `meta` the
video item (`datamodules.video.VideoDataset`: `source_frames`, `frame_indices`, `timestamps`, `resize_crop`, ...).
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, PngImagePlugin

from page4d_lightning import visuals
from page4d_lightning.geometry import (
    depth_to_world_points,
    resize_crop_source_intrinsics,
    resize_crop_source_points,
    se3_inverse,
)

__all__ = ["export_video", "fresh_folder", "frame_name", "read_png_scaled", "source_maps", "write_png_scaled"]

DYNAMIC_THRESHOLD = 0.5  # dynamic_mask > 0.5: the mask head calls the patch dynamic (sigmoid < 0.5)


def frame_name(index: int) -> str:
    return f"frame_{int(index):06d}"


def fresh_folder(root: Path, name: str) -> Path:
    """`root/name`, or `root/name_2`, `_3`, ... : the first that does not exist yet (nothing is overwritten)."""
    root.mkdir(parents=True, exist_ok=True)
    path, n = root / name, 1
    while path.exists():
        n += 1
        path = root / f"{name}_{n}"
    path.mkdir()
    return path


class SourceMapping:
    """Network pixels <-> input pixels of the `resize_crop` plan (`datamodules.transforms.ResizeCrop` as a dict)."""

    def __init__(self, plan: Mapping[str, Any]) -> None:
        self.source_hw = tuple(int(v) for v in plan["source_hw"])
        self.out_hw = tuple(int(v) for v in plan["out_hw"])
        h, w = self.source_hw
        window = plan.get("window") or (0, 0, h, w)
        wx, wy, wh, ww = (int(v) for v in window)
        rh, rw = (int(v) for v in plan["resized_hw"])
        self.scale_xy = (rw / ww, rh / wh)
        self.offset_xy = tuple(int(v) for v in plan["offset_xy"])
        self.window_xy = (wx, wy)

    def intrinsics(self, K: np.ndarray) -> np.ndarray:
        return resize_crop_source_intrinsics(K, self.scale_xy, self.offset_xy, self.window_xy)

    def points(self, uv: np.ndarray) -> np.ndarray:
        return resize_crop_source_points(uv, self.scale_xy, self.offset_xy, self.window_xy)

    def crop_box(self) -> list[float]:
        """(x0, y0, x1, y1): the input region (pixel edges) the network input covers."""
        oh, ow = self.out_hw
        corners = self.points(np.array([[-0.5, -0.5], [ow - 0.5, oh - 0.5]])) + 0.5
        return [round(float(v), 3) for v in corners.reshape(-1)]

    def network_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """For every input pixel, its (x, y) in network pixels (cv2.remap maps)."""
        (sx, sy), (x0, y0), (wx, wy) = self.scale_xy, self.offset_xy, self.window_xy
        h, w = self.source_hw
        xs = (sx * (np.arange(w) - wx + 0.5) - 0.5 - x0).astype(np.float32)
        ys = (sy * (np.arange(h) - wy + 0.5) - 0.5 - y0).astype(np.float32)
        return np.broadcast_to(xs[None], (h, w)).copy(), np.broadcast_to(ys[:, None], (h, w)).copy()


def source_maps(maps: np.ndarray, mapping: SourceMapping, nearest: bool = False) -> np.ndarray:
    """(S, H, W) network-resolution maps -> (S, h, w) at input resolution, bilinear (or nearest); 0 outside the
    part of the input the network saw."""
    map_x, map_y = mapping.network_grid()
    H, W = maps.shape[-2:]
    inside = (map_x >= -0.5) & (map_x <= W - 0.5) & (map_y >= -0.5) & (map_y <= H - 0.5)
    mx, my = np.clip(map_x, 0, W - 1), np.clip(map_y, 0, H - 1)
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    out = np.stack([cv2.remap(m.astype(np.float32), mx, my, interpolation, borderMode=cv2.BORDER_REPLICATE)
                    for m in maps])
    return np.where(inside[None], out, 0.0).astype(np.float32)


def write_png_scaled(path: Path, values: np.ndarray, key: str, text: Mapping[str, str] | None = None) -> float:
    """(h, w) values >= 0 -> 16-bit PNG with value = round(values / scale), scale = max / 65535 stored as the PNG text
    chunk `key` (reading: values = png * scale); returns the scale."""
    values = np.nan_to_num(np.asarray(values, np.float64), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0.0)
    peak = float(values.max()) if values.size else 0.0
    scale = peak / 65535.0 if peak > 0 else 1.0
    info = PngImagePlugin.PngInfo()
    info.add_text(key, repr(scale))
    for k, v in (text or {}).items():
        info.add_text(k, str(v))
    image = Image.fromarray(np.round(values / scale).astype(np.uint16))
    image.save(path, pnginfo=info, compress_level=1)  # 3x faster than the default 6, ~3 % larger
    return scale


def read_png_scaled(path: Path, key: str) -> np.ndarray:
    """Inverse of `write_png_scaled` (float64)."""
    with Image.open(path) as image:
        return np.asarray(image, dtype=np.float64) * float(image.text[key])


def _png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------- writers


def write_cameras(folder: Path, extrinsics: np.ndarray, K_source: np.ndarray, K_network: np.ndarray,
                  frames: np.ndarray, timestamps: np.ndarray, mapping: SourceMapping) -> list[Path]:
    """cameras.json (our conventions) and trajectory_tum.txt (written by evo's file_interface)."""
    from evo.core.trajectory import PoseTrajectory3D
    from evo.tools import file_interface

    E = torch.from_numpy(extrinsics).double()
    world_from_cam = se3_inverse(E).numpy()  # (S, 4, 4)
    trajectory = PoseTrajectory3D(poses_se3=list(world_from_cam), timestamps=np.asarray(timestamps, np.float64))
    tum = folder / "trajectory_tum.txt"
    file_interface.write_tum_trajectory_file(str(tum), trajectory)
    cameras = {
        "conventions": "extrinsics: camera-from-world [R|t] (3x4), OpenCV axes (x right, y down, z forward), world = "
                       "camera of the first frame, model units; intrinsics: pixels, OpenCV pixel centres",
        "source_hw": list(mapping.source_hw), "network_hw": list(mapping.out_hw),
        "input_crop_box_xyxy": mapping.crop_box(),
        "frames": [
            {"name": frame_name(f), "frame_index": int(f), "timestamp": float(t),
             "extrinsics": np.round(E_i, 8).tolist(), "intrinsics": np.round(Ks, 6).tolist(),
             "intrinsics_network": np.round(Kn, 6).tolist()}
            for f, t, E_i, Ks, Kn in zip(frames, timestamps, extrinsics, K_source, K_network, strict=True)
        ],
    }
    path = folder / "cameras.json"
    path.write_text(json.dumps(cameras, indent=1))
    return [path, tum]


def write_maps(folder: Path, name: str, maps: np.ndarray, frames: np.ndarray, key: str, unit: str) -> list[Path]:
    """`name/frame_NNNNNN.png` (16-bit, `key` scale chunk) and `.npy` (float32) per frame."""
    out_dir = folder / name
    out_dir.mkdir()
    paths = []
    for frame, values in zip(frames, maps, strict=True):
        png, npy = out_dir / f"{frame_name(frame)}.png", out_dir / f"{frame_name(frame)}.npy"
        write_png_scaled(png, values, key, {"frame_index": int(frame), "meaning": unit})
        np.save(npy, values.astype(np.float32))
        paths += [png, npy]
    return paths


def write_masks(folder: Path, name: str, masks: np.ndarray, frames: np.ndarray) -> list[Path]:
    """8-bit PNGs, value / 255 = the model's dynamic mask (0.5 - m, 1 = dynamic)."""
    out_dir = folder / name
    out_dir.mkdir()
    paths = []
    for frame, mask in zip(frames, masks, strict=True):
        path = out_dir / f"{frame_name(frame)}.png"
        info = PngImagePlugin.PngInfo()
        info.add_text("meaning", "dynamic mask = value / 255 (0.5 - m; 1 = dynamic, 0.5 = neutral)")
        info.add_text("frame_index", str(int(frame)))
        Image.fromarray(np.round(np.clip(mask, 0, 1) * 255).astype(np.uint8)).save(path, pnginfo=info)
        paths.append(path)
    return paths


def select_points(prediction: Mapping[str, np.ndarray], colors: np.ndarray, frames: np.ndarray,
                  conf_percentile: float, max_static: int, max_dynamic_per_frame: int) -> dict[str, np.ndarray]:
    """World points from depth + cameras (network resolution), kept where depth confidence >= its
    `conf_percentile`-th percentile; split by the dynamic mask (upsampled to pixels) into the static scene (all
    frames, strided to at most `max_static`) and per-frame dynamic points."""
    depth = torch.from_numpy(prediction["depth"])
    world, _ = depth_to_world_points(depth, torch.from_numpy(prediction["extrinsics"]),
                                     torch.from_numpy(prediction["intrinsics"]))
    world = world.numpy()
    conf = prediction["depth_conf"]
    S, H, W = conf.shape
    keep = (prediction["depth"] > 0) & np.isfinite(world).all(-1)
    keep &= conf >= np.percentile(conf[keep], conf_percentile) if keep.any() else keep
    mask = prediction.get("dynamic_mask")
    dynamic = (visuals.upsample_patch_mask(torch.from_numpy(mask), H, W).numpy() > DYNAMIC_THRESHOLD
               if mask is not None else np.zeros_like(keep))
    frame_of = np.broadcast_to(frames[:, None, None], (S, H, W))

    def take(sel: np.ndarray, limit: int) -> np.ndarray:
        idx = np.flatnonzero(sel)
        return idx[:: max(1, -(-idx.size // limit))] if idx.size > limit else idx

    static = take(keep & ~dynamic, max_static)
    dyn = np.concatenate([take((keep & dynamic & (frame_of == f)), max_dynamic_per_frame) for f in frames])
    idx = np.concatenate([static, dyn]).astype(np.int64)
    flag = np.concatenate([np.zeros(static.size, np.uint8), np.ones(dyn.size, np.uint8)])
    return {"xyz": world.reshape(-1, 3)[idx].astype(np.float32), "rgb": colors.reshape(-1, 3)[idx],
            "frame": frame_of.reshape(-1)[idx].astype(np.int32), "dynamic": flag}


def write_ply(path: Path, points: Mapping[str, np.ndarray]) -> Path:
    """Binary PLY with x y z, red green blue, frame (original index), dynamic (0 static / 1 dynamic) (plyfile)."""
    from plyfile import PlyData, PlyElement

    n = points["xyz"].shape[0]
    vertex = np.empty(n, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"),
                                ("blue", "u1"), ("frame", "i4"), ("dynamic", "u1")])
    for i, axis in enumerate("xyz"):
        vertex[axis] = points["xyz"][:, i]
    for i, channel in enumerate(("red", "green", "blue")):
        vertex[channel] = points["rgb"][:, i]
    vertex["frame"], vertex["dynamic"] = points["frame"], points["dynamic"]
    PlyData([PlyElement.describe(vertex, "vertex")],
            comments=["page4d predict: static scene (dynamic=0) + per-frame dynamic points; world = first camera"]
            ).write(str(path))
    return path


def write_colmap(folder: Path, extrinsics: np.ndarray, K_source: np.ndarray, source_frames: np.ndarray,
                 frames: np.ndarray, points: Mapping[str, np.ndarray]) -> list[Path]:
    """A COLMAP workspace `colmap/`: the model (binary, written by pycolmap) in `sparse/0/` with one PINHOLE camera
    per frame (input pixels), one image per frame named frame_NNNNNN.png with its pose, the static points (no 2D
    observations); and those images, the input frames `source_frames (S, h, w, 3)` uint8, in `images/`."""
    import pycolmap

    workspace = folder / "colmap"
    out_dir, image_dir = workspace / "sparse" / "0", workspace / "images"
    out_dir.mkdir(parents=True)
    image_dir.mkdir()
    for frame, rgb in zip(frames, source_frames, strict=True):
        Image.fromarray(rgb).save(image_dir / f"{frame_name(frame)}.png", compress_level=1)
    reconstruction = pycolmap.Reconstruction()
    h, w = source_frames.shape[1:3]
    for i, (frame, E, K) in enumerate(zip(frames, extrinsics, K_source, strict=True), start=1):
        camera = pycolmap.Camera(model="PINHOLE", width=int(w), height=int(h), camera_id=i,
                                 params=[float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])])
        reconstruction.add_camera_with_trivial_rig(camera)
        image = pycolmap.Image(name=f"{frame_name(frame)}.png", camera_id=i, image_id=i)
        reconstruction.add_image_with_trivial_frame(image, pycolmap.Rigid3d(np.asarray(E, np.float64)))
    static = points["dynamic"] == 0
    for xyz, rgb in zip(points["xyz"][static].astype(np.float64), points["rgb"][static], strict=True):
        reconstruction.add_point3D(xyz, pycolmap.Track(), rgb.astype(np.uint8))
    reconstruction.write_binary(str(out_dir))
    return sorted(p for p in workspace.rglob("*") if p.is_file())


def write_video(path: Path, frames: np.ndarray, fps: float) -> Path:
    """(S, h, w, 3) uint8 RGB -> H.264 mp4 (PyAV); odd sizes are padded by one pixel."""
    import av

    S, h, w, _ = frames.shape
    ph, pw = h + h % 2, w + w % 2
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=max(1, round(fps)))
        stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
        for rgb in frames:
            padded = np.zeros((ph, pw, 3), np.uint8)
            padded[:h, :w] = rgb
            for packet in stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_tracks(folder: Path, source_frames: np.ndarray, tracks: np.ndarray, vis: np.ndarray,
                 frames: np.ndarray, fps: float) -> list[Path]:
    """tracks.json (input pixels, visibility per frame) and tracks.mp4 (drawn with OpenCV, encoded with PyAV)."""
    rng = np.random.default_rng(0)
    colors = [tuple(int(c) for c in rng.integers(64, 256, 3)) for _ in range(tracks.shape[1])]
    drawn = source_frames.copy()
    radius = max(2, round(max(source_frames.shape[1:3]) / 200))
    for s in range(len(drawn)):
        canvas = np.ascontiguousarray(drawn[s])
        for n, color in enumerate(colors):
            for a in range(max(0, s - 10), s):  # a short tail
                p, q = tracks[a, n], tracks[a + 1, n]
                cv2.line(canvas, (round(p[0]), round(p[1])), (round(q[0]), round(q[1])), color, 1, cv2.LINE_AA)
            x, y = tracks[s, n]
            cv2.circle(canvas, (round(x), round(y)), radius, color, -1 if vis[s, n] > 0.5 else 1, cv2.LINE_AA)
        drawn[s] = canvas
    path_json = folder / "tracks.json"
    path_json.write_text(json.dumps({
        "units": "input pixels (x, y), OpenCV pixel centres; vis in [0, 1]",
        "frames": [{"name": frame_name(f), "frame_index": int(f), "xy": np.round(t, 3).tolist(),
                    "vis": np.round(v, 4).tolist()} for f, t, v in zip(frames, tracks, vis, strict=True)]}))
    return [path_json, write_video(folder / "tracks.mp4", drawn, fps)]


def write_rerun(path: Path, prediction: Mapping[str, np.ndarray], images: np.ndarray, frames: np.ndarray,
                timestamps: np.ndarray, points: Mapping[str, np.ndarray]) -> Path:
    """A Rerun recording of the clip (network resolution): the static points, then per frame (timelines `frame`
    = original index and `time`) the camera pose and pinhole, its image, depth and dynamic points."""
    import rerun as rr

    recording = rr.RecordingStream("page4d_predict")
    recording.save(str(path))
    recording.log("world", rr.ViewCoordinates.RDF, static=True)
    static = points["dynamic"] == 0
    recording.log("world/static_points", rr.Points3D(points["xyz"][static], colors=points["rgb"][static]),
                  static=True)
    world_from_cam = se3_inverse(torch.from_numpy(prediction["extrinsics"]).double()).numpy()
    H, W = images.shape[1:3]
    for s, (frame, t) in enumerate(zip(frames, timestamps, strict=True)):
        recording.set_time("frame", sequence=int(frame))
        recording.set_time("time", duration=float(t))
        recording.log("world/camera", rr.Transform3D(translation=world_from_cam[s, :3, 3],
                                                     mat3x3=world_from_cam[s, :3, :3]))
        recording.log("world/camera/image", rr.Pinhole(image_from_camera=prediction["intrinsics"][s],
                                                       width=W, height=H))
        recording.log("world/camera/image/rgb", rr.Image(images[s]))
        recording.log("world/camera/image/depth", rr.DepthImage(prediction["depth"][s], meter=1.0))
        dyn = (points["dynamic"] == 1) & (points["frame"] == frame)
        recording.log("world/dynamic_points", rr.Points3D(points["xyz"][dyn], colors=points["rgb"][dyn]))
    recording.flush()
    recording.disconnect()
    return path


# ---------------------------------------------------------------------------------------------------- report


def report_strips(images: np.ndarray, prediction: Mapping[str, np.ndarray], frames: np.ndarray,
                  max_columns: int = 6) -> np.ndarray:
    """Rows image / depth / confidence / dynamic mask over up to `max_columns` evenly spread frames (uint8 RGB)."""
    S, H, W = prediction["depth"].shape
    pick = visuals.frame_indices(S, max_columns).tolist()
    depth = torch.from_numpy(prediction["depth"][pick])
    near_far = visuals.robust_range(depth, depth > 0)
    rows = [
        images[pick],
        visuals.colorize_depth(depth, value_range=near_far).numpy(),
        visuals.colorize_confidence(torch.from_numpy(prediction["depth_conf"][pick])).numpy(),
    ]
    if "dynamic_mask" in prediction:
        mask = visuals.upsample_patch_mask(torch.from_numpy(prediction["dynamic_mask"][pick]), H, W)
        rows.append(visuals.overlay_mask(torch.from_numpy(images[pick]), mask, alpha=0.7).numpy())
    gap = 4
    canvas = np.full((len(rows) * (H + gap) - gap, len(pick) * (W + gap) - gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            canvas[r * (H + gap): r * (H + gap) + H, c * (W + gap): c * (W + gap) + W] = tile
    return canvas


def trajectory_plot(extrinsics: np.ndarray, frames: np.ndarray) -> bytes:
    """PNG of the camera centres seen from above (x, z) and from the side (z, -y), coloured by frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = se3_inverse(torch.from_numpy(extrinsics).double()).numpy()[:, :3, 3]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=90)
    for ax, (a, b, la, lb) in zip(axes, ((0, 2, "x", "z (forward)"), (2, 1, "z (forward)", "y (down)")), strict=True):
        ax.plot(centres[:, a], centres[:, b], "-", color="0.7", lw=1)
        points = ax.scatter(centres[:, a], centres[:, b], c=frames, cmap="viridis", s=12)
        ax.set_xlabel(la)
        ax.set_ylabel(lb)
        ax.set_aspect("equal", adjustable="datalim")
        if b == 1:
            ax.invert_yaxis()
    fig.colorbar(points, ax=axes, label="frame")
    fig.suptitle("camera centres (world = first camera, model units)", fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def write_report(path: Path, strips: np.ndarray, trajectory_png: bytes, settings: Mapping[str, Any],
                 timings: Mapping[str, float], files: list[str]) -> Path:
    """One HTML file with the pictures inlined as base64 PNG (no external resource)."""
    def img(data: bytes, alt: str) -> str:
        return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    def table(rows: Mapping[str, Any]) -> str:
        cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                        for k, v in rows.items())
        return f"<table>{cells}</table>"

    timing_rows = {k: f"{v:.3f} s" for k, v in timings.items()}
    body = (
        "<!doctype html><html><head><meta charset='utf-8'><title>PAGE-4D prediction</title><style>"
        "body{font-family:sans-serif;margin:1.5em;max-width:1400px}img{max-width:100%}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:13px}</style></head><body>"
        f"<h1>PAGE-4D prediction: {html.escape(str(settings.get('source', '')))}</h1>"
        f"<h2>Camera trajectory</h2>{img(trajectory_png, 'trajectory')}"
        "<h2>Frames</h2><p>rows: input (network crop), depth (near = bright), depth confidence, dynamic mask "
        f"(red = dynamic)</p>{img(_png_bytes(strips), 'strips')}"
        f"<h2>Settings</h2>{table(settings)}<h2>Timing</h2>{table(timing_rows)}"
        "<h2>Files</h2><ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in files) + "</ul></body></html>"
    )
    path.write_text(body)
    return path


# ------------------------------------------------------------------------------------------------ everything


def _numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def export_video(
    out_dir: str | Path,
    prediction: Mapping[str, Any],
    meta: Mapping[str, Any],
    *,
    timings: Mapping[str, float] | None = None,
    conf_percentile: float = 50.0,
    max_static_points: int = 200_000,
    max_dynamic_points: int = 20_000,
    rerun: bool = True,
    colmap: bool = True,
) -> dict[str, Any]:
    """Write every export of one predicted video (module docstring) into a fresh folder; returns the manifest
    (`folder`, `files`, `settings`, `timings`). `prediction`: per-frame arrays of `inference.predict_sequence`
    (no batch dimension); `meta`: the video item (`source_frames (S,h,w,3)` uint8, `images (S,3,H,W)`,
    `frame_indices`, `timestamps`, `resize_crop`, `source`, `seq_name`, `source_fps`, `sampling`, `window`,
    `overlap`)."""
    start = time.perf_counter()
    pred = {k: np.asarray(_numpy(v), np.float32) for k, v in prediction.items()
            if k in ("extrinsics", "intrinsics", "depth", "depth_conf", "world_points_conf", "dynamic_mask",
                     "tracks", "track_vis", "track_conf")}
    frames = np.asarray(_numpy(meta["frame_indices"]), np.int64).reshape(-1)
    timestamps = np.asarray(_numpy(meta["timestamps"]), np.float64).reshape(-1)
    source_frames = np.asarray(_numpy(meta["source_frames"]), np.uint8)
    images = visuals.images_to_uint8(torch.as_tensor(_numpy(meta["images"]))).numpy()  # (S, H, W, 3)
    mapping = SourceMapping(meta["resize_crop"])
    S = frames.shape[0]
    if pred["extrinsics"].shape[0] != S or source_frames.shape[0] != S:
        raise ValueError(f"export_video: {pred['extrinsics'].shape[0]} predicted frames, {S} frame indices, "
                         f"{source_frames.shape[0]} input frames")
    folder = fresh_folder(Path(out_dir), str(meta.get("seq_name") or "video"))
    K_source = mapping.intrinsics(pred["intrinsics"])
    files: list[Path] = []
    files += write_cameras(folder, pred["extrinsics"], K_source, pred["intrinsics"], frames, timestamps, mapping)
    files += write_maps(folder, "depth", source_maps(pred["depth"], mapping), frames, "depth_scale",
                        "depth = value * depth_scale (model units, z-depth; 0 = outside the crop)")
    files += write_maps(folder, "confidence", source_maps(pred["depth_conf"], mapping), frames, "scale",
                        "depth confidence = value * scale (1 + exp; 0 = outside the crop)")
    if "dynamic_mask" in pred:
        H, W = pred["depth"].shape[1:]
        pixel_mask = visuals.upsample_patch_mask(torch.from_numpy(pred["dynamic_mask"]), H, W).numpy()
        files += write_masks(folder, "dynamic_mask", source_maps(pixel_mask, mapping, nearest=True), frames)
        files += write_masks(folder, "dynamic_mask_patch", pred["dynamic_mask"], frames)
    points = select_points(pred, images, frames, conf_percentile, max_static_points,
                           max(1, max_dynamic_points // max(S, 1)))
    files.append(write_ply(folder / "points.ply", points))
    if colmap:
        files += write_colmap(folder, pred["extrinsics"], K_source, source_frames, frames, points)
    fps = float(meta.get("source_fps") or 30.0)
    if len(timestamps) > 1 and timestamps[-1] > timestamps[0]:
        fps = (len(timestamps) - 1) / (timestamps[-1] - timestamps[0])  # the rate of the selected frames
    if "tracks" in pred:
        tracks_source = mapping.points(pred["tracks"])
        files += write_tracks(folder, source_frames, tracks_source, pred["track_vis"], frames, fps)
    if rerun:
        files.append(write_rerun(folder / "recording.rrd", pred, images, frames, timestamps, points))
    settings = {
        "source": str(meta.get("source", "")), "frames": S, "frame_indices": f"{frames[0]}..{frames[-1]}",
        "source_hw": list(mapping.source_hw), "network_hw": list(mapping.out_hw),
        "input_crop_box_xyxy": mapping.crop_box(), "resize_crop": {k: _numpy(v) for k, v in
                                                                    meta["resize_crop"].items()},
        "window": meta.get("window"), "overlap": meta.get("overlap"), **dict(meta.get("sampling") or {}),
        "conf_percentile": conf_percentile, "dynamic_threshold": DYNAMIC_THRESHOLD,
        "points": {"static": int((points["dynamic"] == 0).sum()), "dynamic": int(points["dynamic"].sum())},
    }
    timings = dict(timings or {})
    names = [str(p.relative_to(folder)) for p in files]
    strips = report_strips(images, pred, frames)
    timings["export_s"] = time.perf_counter() - start  # everything but the report itself
    names += ["report.html", "manifest.json"]
    write_report(folder / "report.html", strips, trajectory_plot(pred["extrinsics"], frames), settings, timings,
                 names)
    manifest = {"folder": str(folder), "files": names, "settings": settings, "timings": timings}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    return manifest
