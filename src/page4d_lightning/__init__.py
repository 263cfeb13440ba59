"""page4d-lightning: train, fine-tune, evaluate and run PAGE-4D (dynamic-scene VGGT) with PyTorch Lightning."""

__version__ = "0.1.0"
