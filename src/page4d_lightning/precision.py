"""True half precision that casts the model's inputs only, so ground truth and metrics keep full precision.

Lightning's `HalfPrecision` (`--trainer.precision bf16-true` or `16-true`) casts every floating tensor of a
batch to the half type before the step. For PAGE-4D that includes the ground truth: camera poses rounded to
bf16 (8 bits of mantissa) make every clip look like a static camera to the pose metrics (NaN ATE), and
depths, points and tracks lose precision in the loss and the metrics. `InputHalfPrecision` casts only
`INPUT_KEYS` (the images the network reads); everything else stays as the DataLoader made it (float32), the
loss promotes the half predictions to float32 against it, and metrics compute in float32/float64. The
`page4d` CLI uses it whenever the precision is `bf16-true` or `16-true`.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.plugins.precision import HalfPrecision
from torch import Tensor

INPUT_KEYS = ("images",)
"""Batch keys that the network reads and that are cast to the half type."""

TRUE_HALF = ("bf16-true", "16-true")


class InputHalfPrecision(HalfPrecision):
    """`HalfPrecision` whose `convert_input` casts the batch's `INPUT_KEYS` only (a dict batch) or everything
    (any other batch, as Lightning does)."""

    def convert_input(self, data: Any) -> Any:
        if not isinstance(data, dict):
            return super().convert_input(data)
        return {k: super(InputHalfPrecision, self).convert_input(v) if k in INPUT_KEYS and isinstance(v, Tensor)
                else v for k, v in data.items()}
