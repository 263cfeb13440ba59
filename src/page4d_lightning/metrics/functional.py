"""Per-clip metrics, pure torch (the Metric classes in `pose.py`, `depth.py`, `points.py`, `tracking.py` sum them).

One module per job, re-exported here so that imports stay `from page4d_lightning.metrics.functional import ...`:
- `_pose`: `pose_errors` (ATE / RPE, evo protocol), `pose_auc` (pairwise AUC@30, VGGT / CO3D protocol);
- `_depth` (+ `_align_depth`): `depth_errors` with the official alignments and `depth_protocol` presets;
- `_points`: `point_errors` (accuracy, completeness, normal consistency after Sim(3) alignment);
- `_baselines`: `pose_baselines` (the ATE / RPE of uninformed predictions: the floor a model must beat);
- `_mask`: `mask_confusion`, `mask_scores` (dynamic-mask IoU / precision / recall at the patch level);
- `_tracking`: `tracking_errors` (TAP-Vid delta_avg, occlusion accuracy, average Jaccard).
Undefined values (degenerate alignment, no valid GT) come back as NaN with a RuntimeWarning, never as 0.
"""

from page4d_lightning.metrics._align_depth import DEPTH_ALIGNERS
from page4d_lightning.metrics._baselines import mean_trajectory, pose_baselines
from page4d_lightning.metrics._depth import DEPTH_KEYS, DEPTH_PROTOCOLS, depth_errors, depth_protocol
from page4d_lightning.metrics._mask import MASK_KEYS, mask_confusion, mask_scores
from page4d_lightning.metrics._points import POINT_KEYS, nearest_neighbors, point_errors, point_map_normals
from page4d_lightning.metrics._pose import (
    POSE_KEYS,
    auc_from_histogram,
    auc_histogram,
    pose_auc,
    pose_errors,
    relative_pose_angle_errors,
    static_camera_clips,
)
from page4d_lightning.metrics._tracking import TRACKING_KEYS, TRACKING_THRESHOLDS, tracking_errors

__all__ = [
    "POSE_KEYS", "pose_errors", "pose_auc", "relative_pose_angle_errors", "auc_histogram", "auc_from_histogram",
    "static_camera_clips", "mean_trajectory", "pose_baselines",
    "DEPTH_KEYS", "DEPTH_ALIGNERS", "DEPTH_PROTOCOLS", "depth_errors", "depth_protocol",
    "POINT_KEYS", "point_errors", "nearest_neighbors", "point_map_normals",
    "TRACKING_KEYS", "TRACKING_THRESHOLDS", "tracking_errors",
    "MASK_KEYS", "mask_confusion", "mask_scores",
]
