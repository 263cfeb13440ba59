"""torchmetrics.Metric classes for evaluation (sum states, DDP-synced); pure-torch twins in `functional`."""

from page4d_lightning.metrics.depth import DepthMetrics
from page4d_lightning.metrics.pose import PoseMetrics

# PointMetrics and TrackingMetrics are added here by their own modules (points.py, tracking.py).
__all__ = ["DepthMetrics", "PoseMetrics"]
