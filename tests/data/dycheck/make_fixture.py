"""Write a tiny DyCheck iPhone scene in the real on-disk layout: the REAL paper-windmill camera JSONs (copied from
KAIR-BAIR/dycheck, see README.md) with synthetic frames rendered through them.

Layout (datasets.md section 10; `dycheck/datasets/iphone.py`)::

    <root>/<scene>/camera/0_00000.json      Nerfies camera (real files: frames 0, 40, 80, 120 of paper-windmill)
    <root>/<scene>/rgb/1x/0_00000.png       RGBA, 720x960 (W x H, portrait), alpha varies
    <root>/<scene>/depth/1x/0_00000.npy     float32 (H, W, 1) projective z-depth in the cameras' raw units
    <root>/<scene>/{scene.json, extra.json} real metadata (not used by the reader)

The scene is a plane through PLANE_POINT (near the real scene centre) with normal PLANE_NORMAL, ray-cast per frame
through DyCheck's pixel centres (+0.5: `Camera.get_pixels(use_center=True)`), i.e. OpenCV-centre intrinsics
cx = principal_point_x - 0.5. As DyCheck's preprocessing does, the depth is clipped at 3 (raw units): a rectangle
CLIPPED (rows, cols) is stored as exactly 3.0 (far background), and a rectangle ZEROED as 0 (a zeroed boundary).
A camera-1 frame (`1_00000.png`, a static witness without depth) is written too: the reader ignores it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from tests.data.sintel.make_fixture import render_plane

REAL = Path(__file__).parent / "paper-windmill"
PLANE_POINT = np.array([-0.2, 0.17, -1.17])
PLANE_NORMAL = np.array([0.3, 0.05, 1.0]) / np.linalg.norm([0.3, 0.05, 1.0])
CLIPPED = (slice(0, 40), slice(0, 60))
ZEROED = (slice(900, 960), slice(700, 720))


def camera_from_json(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Real JSON -> (K with OpenCV pixel centres at 1x, camera-from-world (3, 4)), written out independently."""
    d = json.loads(path.read_text())
    f, (px, py) = d["focal_length"], d["principal_point"]
    K = np.array([[f, d["skew"], px - 0.5], [0.0, f * d["pixel_aspect_ratio"], py - 0.5], [0.0, 0.0, 1.0]])
    R = np.asarray(d["orientation"], np.float64)
    return K, np.concatenate([R, (-R @ np.asarray(d["position"]))[:, None]], axis=1)


def write_fixture(root: Path, scene: str = "paper-windmill") -> dict:
    """Write `<root>/<scene>/...`; return {"names", "intrinsics", "extrinsics", "centres", "depth" (stored, (N,H,W)),
    "rgb" (N,H,W,3)}."""
    out = Path(root) / scene
    shutil.copytree(REAL, out, dirs_exist_ok=True)
    (out / "rgb" / "1x").mkdir(parents=True, exist_ok=True)
    (out / "depth" / "1x").mkdir(parents=True, exist_ok=True)
    truth: dict[str, list] = {"names": [], "intrinsics": [], "extrinsics": [], "centres": [], "depth": [], "rgb": []}
    for path in sorted((out / "camera").glob("0_*.json")):
        name = path.stem
        K, E = camera_from_json(path)
        w, h = json.loads(path.read_text())["image_size"]
        z, colour = render_plane(K, E, (h, w), PLANE_POINT, PLANE_NORMAL)
        depth = np.where(np.isfinite(z), np.minimum(z, 3.0), 0.0).astype(np.float32)
        depth[CLIPPED] = 3.0
        depth[ZEROED] = 0.0
        alpha = np.full((h, w, 1), 255, np.uint8)
        alpha[: h // 2] = 128
        Image.fromarray(np.concatenate([colour, alpha], axis=-1), mode="RGBA").save(out / "rgb" / "1x" / f"{name}.png")
        np.save(out / "depth" / "1x" / f"{name}.npy", depth[..., None])
        for key, value in (("names", name), ("intrinsics", K), ("extrinsics", E), ("depth", depth),
                           ("rgb", colour), ("centres", -E[:, :3].T @ E[:, 3])):
            truth[key].append(value)
    Image.fromarray(np.zeros((8, 6, 4), np.uint8), mode="RGBA").save(out / "rgb" / "1x" / "1_00000.png")
    return {k: (v if k == "names" else np.stack(v)) for k, v in truth.items()}


if __name__ == "__main__":
    import sys

    write_fixture(Path(sys.argv[1] if len(sys.argv) > 1 else "dycheck_fixture"))
