"""OFA's fingerprint extractor (Fei et al., AAAI 2026): noise residual -> log spectrum -> ResNet-50.

OFA tells generators apart by the fingerprint they leave in an image's amplitude spectrum, so the
extractor never sees pixels. An image x in [-1, 1] goes through, in order (paper Sec. "Fingerprint
Extractor", the authors' train_contrastivev_base_real_noiser_fft_bank.py):

  residual(...)  clamp to [-1, 1], map to [0, 1], run Corvi et al.'s frozen sigma=1 DnCNN
                 (iab_jax.models.dncnn, CHECKPOINTS["dncnn_corvi_sigma1"]: valid convolutions, so
                 a 256 crop gives 222 x 222) and divide its output by 256: r = net(x) / 256;
  spectrum(r)    T(r) = log(1 + |FFT2(r)|) per channel, no fftshift, no normalisation;
  Model          torchvision's ImageNet ResNet-50 on T(r), its fc replaced by Linear(2048 -> 128):
                 the fingerprint phi(T(r)), L2-normalised by iab_jax.methods.ofa_losses;
  PairHead       g([z_a; z_b]): 256 -> 128 -> LReLU(0.2) -> 128 -> LReLU -> 1 logit, "same model?";
  RealHead       f(z): 128 -> 128 -> LReLU -> 128 -> LReLU -> 1 logit, reconstructed (1) or real.

The denoiser is not part of Model: it is frozen, and its residuals could be computed once per
image; Model's input is the spectrum.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from iab_jax.models import _torch_init, dncnn, resnet

# The denoiser OFA's code loads (denoiser.py: model_best.th, sigma = 1), listed by dncnn.
DENOISER = "dncnn_corvi_sigma1"
RESIDUAL_SCALE = 256.0  # OFA's img2noise: denoiser.network(x) / 256 (sigma / 256 with sigma = 1)


def denoiser(**overrides) -> dncnn.Model:
  """Corvi et al.'s DnCNN (17 valid 3x3 convs, batch norm on layers 2..16) for its weights."""
  arch = dict(dncnn.CHECKPOINTS[DENOISER]["arch"])
  arch.update(overrides)
  return dncnn.Model(**arch)


def denoiser_forward(model: dncnn.Model) -> Callable[[Any, jax.Array], tuple[jax.Array, dict]]:
  """model's forward in inference mode (running batch-norm statistics, as OFA's .eval() net): the
  `denoiser_apply` that residual() takes."""
  return functools.partial(model.apply, train=False)


def residual(denoiser_apply: Callable[[Any, jax.Array], tuple[jax.Array, dict]],
             denoiser_variables: Any, x: jax.Array, scale: float = RESIDUAL_SCALE) -> jax.Array:
  """The noise residual OFA's extractor looks at, (N, H - 34, W - 34, 3) for Corvi's denoiser.

  x: (N, H, W, 3) images in [-1, 1] (values outside are clamped, as OFA's code does).
  denoiser_apply(variables, images in [0, 1]) -> (denoised, aux) with aux["residual"] the
  network's raw output (dncnn.Model's convention); it is divided by `scale`. The denoiser is frozen:
  no gradient flows through it.
  """
  x01 = (jnp.clip(x.astype(jnp.float32), -1.0, 1.0) + 1.0) / 2.0
  _, aux = denoiser_apply(denoiser_variables, x01)
  return jax.lax.stop_gradient(aux["residual"].astype(jnp.float32)) / scale


def spectrum(r: jax.Array) -> jax.Array:
  """T(r) = log(1 + |FFT2(r)|) per channel over H, W of an NHWC batch; float32, same shape."""
  f = jnp.fft.fft2(r.astype(jnp.float32), axes=(1, 2))
  return jnp.log1p(jnp.abs(f)).astype(jnp.float32)


def _dense(features: int, fan_in: int, name: str) -> nn.Dense:
  # torch's nn.Linear initialisers, as the reference heads start.
  return nn.Dense(features, dtype=jnp.float32, param_dtype=jnp.float32,
                  kernel_init=_torch_init.kernel_init, bias_init=_torch_init.bias_init(fan_in),
                  name=name)


class Model(nn.Module):
  """The fingerprint extractor phi: a torchvision-layout ResNet, its fc replaced by an embedding.

  Input: (N, h, w, 3) spectra T(r) (222 x 222 for 256 crops and Corvi's denoiser), not images.
  Output with num_classes = 0: the un-normalised fingerprint (N, embed_dim) float32, also
  aux["features"]; with num_classes > 0: logits (N, num_classes) from a linear `head` on the
  fingerprint (OFA's closed/open-set fine-tuning adds such a (T + 1)-way head). aux["pooled"] is the
  backbone's pooled (N, 32 * width) feature.
  """
  num_classes: int = 0
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  embed_dim: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
    pooled, _ = resnet.Model(num_classes=0, stage_sizes=tuple(self.stage_sizes), width=self.width,
                             dtype=self.dtype, name="backbone")(x, train=train)
    z = _dense(self.embed_dim, pooled.shape[-1], "embed")(pooled)
    aux = {"features": z, "pooled": pooled}
    if not self.num_classes:
      return z, aux
    logits = _dense(self.num_classes, self.embed_dim, "head")(z)
    return logits, aux


class PairHead(nn.Module):
  """OFA's attribution head g: one logit per pair, > 0 for "the same generator".

  __call__(za, zb): (..., d) each -> (...,) logits of MLP([za; zb]): Linear(2d -> hidden),
  LeakyReLU(slope), Linear(hidden -> hidden), LeakyReLU(slope), Linear(hidden -> 1). Not symmetric
  in its two arguments, as the reference is not.
  """
  hidden: int = 128
  slope: float = 0.2

  @nn.compact
  def __call__(self, za: jax.Array, zb: jax.Array) -> jax.Array:
    za, zb = jnp.broadcast_arrays(za.astype(jnp.float32), zb.astype(jnp.float32))
    h = jnp.concatenate([za, zb], axis=-1)
    h = nn.leaky_relu(_dense(self.hidden, h.shape[-1], "fc1")(h), self.slope)
    h = nn.leaky_relu(_dense(self.hidden, self.hidden, "fc2")(h), self.slope)
    return _dense(1, self.hidden, "fc3")(h)[..., 0]


class RealHead(nn.Module):
  """OFA's real/reconstructed head f: (..., d) -> (...,) logits, > 0 for "reconstructed".

  MLP: Linear(d -> hidden), LeakyReLU(slope), Linear(hidden -> hidden), LeakyReLU, Linear(-> 1).
  """
  hidden: int = 128
  slope: float = 0.2

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    z = z.astype(jnp.float32)
    h = nn.leaky_relu(_dense(self.hidden, z.shape[-1], "fc1")(z), self.slope)
    h = nn.leaky_relu(_dense(self.hidden, self.hidden, "fc2")(h), self.slope)
    return _dense(1, self.hidden, "fc3")(h)[..., 0]


def load_pretrained(variables: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
  """`variables` with a torchvision-layout ResNet's weights (e.g. resnet50.tv_in1k) in the backbone.

  The file's fc (ImageNet's 1000 classes) is not loaded: the embedding and the head stay as
  initialised, as OFA replaces torchvision's fc by Linear(2048 -> 128). Arrays or
  jax.ShapeDtypeStructs; the backbone's stage sizes are read off `variables`.
  """
  backbone = {c: variables[c]["backbone"] for c in ("params", "batch_stats")}
  loaded = resnet.load_pretrained(backbone, path)  # no "fc" in a headless backbone: dropped
  out = dict(variables)
  for c in ("params", "batch_stats"):
    out[c] = {**variables[c], "backbone": loaded[c]}
  return out


CHECKPOINTS: dict[str, dict[str, Any]] = {}  # OFA's extractor weights are not public
PRETRAINED_FROM = ("resnet50.tv_in1k",)  # the backbone's ImageNet start, listed by resnet
HEAD = "head"  # the classifier a method replaces (iab_jax.weights keeps it fresh)
