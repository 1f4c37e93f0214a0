"""DNA-Det's network (Yang et al., AAAI 2022): the original's Simple_CNN with its heads.

Simple_CNN is four stages of a DCGAN down-sampling convolution (4x4, stride 2, padding 1) and a
VGG convolution (3x3, padding 1), each followed by batch norm and LeakyReLU(0.2), at widths 64,
128, 256, 512; global average pooling gives the feature, and dropout(0.2) + a linear layer the
class logits. Being fully convolutional with pooling, it takes DNA-Det's 64x64 training crops
and its whole 512x512 test images with the same variables.

Beside the classifier `head`, the model holds what DNA-Det's two training phases need, so that
both phases share one set of variables (the trainer carries them from phase to phase):
  supcon          the projection head of the supervised contrastive loss: Linear(512, 512), ReLU,
                  Linear(512, proj_dim), L2-normalised (aux["projection"]);
  awl             the two learned weights of the automatically weighted loss (a loss parameter,
                  kept with the model as in the official state dict, `awl.params`);
  pretext_head, pretext_supcon, pretext_awl
                  the same three for the pre-training phase over the 170 transformation classes
                  (pretext_classes=170; 0 leaves them out). The official code builds a second
                  network for that phase and hands only its backbone to the attribution phase;
                  separate heads here do the same.

softmax_inside: the original and official Simple_CNN apply a softmax inside forward, so that
their "logits" are probabilities and the cross-entropy applied to them is a double softmax
(the `official` option); False gives plain logits.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from iab_jax.models import _torch_init

HEAD = "head"
PRETEXT_HEAD = "pretext_head"


class BatchNorm(nn.Module):
  """torch's BatchNorm2d (eps 1e-5, momentum 0.1, running variance unbiased), whose training
  batch may be `groups` batches in one, group-major: each is normalised with its own statistics
  and the running averages take the groups' updates one after the other, as that many separate
  torch forwards would (DNA-Det's loop over crop positions), in one vectorised pass.
  Variables as flax's BatchNorm: params scale, bias; batch_stats mean, var.
  """

  momentum: float = 0.1
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, *, train: bool, groups: int = 1):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    running_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    if not train:
      mean, var = running_mean.value, running_var.value
      return ((x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias).astype(x.dtype)
    grouped = x.astype(jnp.float32).reshape(groups, -1, c)  # (groups, n h w, C)
    mean = grouped.mean(axis=1, keepdims=True)
    var = jnp.square(grouped - mean).mean(axis=1, keepdims=True)
    y = (grouped - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    if not self.is_initializing() and self.is_mutable_collection("batch_stats"):
      n = grouped.shape[1]
      keep = 1.0 - self.momentum
      # r <- keep r + momentum s_k for k = 1..groups, in closed form: group k's statistics
      # are kept keep^(groups - k) times.
      weights = self.momentum * keep ** jnp.arange(groups - 1, -1, -1, dtype=jnp.float32)
      unbiased = var[:, 0] * (n / max(n - 1, 1))
      running_mean.value = keep ** groups * running_mean.value + weights @ mean[:, 0]
      running_var.value = keep ** groups * running_var.value + weights @ unbiased
    return y.reshape(x.shape).astype(x.dtype)


class ConvBlock(nn.Module):
  """Conv (with bias) + BatchNorm + LeakyReLU(0.2): the original's dcgan_conv / vgg_layer."""

  width: int
  kernel: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool, groups: int = 1):
    fan_in = self.kernel * self.kernel * x.shape[-1]
    x = nn.Conv(self.width, (self.kernel, self.kernel), strides=self.stride,
                padding=((1, 1), (1, 1)), dtype=self.dtype, kernel_init=_torch_init.kernel_init,
                bias_init=_torch_init.bias_init(fan_in), name="conv")(x)
    x = BatchNorm(name="bn")(x, train=train, groups=groups)
    return nn.leaky_relu(x, 0.2)


class Projection(nn.Module):
  """SupCon's MLP head: Linear(d, d), ReLU, Linear(d, out), then L2 normalisation."""

  out_dim: int

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    x = nn.Dense(d, kernel_init=_torch_init.kernel_init, bias_init=_torch_init.bias_init(d),
                 name="dense0")(x)
    x = nn.Dense(self.out_dim, kernel_init=_torch_init.kernel_init,
                 bias_init=_torch_init.bias_init(d), name="dense1")(nn.relu(x))
    # torch's F.normalize: x / max(||x||, 1e-12).
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _awl_init(key, shape):
  del key
  return jnp.ones(shape, jnp.float32)


class Model(nn.Module):
  num_classes: int
  widths: Sequence[int] = (64, 128, 256, 512)
  proj_dim: int = 128
  pretext_classes: int = 0
  dropout: float = 0.2
  softmax_inside: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool, groups: int = 1):
    """(N, H, W, 3) -> (logits (N, num_classes), aux); H, W >= 16. aux: "features" (the pooled
    feature), "projection" and, with pretext_classes, "pretext_logits" and
    "pretext_projection". Dropout draws from the "dropout" rng when train. groups: in
    training, the batch is that many batches of N / groups, group-major, each with its own
    batch-norm statistics."""
    if x.shape[0] % groups:
      raise ValueError(f"a batch of {x.shape[0]} cannot be cut into {groups} equal groups")
    x = x.astype(self.dtype)
    for i, width in enumerate(self.widths):
      x = ConvBlock(width, 4, 2, self.dtype, name=f"conv{2 * i}")(x, train=train, groups=groups)
      x = ConvBlock(width, 3, 1, self.dtype, name=f"conv{2 * i + 1}")(x, train=train,
                                                                      groups=groups)
    features = x.astype(jnp.float32).mean(axis=(1, 2))
    aux = {"features": features, "projection": Projection(self.proj_dim, name="supcon")(features)}
    self.param("awl", _awl_init, (2,))

    def classify(num, name):
      # The official dropout is in-place on the pooled feature of the classifier only; the
      # projection head pools again and sees no dropout.
      dropped = nn.Dropout(self.dropout, deterministic=not train)(features)
      fan_in = features.shape[-1]
      logits = nn.Dense(num, kernel_init=_torch_init.kernel_init,
                        bias_init=_torch_init.bias_init(fan_in), name=name)(dropped)
      return jax.nn.softmax(logits, axis=-1) if self.softmax_inside else logits

    if self.pretext_classes:
      aux["pretext_logits"] = classify(self.pretext_classes, PRETEXT_HEAD)
      aux["pretext_projection"] = Projection(self.proj_dim, name="pretext_supcon")(features)
      self.param("pretext_awl", _awl_init, (2,))
    if not self.num_classes:
      return features, aux
    return classify(self.num_classes, HEAD), aux

