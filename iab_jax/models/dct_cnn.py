"""Frank et al.'s SimpleCNN (ICML 2020), the DCT-CNN attributor's network over DCT spectra.

GAN and diffusion up-samplers leave periodic artefacts that sit at fixed DCT coefficients, so a
shallow network over the spectrum attributes images: four 3x3 convolutions ('same' zero padding,
ReLU) with two 2x2 average pools, flattened, and one linear layer. The linear layer holds 99.8%
of the parameters (32 * 64 * 64 * 23 at 256x256), so the network is close to a linear model of
the spectrum.

The input is a DCT spectrum (iab_jax.data.transforms `dct`). With `standardize`, the model first
standardises each coefficient with the training set's per-coefficient mean and std (GANDCTAnalysis
normalises its log-DCT data so), kept in the non-param collection STATS: the method's prepare pass
sets them, and every checkpoint carries them. Initialised, they are the identity (mean 0, std 1).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from iab_jax.models import _torch_init

STATS = "dct_stats"  # the variable collection of the per-coefficient mean and std
HEAD = "fc"


class Model(nn.Module):
  """SimpleCNN; widths are the four convolutions' output channels (the original's 3, 8, 16, 32)."""

  num_classes: int
  widths: Sequence[int] = (3, 8, 16, 32)
  standardize: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train  # no dropout, no batch norm: training and evaluation are the same function
    x = x.astype(jnp.float32)
    if self.standardize:
      mean = self.variable(STATS, "mean", jnp.zeros, x.shape[1:], jnp.float32)
      std = self.variable(STATS, "std", jnp.ones, x.shape[1:], jnp.float32)
      x = (x - mean.value) / std.value
    x = x.astype(self.dtype)
    for i, width in enumerate(self.widths):
      # torch's default initialisation, so that a run starts where the official one starts.
      fan_in = 9 * x.shape[-1]
      x = nn.Conv(width, (3, 3), padding="SAME", dtype=self.dtype,
                  kernel_init=_torch_init.kernel_init, bias_init=_torch_init.bias_init(fan_in),
                  name=f"conv{i + 1}")(x)
      x = nn.relu(x)
      if i in (1, 2):  # after the second and third convolutions
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    # Flattened in (height, width, channel) order; torch's checkpoint is (channel, height, width),
    # which import_official permutes.
    features = x.reshape(x.shape[0], -1).astype(jnp.float32)
    if not self.num_classes:
      return features, {"features": features}
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_torch_init.kernel_init,
                      bias_init=_torch_init.bias_init(features.shape[-1]), name=HEAD)(features)
    return logits.astype(jnp.float32), {"features": features}
