"""Random normalizing flow: masked affine coupling layers (``normflows``) with random weights.

normflows initialises its layers at (or near) the identity, which is right for
training and useless here, so every weight is drawn on purpose from the task's numpy
generator (so the map is determined by the task seed). Each layer is
    z' = b z + (1 - b) (z exp(s(b z)) + t(b z))
with a random binary mask b, s a small MLP with a tanh output (log-scale bounded by
``scale_bound``) and t a small MLP; both directions are exact, so MI is unchanged.
Inputs are standardised on a pilot sample first. Computation runs in float64 under
``torch.no_grad()``; global torch settings (threads, default dtype, seed) are not touched.
"""
from __future__ import annotations

import numpy as np

from metagen.transforms.base import Transform, robust_loc_scale

__all__ = ["RandomFlow", "make_flow"]


class RandomFlow(Transform):
    name = "flow"

    def __init__(self, loc: np.ndarray, scale: np.ndarray, layers):
        self.loc, self.scale = loc, scale
        self.layers = layers                                   # list of normflows.flows.MaskedAffineFlow
        self.dim_in = self.dim_out = len(loc)

    def forward(self, x: np.ndarray) -> np.ndarray:
        import torch

        z = torch.from_numpy((self._check(x, self.dim_in) - self.loc) / self.scale)
        with torch.no_grad():
            for layer in self.layers:
                z, _ = layer(z)
        return z.numpy()

    def inverse(self, y: np.ndarray) -> np.ndarray:
        import torch

        z = torch.from_numpy(np.ascontiguousarray(self._check(y, self.dim_out)))
        with torch.no_grad():
            for layer in reversed(self.layers):
                z, _ = layer.inverse(z)
        return z.numpy() * self.scale + self.loc


def _randomise(module, rng: np.random.Generator, gain: float) -> None:
    """Overwrite every Linear layer's weights with N(0, gain^2 / fan_in), biases N(0, 0.1^2)."""
    import torch

    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            fan_in = m.weight.shape[1]
            m.weight.copy_(torch.from_numpy(rng.normal(0.0, gain / np.sqrt(fan_in), tuple(m.weight.shape))))
            m.bias.copy_(torch.from_numpy(rng.normal(0.0, 0.1, tuple(m.bias.shape))))


def make_flow(dim: int, rng: np.random.Generator, pilot: np.ndarray, num_layers: int | None = None,
              hidden: int | None = None, scale_bound: float = 1.0) -> RandomFlow:
    """A random masked-affine-coupling flow on dim >= 2 coordinates (4-6 layers, hidden 8-32)."""
    import normflows as nf
    import torch

    if dim < 2:
        raise ValueError("flow needs dim >= 2")
    num_layers = int(rng.integers(4, 7)) if num_layers is None else num_layers
    hidden = int(rng.choice([8, 16, 32])) if hidden is None else hidden
    layers = []
    with torch.no_grad():
        for i in range(num_layers):
            if i % 2 == 0:
                mask = np.zeros(dim)
                mask[rng.permutation(dim)[: max(1, dim // 2)]] = 1.0
            else:
                mask = 1.0 - mask
            s = nf.nets.MLP([dim, hidden, dim], leaky=0.1, output_fn="tanh", output_scale=scale_bound)
            t = nf.nets.MLP([dim, hidden, dim], leaky=0.1)
            layer = nf.flows.MaskedAffineFlow(torch.from_numpy(mask), t=t, s=s).double()
            _randomise(layer, rng, gain=float(rng.uniform(1.5, 2.5)))
            layer.eval()
            layers.append(layer)
    loc, scale = robust_loc_scale(pilot)
    return RandomFlow(loc, scale, layers)
