"""A small CNN attributor: the quickstart's method, trained in seconds on the mini-bench.

Generator fingerprints are high-frequency patterns, so the network first subtracts each pixel's
3x3 local mean (a fixed high-pass that removes most image content), then runs a few
conv-BN-ReLU layers and pools each channel's mean and standard deviation (the energy of the
residual pattern, which is what the up-samplers of the mini-bench leave behind).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


class Model(nn.Module):
  num_classes: int
  widths: Sequence[int] = (16, 32, 32, 64)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = x.astype(self.dtype)
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    x = x - nn.avg_pool(padded, (3, 3), strides=(1, 1))
    stages = []
    for i, width in enumerate(self.widths):
      x = nn.Conv(width, (3, 3), strides=1 if i == 0 else 2, use_bias=False, dtype=self.dtype,
                  name=f"conv{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                       name=f"bn{i}")(x)
      x = nn.relu(x)
      stages.append(x)
    features = jnp.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=-1)
    features = features.astype(jnp.float32)
    if not self.num_classes:
      return features, {"features": features, "stages": stages}
    logits = nn.Dense(self.num_classes, name="head")(features)
    return logits, {"features": features, "stages": stages}


HEAD = "head"
