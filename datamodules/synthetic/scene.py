"""Procedural dynamic scenes for the synthetic dataset: room, furniture, moving objects, camera path.

World frame: metres, y points DOWN (like OpenCV camera axes), so a camera with identity rotation looks
along +z with image rows going down. Frame i is at time ``i * FRAME_DT`` seconds. Every random draw comes
from the ``torch.Generator`` passed in; global RNG state is never touched.

A scene is a list of P primitives, each posed per frame by an object-to-world rotation and a centre:
primitive 0 is the room (an axis-aligned box seen from inside: floor, ceiling, 4 walls), then static
furniture boxes (pillars, floor boxes), then moving boxes, then moving spheres. Each primitive carries
the parameters of a solid texture of its object-local coordinates (so texture moves with the object).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from page4d_lightning.geometry import quat_to_rotmat

logger = logging.getLogger(__name__)

FRAME_DT = 0.1  # seconds between consecutive frames
ROOM, BOX, SPHERE = 0, 1, 2  # primitive kinds
NOISE_WAVES = 3  # sinusoids in each texture's noise term
CHECKER_FREQUENCY = (2.0, 6.0)  # default band of the checker frequency, cycles per metre
NOISE_FREQUENCY = (2.0, 12.0)  # default band of the noise stripes' frequencies, cycles per metre


@dataclass
class Scene:
    """One clip's geometry, appearance and camera path (P primitives, S frames).

    Geometry: rotations (S, P, 3, 3) object-to-world; centers (S, P, 3) world metres; half_sizes (P, 3)
    metres (box half extents; sphere radius repeated); kinds (P,) long (ROOM, BOX, SPHERE); dynamic (P,) bool,
    True for the moving primitives, which come last.
    Texture of local coords x (metres), per primitive: colours color_a, color_b (P, 3) in [0, 1] mixed by a
    3D checker of checker_freq (P,) cycles/m shifted by checker_offset (P, 3), modulated by the noise
    mean(wave(noise_k . x + noise_phase)) with noise_k (P, NOISE_WAVES, 3) rad/m (oriented stripes at several
    scales; wave: 2 pi-periodic, see `render._shade`); face_tint (P, 3, 3) [channel, axis]: colour
    gain 1 + tint @ n_local gives each box face its own colour. Light: light_dir (3,) unit towards the light,
    ambient in (0, 1).
    Camera: cam_rotations (S, 3, 3) world-from-camera, OpenCV axes; cam_centers (S, 3); fov_x radians.
    """

    rotations: Tensor
    centers: Tensor
    half_sizes: Tensor
    kinds: Tensor
    dynamic: Tensor
    color_a: Tensor
    color_b: Tensor
    face_tint: Tensor
    checker_freq: Tensor
    checker_offset: Tensor
    noise_k: Tensor
    noise_phase: Tensor
    light_dir: Tensor
    ambient: float
    cam_rotations: Tensor
    cam_centers: Tensor
    fov_x: float


class _Draws:
    """Scalar random draws from a torch.Generator, fetched in blocks so that Python-level sampling is cheap."""

    def __init__(self, g: torch.Generator, block: int = 512) -> None:
        self.g, self.block, self.buffer = g, block, []

    def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
        if not self.buffer:
            self.buffer = torch.rand(self.block, generator=self.g, dtype=torch.float64).tolist()
        return lo + (hi - lo) * self.buffer.pop()

    def uniforms(self, lo: float, hi: float, n: int) -> list[float]:
        return [self.uniform(lo, hi) for _ in range(n)]

    def integer(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi] (inclusive)."""
        return min(hi, lo + int(self.uniform() * (hi - lo + 1)))

    def unit_vector(self) -> list[float]:
        z, phi = self.uniform(-1.0, 1.0), self.uniform(0.0, 2 * math.pi)
        r = math.sqrt(max(0.0, 1 - z * z))
        return [r * math.cos(phi), r * math.sin(phi), z]

    def rotation(self) -> Tensor:
        """Uniform random rotation (3, 3) (Shoemake's quaternion from 3 uniforms)."""
        u1, u2, u3 = self.uniform(), self.uniform(0, 2 * math.pi), self.uniform(0, 2 * math.pi)
        a, b = math.sqrt(1 - u1), math.sqrt(u1)
        return quat_to_rotmat(torch.tensor([a * math.sin(u2), a * math.cos(u2), b * math.sin(u3), b * math.cos(u3)]))


def axis_angle_to_matrix(v: Tensor) -> Tensor:
    """Rodrigues: axis-angle (..., 3) radians -> rotation matrices (..., 3, 3)."""
    angle = v.norm(dim=-1, keepdim=True)
    x, y, z = (v / angle.clamp_min(1e-12)).unbind(-1)
    zero = torch.zeros_like(x)
    # (..., 9) -> (..., 3, 3): skew-symmetric cross-product matrix of the axis
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*v.shape[:-1], 3, 3)
    s, c = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    return torch.eye(3, dtype=v.dtype) + s * k + (1 - c) * (k @ k)


def look_rotation(yaw: Tensor, pitch: Tensor, roll: Tensor) -> Tensor:
    """World-from-camera rotations (S, 3, 3), OpenCV axes, from yaw about world y, pitch (> 0 looks down) and
    roll about the optical axis, (S,) radians; yaw = 0 looks along +z."""
    cos_p = torch.cos(pitch)
    forward = torch.stack([torch.sin(yaw) * cos_p, torch.sin(pitch), torch.cos(yaw) * cos_p], dim=-1)
    right = torch.stack([torch.cos(yaw), torch.zeros_like(yaw), -torch.sin(yaw)], dim=-1)  # (world down) x forward
    down = torch.linalg.cross(forward, right)
    rot = torch.stack([right, down, forward], dim=-1)  # columns = camera axes in world
    return rot @ axis_angle_to_matrix(roll[:, None] * torch.tensor([0.0, 0.0, 1.0]))


def _wobble(draws: _Draws, times: Tensor, amp: list[float], w_lo: float, w_hi: float) -> Tensor:
    """Smooth offsets (S, len(amp)) that are 0 at t = 0: amp * (sin(w t + phase) - sin(phase))."""
    omega = torch.tensor(draws.uniforms(w_lo, w_hi, len(amp)))
    phase = torch.tensor(draws.uniforms(0.0, 2 * math.pi, len(amp)))
    return torch.tensor(amp) * (torch.sin(omega * times[:, None] + phase) - torch.sin(phase))


def _clamp_box(points: Tensor, center: Tensor, half: Tensor, margin: Tensor) -> Tensor:
    """Clamp points (..., 3) into the box center +- (half - margin)."""
    return torch.maximum(torch.minimum(points, center + half - margin), center - half + margin)


def _camera_path(draws: _Draws, times: Tensor, room_center: Tensor, room_half: Tensor) -> tuple[Tensor, Tensor]:
    """Smooth path inside the room, looking roughly at its interior -> world-from-camera (S, 3, 3), centres (S, 3)."""
    phi, rho = draws.uniform(0.0, 2 * math.pi), draws.uniform(0.3, 0.6)
    base = torch.tensor([rho * float(room_half[0]) * math.sin(phi), draws.uniform(-0.3, 0.3),
                         rho * float(room_half[2]) * math.cos(phi)])
    amp = [draws.uniform(0.1, 0.4), draws.uniform(0.04, 0.16), draws.uniform(0.1, 0.4)]
    centers = _clamp_box(base + _wobble(draws, times, amp, 0.8, 2.0), room_center, room_half, torch.full((3,), 0.3))
    yaw0 = math.atan2(-float(base[0]), -float(base[2])) + draws.uniform(-0.4, 0.4)
    angles = []
    for mean, amp_lo, amp_hi in ((yaw0, 0.1, 0.35), (draws.uniform(-0.1, 0.25), 0.03, 0.12),
                                 (draws.uniform(-0.05, 0.05), 0.0, 0.05)):
        a, w, p = draws.uniform(amp_lo, amp_hi), draws.uniform(0.8, 2.0), draws.uniform(0.0, 2 * math.pi)
        angles.append(mean + a * (torch.sin(w * times + p) - math.sin(p)))
    return look_rotation(*angles), centers


def _furniture(
    draws: _Draws, count: int, room_center: Tensor, room_half: Tensor, cam_centers: Tensor
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Static pillars (floor to ceiling) and floor boxes, away from the camera path -> [(rot, centre, half)]."""
    floor_y = float(room_center[1] + room_half[1])
    pieces = []
    for _ in range(count):
        for _attempt in range(30):
            if draws.uniform() < 0.4:
                half = torch.tensor([draws.uniform(0.15, 0.35), float(room_half[1]), draws.uniform(0.15, 0.35)])
            else:
                half = torch.tensor([draws.uniform(0.25, 0.7), draws.uniform(0.2, 0.6), draws.uniform(0.25, 0.7)])
            x = draws.uniform(-1.0, 1.0) * (float(room_half[0]) - 0.4)
            z = draws.uniform(-1.0, 1.0) * (float(room_half[2]) - 0.4)
            center = torch.tensor([x, floor_y - float(half[1]), z])
            yaw = torch.tensor([draws.uniform(0.0, math.pi)])
            clearance = (cam_centers[:, [0, 2]] - center[[0, 2]]).norm(dim=-1).min()
            if clearance > half[[0, 2]].norm() + 1.2:
                pieces.append((look_rotation(yaw, torch.zeros(1), torch.zeros(1))[0], center, half))
                break
    return pieces


def _moving_object(
    draws: _Draws, times: Tensor, cam_rot: Tensor, cam_centers: Tensor, tan_half: tuple[float, float],
    room_center: Tensor, room_half: Tensor, speed: float = 1.0,
) -> tuple[int, Tensor, Tensor, Tensor] | None:
    """A moving sphere or box placed in the first camera's view, its motion independent of the camera's and scaled
    by `speed` (0: it stands still) -> (kind, rotations (S, 3, 3), centres (S, 3), half sizes (3,)), or None if no
    clear placement was found."""
    for _attempt in range(30):
        kind = SPHERE if draws.uniform() < 0.5 else BOX
        if kind == SPHERE:
            half = torch.full((3,), draws.uniform(0.3, 0.65))
        else:
            half = torch.tensor(draws.uniforms(0.18, 0.5, 3))
        radius = float(half.norm()) if kind == BOX else float(half[0])
        ray = torch.tensor([draws.uniform(-0.7, 0.7) * tan_half[0], draws.uniform(-0.6, 0.6) * tan_half[1], 1.0])
        base = cam_centers[0] + cam_rot[0] @ ray * draws.uniform(1.8, 3.6)
        amp = [draws.uniform(0.2, 0.6), draws.uniform(0.07, 0.2), draws.uniform(0.2, 0.6)]
        centers = base + speed * _wobble(draws, times, amp, 1.0, 3.0)
        centers = _clamp_box(centers, room_center, room_half, torch.minimum(torch.full((3,), radius), room_half - 0.05))
        spin = torch.tensor(draws.unit_vector()) * draws.uniform(0.6, 2.5)  # axis-angle rate, rad/s
        rotations = draws.rotation() @ axis_angle_to_matrix(speed * spin * times[:, None])
        if (centers - cam_centers).norm(dim=-1).min() > radius + 0.5:
            return kind, rotations, centers, half
    return None


def _appearance(
    draws: _Draws, num_prims: int, checker_frequency: tuple[float, float], noise_frequency: tuple[float, float]
) -> dict[str, Tensor]:
    """Per-primitive solid-texture parameters (see `Scene`); frequencies are drawn uniformly from the (lo, hi)
    bands in cycles per metre."""
    def table(lo: float, hi: float, *shape: int) -> Tensor:
        return torch.tensor(draws.uniforms(lo, hi, math.prod(shape))).reshape(num_prims, *shape[1:])

    color_a = table(0.25, 0.95, num_prims, 3)
    color_b = color_a * table(0.25, 0.6, num_prims, 1) + table(0.0, 0.15, num_prims, 3)
    waves = torch.tensor([[draws.unit_vector() for _ in range(NOISE_WAVES)] for _ in range(num_prims)])
    return {
        "color_a": color_a,
        "color_b": color_b,
        "face_tint": table(-0.3, 0.3, num_prims, 3, 3),
        "checker_freq": table(*checker_frequency, num_prims),
        "checker_offset": table(0.0, 1.0, num_prims, 3),
        "noise_k": waves * table(2 * math.pi * noise_frequency[0], 2 * math.pi * noise_frequency[1],
                                 num_prims, NOISE_WAVES, 1),
        "noise_phase": table(0.0, 2 * math.pi, num_prims, NOISE_WAVES),
    }


def sample_scene(
    g: torch.Generator,
    num_frames: int,
    aspect_ratio: float,
    num_objects: tuple[int, int] = (1, 4),
    frame_dt: float = FRAME_DT,
    checker_frequency: tuple[float, float] = CHECKER_FREQUENCY,
    noise_frequency: tuple[float, float] = NOISE_FREQUENCY,
    object_speed: float = 1.0,
) -> Scene:
    """Draw one random scene with `num_frames` frames `frame_dt` seconds apart; `aspect_ratio` = H / W of the
    images it will be viewed in. Texture bands (cycles per metre): the checker's `checker_frequency` and the
    noise stripes' `noise_frequency`; low bands give large, unrepeated patterns (easy to match across frames).
    `object_speed` scales the objects' motion: 0 places the same objects standing still (a static scene: none is
    marked dynamic)."""
    draws = _Draws(g)
    times = torch.arange(num_frames, dtype=torch.float32) * frame_dt
    room_half = torch.tensor([draws.uniform(2.5, 4.0), draws.uniform(1.1, 1.6), draws.uniform(3.0, 4.5)])
    room_center = torch.tensor([0.0, draws.uniform(1.2, 1.7) - float(room_half[1]), 0.0])  # floor 1.2-1.7 m below y=0
    fov_x = math.radians(draws.uniform(50.0, 70.0))
    tan_half = (math.tan(fov_x / 2), math.tan(fov_x / 2) * aspect_ratio)
    cam_rot, cam_centers = _camera_path(draws, times, room_center, room_half)
    furniture = _furniture(draws, draws.integer(2, 4), room_center, room_half, cam_centers)
    objects = [
        _moving_object(draws, times, cam_rot, cam_centers, tan_half, room_center, room_half, object_speed)
        for _ in range(draws.integer(*num_objects))
    ]
    if any(o is None for o in objects):
        logger.debug("sample_scene: %d moving object(s) found no clear placement", sum(o is None for o in objects))
    objects = [o for o in objects if o is not None]

    S = num_frames
    rotations = [torch.eye(3).expand(S, 3, 3)] + [r.expand(S, 3, 3) for r, _, _ in furniture]
    centers = [room_center.expand(S, 3)] + [c.expand(S, 3) for _, c, _ in furniture]
    halves = [room_half] + [h for _, _, h in furniture]
    kinds = [ROOM] + [BOX] * len(furniture)
    for kind, rot, cen, half in objects:
        rotations.append(rot)
        centers.append(cen)
        halves.append(half)
        kinds.append(kind)
    dynamic = torch.tensor([i > len(furniture) and object_speed > 0 for i in range(len(kinds))])
    horizontal = draws.unit_vector()
    light = torch.tensor([horizontal[0], -1.2, horizontal[1]])
    return Scene(
        rotations=torch.stack(rotations, dim=1).contiguous(),
        centers=torch.stack(centers, dim=1).contiguous(),
        half_sizes=torch.stack(halves),
        kinds=torch.tensor(kinds),
        dynamic=dynamic,
        **_appearance(draws, len(kinds), checker_frequency, noise_frequency),
        light_dir=light / light.norm(),
        ambient=draws.uniform(0.4, 0.55),
        cam_rotations=cam_rot,
        cam_centers=cam_centers,
        fov_x=fov_x,
    )
