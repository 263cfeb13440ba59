"""PAGE-4D model (pure PyTorch): `PAGE4D`, its presets `PAGE4DConfig`, and `load_weights`."""

from .page4d import PAGE4D, PAGE4DConfig, Predictions
from .weights import LoadReport, load_weights

__all__ = ["PAGE4D", "PAGE4DConfig", "LoadReport", "Predictions", "load_weights"]
