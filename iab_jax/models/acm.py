"""The attribution consistency module (ACM, He et al. 2026) on frozen image features.

An autoencoder E, D: R^D -> R^D learns the manifold of one class's features (real images by
default); the attribution deviation of a feature f is A(f) = |f - D(E(f))| (eq. 3), small on that
class and larger off it, and a light classifier C: R^D -> logit reads A(f) (eq. 5). The paper
gives neither network's sizes; they are fields here (configs/acm.py states the defaults):

  encoder   D -> hidden[0] -> ... -> bottleneck, each layer Dense + activation
  decoder   bottleneck -> ... -> hidden[0] -> D, the same layers mirrored, the last one linear
  classifier  A -> classifier_hidden... -> 1, Dense + activation between, a linear logit (with no
            hidden layer it is UnivFD's linear probe, on A instead of f)

`__call__(features, detach=True)` returns (attribution (N, D), reconstruction (N, D), logit (N,)).
With `detach` the classifier reads A through stop_gradient: its loss moves the classifier only,
and the autoencoder learns from its own loss alone, as the paper's alternation requires.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu, "leaky_relu": nn.leaky_relu, "tanh": jnp.tanh}


class MLP(nn.Module):
  """Dense layers with `activation` between them (none after the last)."""

  widths: Sequence[int]
  activation: str = "relu"

  @nn.compact
  def __call__(self, x):
    for i, width in enumerate(self.widths):
      x = nn.Dense(int(width), name=f"dense{i}")(x)
      if i + 1 < len(self.widths):
        x = ACTIVATIONS[self.activation](x)
    return x


class Autoencoder(nn.Module):
  dim: int
  hidden: Sequence[int] = (512,)
  bottleneck: int = 128
  activation: str = "relu"

  def setup(self):
    # The encoder's output is the code itself (activated, as every encoder layer is); the
    # decoder's last layer is linear, since features take any sign.
    self.encoder = MLP((*self.hidden, self.bottleneck), self.activation)
    self.decoder = MLP((*reversed(tuple(self.hidden)), self.dim), self.activation)

  def encode(self, features):
    return ACTIVATIONS[self.activation](self.encoder(features))

  def __call__(self, features):
    return self.decoder(self.encode(features))


class AttributionConsistency(nn.Module):
  dim: int
  hidden: Sequence[int] = (512,)
  bottleneck: int = 128
  classifier_hidden: Sequence[int] = ()
  activation: str = "relu"

  def setup(self):
    self.autoencoder = Autoencoder(self.dim, tuple(self.hidden), self.bottleneck, self.activation)
    self.classifier = MLP((*self.classifier_hidden, 1), self.activation)

  def __call__(self, features, detach: bool = True):
    features = features.astype(jnp.float32)
    reconstruction = self.autoencoder(features)
    attribution = jnp.abs(features - reconstruction)  # eq. 3
    read = jax.lax.stop_gradient(attribution) if detach else attribution
    return attribution, reconstruction, self.classifier(read)[:, 0]
