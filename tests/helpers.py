"""Shared test helpers (the test modules import this file by name: pytest puts tests/ on sys.path)."""
from __future__ import annotations

import torch

from model.network import MIEstimator


def open_zero_paths(model: MIEstimator) -> MIEstimator:
    """Give the layers that start at zero (column-statistics embedding, refiner outputs) and the refiner's
    input scaling random values, in place: a lost weight or buffer, or an input those paths read, then
    shows in the outputs. Returns the model."""
    with torch.no_grad():
        if model.col_embed is not None:
            model.col_embed[-1].weight.normal_(0.0, 0.5)
        if model.refine is not None:
            for net in model.refine.nets:
                net[-1].weight.normal_(0.0, 0.5)
            model.refine.shift.normal_(0.0, 1.0)
            model.refine.scale.uniform_(0.5, 2.0)
    return model
