"""Inference fast path: the network traced (TorchScript) for one unpadded sample set.

A single set has no padded rows, cells or columns, so every mask of `MIEstimator` is
all-True and the forward pass is a fixed sequence of tensor operations whose shapes
depend only on (n, dx + dy). Tracing that sequence once removes the Python and
nn.Module overhead of ~250 small operations (most of the eager forward's time on CPU
at n <= 1000); the arithmetic is the same, so the output equals the eager forward up
to float rounding (checked in tests/test_tracing.py for several n and dims).

The trace is only valid for batches of one set without padding; the function that
`trace_single_set` returns checks this, and infer.py uses the eager module otherwise
(batches, other devices).
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from model.network import MIEstimator
from model.preprocess import Batch, prepare_batch

_FIELDS = tuple(f.name for f in dataclasses.fields(Batch))
_EXAMPLE_N = 300  # >= 256 so the trace takes the few-keys attention path (same values, faster for long sets)


class _Unpacked(nn.Module):
    """forward(*batch tensors) -> model(Batch(*tensors)): tracing needs tensor arguments."""

    def __init__(self, model: MIEstimator):
        super().__init__()
        self.model = model

    def forward(self, *tensors: Tensor) -> Tensor:
        return self.model(Batch(*tensors))


def _example_batch(model: MIEstimator) -> Batch:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(_EXAMPLE_N, 2))
    y = x[:, :1] + rng.normal(size=(_EXAMPLE_N, 1))
    return prepare_batch([(x, y)], model.config)


def trace_single_set(model: MIEstimator) -> Callable[[Batch], Tensor]:
    """A TorchScript trace of `model` for one unpadded set on CPU (weights as they are now).

    Returns f(batch) -> (1, Q) quantiles of log1p(MI [nats]), equal to model(batch) up
    to float rounding for any n and dims, for batches of exactly one set (B = 1, as
    built by `prepare_batch` from a single pair). Raises RuntimeError if tracing fails.
    """
    was_training = model.training
    model.eval()
    example = _example_batch(model)
    args = tuple(getattr(example, f) for f in _FIELDS)
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            # the data-dependent branches (masks all-True, long query sequence) are meant to be fixed
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # torch.jit is deprecated in favour of torch.compile/export, which would need a C++
            # toolchain at run time or a rewrite of the masked branches; the pinned torch range
            # has it, and a build without it falls back to the eager module (infer.py)
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(_Unpacked(model).eval(), args, check_trace=False)
    except Exception as exc:  # pragma: no cover - depends on the torch build
        raise RuntimeError(f"tracing the network failed: {exc}") from exc
    finally:
        model.train(was_training)

    def forward(batch: Batch) -> Tensor:
        if batch.size != 1:
            raise ValueError(f"the traced network takes one set per call; got {batch.size}")
        return traced(*(getattr(batch, f) for f in _FIELDS))

    return forward


__all__ = ["trace_single_set"]
