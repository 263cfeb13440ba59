"""Prediction heads: camera (pose encoding), DPT (depth, world points), track; their activations."""

from .activations import activate_head, activate_pose
from .camera import CameraHead
from .dpt import DPTHead
from .track import TrackHead

__all__ = ["CameraHead", "DPTHead", "TrackHead", "activate_head", "activate_pose"]
