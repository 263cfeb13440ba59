"""Write a tiny CO3D v2 category in the real on-disk layout (see README.md next to this file).

One category, two sequences orbiting a static sphere on a ground plane. Paths in the annotations are relative to
the root; `frame_number` runs opposite to the image-file suffix (CO3D only promises that the annotation is the
truth), the annotation list is shuffled, sequence A uses `ndc_isotropic` and scale_adjustment 1, sequence B the
legacy `ndc_norm_image_bounds` and scale_adjustment 0.5 (the PNG stores depth / scale_adjustment).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.data.dynamic_replica.scene import (
    NOTHING,
    SPHERE,
    look_at_camera,
    project_screen,
    render,
    surface_points,
    write_float16_png,
)

CATEGORY = "teddybear"
HW = (84, 56)  # (H, W), portrait: image_size=56 keeps the scale and centre-crops 56 rows
RADIUS = 0.45
CENTRE = np.array([0.0, RADIUS, 2.2])  # resting on the ground
SEQUENCES = {  # name -> (intrinsics_format, principal offset (screen px), scale_adjustment, quality score)
    "34_1403_4393": ("ndc_isotropic", (1.5, -2.0), 1.0, 0.9),
    "106_12650_23736": ("ndc_norm_image_bounds", (-2.5, 1.0), 0.5, 0.2),
}
FOCAL_PX = (60.0, 62.0)


def camera(seq_index: int, k: int):
    fmt, offset, _, _ = list(SEQUENCES.values())[seq_index]
    theta = -0.25 + 0.1 * k + 0.05 * seq_index
    eye = CENTRE + 2.6 * np.array([np.sin(theta), 0.3, -np.cos(theta)])
    return look_at_camera(eye, CENTRE, HW, FOCAL_PX, offset, fmt)


def _write_json_gz(path: Path, data: object) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(data, f)


def write_fixture(root: Path, num_frames: int = 6, seed: int = 0) -> dict:
    """Returns {"root", "category", "sequences": {"<category>/<seq>": {"cameras", "image", "depth" (S, H, W) as
    the reader must return it, "points" (N, 3) world, "screen" (S, N, 3), "scale_adjustment", "file_ids"}}}
    with frames in frame_number order."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    cat_dir = root / CATEGORY
    annotations, sequences, set_lists, truth = [], [], {"train": [], "val": [], "test": []}, {}
    points = surface_points(rng, CENTRE, RADIUS, 4)
    for s, (seq, (_, _, scale, quality)) in enumerate(SEQUENCES.items()):
        gt: dict = {"cameras": [], "image": [], "depth": [], "screen": [], "file_ids": []}
        for k in range(num_frames):
            file_id = num_frames - k  # frame_number 0 is frame000006.jpg
            cam = camera(s, k)
            image, depth, label = render(cam, CENTRE, RADIUS)
            h, w = HW
            rows, cols = np.mgrid[:h, :w]
            valid = (label != NOTHING) & ((cols + 2 * rows) % 5 != 0)  # MVS holes
            stored = np.where(label == NOTHING, 0.0, np.where(valid, depth, 7.0)) / scale  # junk under the mask
            rel = f"{CATEGORY}/{seq}"
            image_rel = f"{rel}/images/frame{file_id:06d}.jpg"
            depth_rel = f"{rel}/depths/frame{file_id:06d}.jpg.geometric.png"
            dmask_rel = f"{rel}/depth_masks/frame{file_id:06d}.png"
            mask_rel = f"{rel}/masks/frame{file_id:06d}.png"
            for sub in ("images", "depth_masks", "masks"):
                (cat_dir / seq / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / image_rel, quality=95)
            decoded = write_float16_png(root / depth_rel, stored) * np.float32(scale)
            Image.fromarray(valid).save(root / dmask_rel)  # 1-bit PNG
            Image.fromarray(np.where(label == SPHERE, 255, 0).astype(np.uint8)).save(root / mask_rel)
            annotations.append({
                "sequence_name": seq,
                "frame_number": k,
                "frame_timestamp": k / 30.0,
                "image": {"path": image_rel, "size": list(HW)},
                "depth": {"path": depth_rel, "scale_adjustment": scale, "mask_path": dmask_rel},
                "mask": {"path": mask_rel, "mass": float((label == SPHERE).sum())},
                "viewpoint": cam.viewpoint(),
                "meta": {"frame_type": "test_known" if s else "train_known", "frame_splits": [], "eval_batch_maps": []},
            })
            set_lists["test" if s else "train"].append([seq, k, image_rel])
            gt["cameras"].append(cam)
            gt["image"].append(image)
            gt["depth"].append(np.where(valid, decoded, 0.0).astype(np.float32))
            gt["screen"].append(project_screen(cam, points))
            gt["file_ids"].append(file_id)
        ply = cat_dir / seq / "pointcloud.ply"
        header = f"ply\nformat ascii 1.0\nelement vertex {len(points)}\nproperty float x\nproperty float y\n"
        ply.write_text(header + "property float z\nend_header\n" + "".join(f"{x} {y} {z}\n" for x, y, z in points))
        sequences.append({
            "sequence_name": seq,
            "category": CATEGORY,
            "video": {"path": f"{CATEGORY}/{seq}/video.mp4", "length": num_frames / 30.0},
            "point_cloud": {"path": f"{CATEGORY}/{seq}/pointcloud.ply", "quality_score": 1.0, "n_points": 12},
            "viewpoint_quality_score": quality,
        })
        truth[f"{CATEGORY}/{seq}"] = {
            **{k: (np.stack(v) if k not in ("cameras", "file_ids") else v) for k, v in gt.items()},
            "points": points,
            "scale_adjustment": scale,
        }
    annotations = [annotations[i] for i in rng.permutation(len(annotations))]  # the release is not sorted
    _write_json_gz(cat_dir / "frame_annotations.jgz", annotations)
    _write_json_gz(cat_dir / "sequence_annotations.jgz", sequences)
    (cat_dir / "set_lists").mkdir(exist_ok=True)
    (cat_dir / "set_lists" / "set_lists_fewview_dev.json").write_text(json.dumps(set_lists))
    many = {"train": set_lists["test"][:4], "val": [], "test": set_lists["test"][4:]}  # one sequence, split
    (cat_dir / "set_lists" / "set_lists_manyview_dev_0.json").write_text(json.dumps(many))
    (cat_dir / "eval_batches").mkdir(exist_ok=True)
    (cat_dir / "eval_batches" / "eval_batches_fewview_dev.json").write_text(json.dumps([set_lists["test"][:2]]))
    return {"root": root, "category": CATEGORY, "sequences": truth}
