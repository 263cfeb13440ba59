"""torchmetrics.Metric classes for evaluation (sum states, DDP-synced); pure-torch twins in `functional`."""

from page4d_lightning.metrics.depth import DepthMetrics
from page4d_lightning.metrics.mask import DynamicMaskMetrics
from page4d_lightning.metrics.points import PointMetrics
from page4d_lightning.metrics.pose import PoseMetrics
from page4d_lightning.metrics.tracking import TrackingMetrics

__all__ = ["DepthMetrics", "DynamicMaskMetrics", "PointMetrics", "PoseMetrics", "TrackingMetrics"]
