"""A tiny analytic scene seen by PyTorch3D-convention cameras (shared by the Dynamic Replica and CO3D fixtures).

World: ground plane y = 0, a back wall z = WALL_Z up to y = WALL_TOP (above it nothing: depth 0), and one sphere
(moving or not). Cameras are written the way PyTorch3D/Implicitron stores them: `R`, `T` with
X_view = X_world @ R + T (view +X left, +Y up, +Z forward), focal length / principal point in NDC. Pixels,
depths and projected points are computed here from those native definitions only (PyTorch3D screen space:
pixel i spans [i, i+1]), independently of the readers' conversion code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

WALL_Z, WALL_TOP = 4.0, 1.6
GROUND, WALL, SPHERE, NOTHING = 0, 1, 2, -1


@dataclass
class P3DCamera:
    """A PyTorch3D camera as stored in the annotations, plus the image size (H, W)."""

    R: np.ndarray  # (3, 3), columns = view axes (left, up, forward) in world
    T: np.ndarray  # (3,)
    focal: np.ndarray  # (2,) NDC
    principal: np.ndarray  # (2,) NDC
    fmt: str
    hw: tuple[int, int]

    @property
    def ndc_scale(self) -> np.ndarray:
        h, w = self.hw
        if self.fmt == "ndc_isotropic":
            return np.full(2, min(h, w) / 2.0)
        return np.array([w / 2.0, h / 2.0])

    @property
    def centre(self) -> np.ndarray:
        return -self.R @ self.T  # X_view = R^T X + T vanishes at C

    def viewpoint(self) -> dict:
        """The annotation's `viewpoint` field."""
        return {
            "R": self.R.tolist(),
            "T": self.T.tolist(),
            "focal_length": self.focal.tolist(),
            "principal_point": self.principal.tolist(),
            "intrinsics_format": self.fmt,
        }


def look_at_camera(
    eye: np.ndarray, at: np.ndarray, hw: tuple[int, int], focal_px: tuple[float, float],
    principal_offset_px: tuple[float, float], fmt: str,
) -> P3DCamera:
    """PyTorch3D `look_at_view_transform` (up = +y) with the principal point `principal_offset_px` (screen px,
    +x right, +y down) off the image centre, in intrinsics format `fmt`."""
    eye, at = np.asarray(eye, float), np.asarray(at, float)
    z = (at - eye) / np.linalg.norm(at - eye)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z], axis=1)
    cam = P3DCamera(R, -R.T @ eye, np.zeros(2), np.zeros(2), fmt, hw)
    s = cam.ndc_scale
    cam.focal = np.asarray(focal_px, float) / s
    cam.principal = -np.asarray(principal_offset_px, float) / s  # screen = W/2 - p s
    return cam


def project_screen(cam: P3DCamera, points: np.ndarray) -> np.ndarray:
    """World points (N, 3) -> (N, 3): PyTorch3D screen x, y (pixel i spans [i, i+1]) and view depth z."""
    view = points @ cam.R + cam.T
    ndc = cam.focal * view[:, :2] / view[:, 2:] + cam.principal
    h, w = cam.hw
    screen = np.array([w / 2.0, h / 2.0]) - ndc * cam.ndc_scale
    return np.concatenate([screen, view[:, 2:]], axis=1)


def pixel_rays(cam: P3DCamera) -> np.ndarray:
    """World directions (H, W, 3) through the pixel centres, scaled so that the ray parameter is view depth."""
    h, w = cam.hw
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)  # screen pixel centres
    ndc = (np.array([w / 2.0, h / 2.0]) - np.stack([u, v], -1)) / cam.ndc_scale
    d_view = np.concatenate([(ndc - cam.principal) / cam.focal, np.ones((h, w, 1))], -1)
    return d_view @ cam.R.T  # X - C = R X_view


def cast(origin: np.ndarray, dirs: np.ndarray, centre: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of rays origin + t dirs (..., 3): (t (...), label (...)); t = 0 and NOTHING when none."""
    best = np.full(dirs.shape[:-1], np.inf)
    label = np.full(dirs.shape[:-1], NOTHING)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = -origin[1] / dirs[..., 1]
        t_wall = (WALL_Z - origin[2]) / dirs[..., 2]
        wall_y = origin[1] + t_wall * dirs[..., 1]
        oc = origin - centre
        a = (dirs * dirs).sum(-1)
        b = 2 * (dirs * oc).sum(-1)
        disc = b * b - 4 * a * (oc @ oc - radius**2)
        t_sphere = (-b - np.sqrt(disc)) / (2 * a)
    for t, ok, name in (
        (t_ground, t_ground > 0, GROUND),
        (t_wall, (t_wall > 0) & (wall_y >= 0) & (wall_y <= WALL_TOP), WALL),
        (t_sphere, (disc > 0) & (t_sphere > 0), SPHERE),
    ):
        closer = ok & (t < best)
        best = np.where(closer, t, best)
        label = np.where(closer, name, label)
    return np.where(np.isfinite(best), best, 0.0), label


def render(cam: P3DCamera, centre: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, z-depth (H, W) float64 with 0 = nothing, label (H, W))."""
    dirs = pixel_rays(cam)
    depth, label = cast(cam.centre, dirs, centre, radius)
    world = cam.centre + depth[..., None] * dirs
    checker = ((np.floor(world[..., 0] * 4) + np.floor(world[..., 1] * 4) + np.floor(world[..., 2] * 4)) % 2)
    colours = np.array([[90, 160, 60], [180, 180, 200], [220, 40, 40]], float)  # ground, wall, sphere
    image = colours[np.clip(label, 0, 2)] * (0.6 + 0.4 * checker[..., None])
    image[label == NOTHING] = (120, 170, 255)
    return image.astype(np.uint8), depth, label


def visible(cam: P3DCamera, points: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """(N,) bool: in front, inside the image and not occluded (the first surface along the ray is the point)."""
    screen = project_screen(cam, points)
    h, w = cam.hw
    z = screen[:, 2]
    dirs = (points - cam.centre) / z[:, None]  # ray parameter = view depth
    t_hit, _ = cast(cam.centre, dirs, centre, radius)
    inside = (screen[:, 0] >= 0) & (screen[:, 0] < w) & (screen[:, 1] >= 0) & (screen[:, 1] < h)
    return (z > 0) & inside & (t_hit > z - 1e-6 * np.maximum(z, 1.0))


def surface_points(rng: np.random.Generator, centre: np.ndarray, radius: float, n: int) -> np.ndarray:
    """(3n, 3): n sphere points (first), n ground points, n wall points (world, at the given sphere centre)."""
    d = rng.normal(size=(n, 3))
    sphere = centre + radius * d / np.linalg.norm(d, axis=1, keepdims=True)
    ground = np.stack([rng.uniform(-1.5, 1.5, n), np.zeros(n), rng.uniform(1.0, WALL_Z - 0.2, n)], 1)
    wall = np.stack([rng.uniform(-1.5, 1.5, n), rng.uniform(0.1, WALL_TOP - 0.1, n), np.full(n, WALL_Z)], 1)
    return np.concatenate([sphere, ground, wall])


def write_float16_png(path: Path, depth: np.ndarray) -> np.ndarray:
    """Write depth (H, W) as a 16-bit PNG holding float16 BITS (CO3D / Dynamic Replica); return the stored
    values as float32 (the float16 rounding the reader will see)."""
    half = depth.astype(np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(half.view(np.uint16)).save(path)
    return half.astype(np.float32)


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a file to `keep` of its bytes (a partially written download)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
