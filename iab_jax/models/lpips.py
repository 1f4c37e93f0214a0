"""LPIPS (Zhang et al. 2018) as the `lpips` package (v0.1 weights) computes it, in Flax Linen.

OFA's fingerprint simulator is trained with MSE + LPIPS, so the distance has to be the package's:
inputs in [-1, 1] are shifted and scaled per channel (its ScalingLayer), run through an ImageNet
backbone (torchvision's VGG-16 or AlexNet), and at five layers (vgg: relu1_2 ... relu5_3; alex:
relu1 ... relu5) the features are unit-normalised along channels (x / (||x|| + 1e-10)), their
squared difference weighted per channel by a learned non-negative 1x1 conv ("lin", no bias),
averaged over space and summed over layers. Both images go through the backbone as one batch.

Weights come from two places: the backbone is torchvision's ImageNet classifier (its `features`
only), the lin layers ship inside the lpips package (lpips/weights/v0.1/{vgg,alex}.pth, pickles
that must be converted to safetensors first). Names:

  lpips / torchvision                           Flax params
  features.<i>.* (torchvision, timm)            features/... as in vgg.Features or alexnet.Features
    or net.slice<k>.<i>.* (an lpips.LPIPS)
  lin<k>.model.1.weight (1, C, 1, 1)            lin<k>/kernel (1, 1, C, 1)
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from iab_jax.models import _loading, alexnet, vgg

# The package's ScalingLayer: ImageNet's mean and std mapped to inputs in [-1, 1].
SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
SCALE = np.array([0.458, 0.448, 0.450], np.float32)
EPS = 1e-10  # lpips.normalize_tensor's

CHANNELS = {"vgg": (64, 128, 256, 512, 512), "alex": (64, 192, 384, 256, 256)}

_LIN_NOTES = ("The lin weights are the lpips package's lpips/weights/v0.1/{net}.pth (PyPI "
              "lpips==0.1.4, also github.com/richzhang/PerceptualSimilarity): a pickle of "
              "lin0..lin4.model.1.weight, to be converted to safetensors (same key names) by the "
              "data_prep tool with torch.load(weights_only=True).")

CHECKPOINTS = {
    "lpips_vgg": dict(
        source="timm/vgg16.tv_in1k",
        filename="model.safetensors",
        lin_source="pypi:lpips==0.1.4",
        lin_filename="lpips/weights/v0.1/vgg.pth",
        layout="backbone: timm vgg16 (only features.* is read; torchvision names also work); "
               "lin: lpips v0.1 NetLinLayer state dict",
        arch=dict(net="vgg"),
        preprocess="normalize('half')",
        notes="LPIPS-vgg, the variant used as a training loss. " + _LIN_NOTES.format(net="vgg")),
    "lpips_alex": dict(
        source="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        filename="alexnet-owt-7be5be79.pth",
        lin_source="pypi:lpips==0.1.4",
        lin_filename="lpips/weights/v0.1/alex.pth",
        layout="backbone: torchvision alexnet (only features.* is read); lin: lpips v0.1 "
               "NetLinLayer state dict",
        arch=dict(net="alex"),
        preprocess="normalize('half')",
        notes="LPIPS-alex, the package's default metric. The backbone is torchvision's .pth (no "
              "official safetensors copy): convert it too. " + _LIN_NOTES.format(net="alex")),
}


def _unit_normalize(f: jax.Array) -> jax.Array:
  """f / (||f||_channels + eps), with a zero-gradient norm where f is all zero.

  The forward is the package's; its gradient there would be NaN (0 * inf through the sqrt).
  """
  sq = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
  positive = sq > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
  return f / (norm + EPS)


class LPIPS(nn.Module):
  """LPIPS distance between two batches of images.

  __call__(x, y): x, y (N, H, W, 3) in [-1, 1] (the package's normalize=False), the same shape;
  returns (N,) float32 distances. The backbone runs in `dtype`; normalisation and the lin layers
  in float32. Not a `Model`: it compares two images and has no classifier.
  """
  net: str = "vgg"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    if self.net not in CHANNELS:
      raise ValueError(f"unknown LPIPS backbone {self.net!r}; known: {', '.join(CHANNELS)}")
    if x.shape != y.shape:
      raise ValueError(f"LPIPS compares images of one shape, got {x.shape} and {y.shape}")
    n = x.shape[0]
    z = jnp.concatenate([x, y]).astype(jnp.float32)
    z = (z - SHIFT) / SCALE
    if self.net == "vgg":
      _, stages = vgg.Features(vgg.VGG16_STAGES, dtype=self.dtype, name="features")(z)
    else:
      _, stages = alexnet.Features(dtype=self.dtype, name="features")(z)

    total = jnp.zeros((n,), jnp.float32)
    for k, f in enumerate(stages):
      f = _unit_normalize(f.astype(jnp.float32))
      diff = jnp.square(f[:n] - f[n:])
      # torch's Conv2d default init; the package's pretrained lin weights replace it.
      weighted = nn.Conv(1, (1, 1), use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32,
                         kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                         name=f"lin{k}")(diff)
      total = total + jnp.mean(weighted, axis=(1, 2, 3))
    return total


# ---------------------------------------------------------------------------------------------
# Weights.

_CLASSIFIER_PREFIXES = ("classifier.", "pre_logits.", "head.")


def _backbone_state(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """torchvision `features.<i>` names for a torchvision/timm classifier's or an LPIPS's backbone."""
  out = {}
  for key, value in state.items():
    m = re.fullmatch(r"net\.slice\d+\.(\d+\.(?:weight|bias))", key)
    if m:
      out["features." + m.group(1)] = value
    elif not key.startswith(_CLASSIFIER_PREFIXES + ("scaling_layer.",)):
      out[key] = value  # anything unexpected is reported by the features converters
  return out


def _backbone_keys(net: str) -> list[str]:
  if net == "vgg":
    indices = list(vgg._conv_keys(vgg.VGG16_STAGES))
  else:
    indices = [c[0] for c in alexnet._CONVS]
  return [f"features.{i}.{f}" for i in indices for f in ("weight", "bias")]


def from_lpips(state_backbone: Mapping[str, np.ndarray], state_lin: Mapping[str, np.ndarray],
               net: str = "vgg") -> dict[str, Any]:
  """Flax {"params"} of an LPIPS(net) from its backbone's and its lin layers' state dicts.

  state_backbone: torchvision's (or timm's) VGG-16 / AlexNet state dict, whose classifier is
  ignored, or the `net.slice<k>.<i>.*` tensors of an lpips.LPIPS. state_lin: the lpips package's
  v0.1 weights, lin<k>.model.1.weight of shape (1, C, 1, 1). Missing or unexpected keys and wrong
  shapes are errors naming them.
  """
  if net not in CHANNELS:
    raise ValueError(f"unknown LPIPS backbone {net!r}; known: {', '.join(CHANNELS)}")
  backbone = _backbone_state(state_backbone)
  what = "VGG-16" if net == "vgg" else "AlexNet"
  _loading.check_state_keys(backbone, _backbone_keys(net), f"LPIPS-{net} backbone ({what})")
  if net == "vgg":
    params = {"features": vgg.features_from_torchvision(backbone)}
  else:
    params = {"features": alexnet.features_from_torchvision(backbone)}

  lin = {k: v for k, v in state_lin.items() if not k.startswith("scaling_layer.")}
  _loading.check_state_keys(lin, [f"lin{k}.model.1.weight" for k in range(5)],
                            f"LPIPS-{net} lin layers (lpips v0.1)")
  for k, channels in enumerate(CHANNELS[net]):
    key = f"lin{k}.model.1.weight"
    w = np.asarray(lin[key], np.float32)
    if w.shape != (1, channels, 1, 1):
      raise ValueError(f"{key}: expected shape (1, {channels}, 1, 1) for LPIPS-{net}, got "
                       f"{tuple(w.shape)}")
    params[f"lin{k}"] = {"kernel": _loading.conv_kernel(w)}
  return {"params": params}


def load_pretrained(variables: dict[str, Any], backbone_path: str | os.PathLike,
                    lin_path: str | os.PathLike, *, net: str = "vgg") -> dict[str, Any]:
  """Returns `variables` (an LPIPS(net)'s {"params"}) with the backbone's and lin weights.

  Both files are safetensors: the backbone with torchvision's or timm's key names (e.g.
  timm/vgg16.tv_in1k's model.safetensors), the lin layers converted from the lpips package.
  """
  name = f"lpips_{net}"
  if name not in CHECKPOINTS:
    raise ValueError(f"unknown LPIPS backbone {net!r}; known: {', '.join(CHANNELS)}")
  entry = CHECKPOINTS[name]
  backbone = _loading.read_safetensors(
      backbone_path, f"the LPIPS-{net} backbone as safetensors with torchvision's key names, "
      f"e.g. {entry['filename']} from {entry['source']}")
  lin = _loading.read_safetensors(
      lin_path, f"the LPIPS-{net} lin layers as safetensors (lin0..lin4.model.1.weight), "
      f"converted from {entry['lin_filename']} of {entry['lin_source']}")
  converted = from_lpips(backbone, lin, net)
  return _loading.merge(variables, converted, path=f"{os.fspath(backbone_path)} + "
                        f"{os.fspath(lin_path)}")
