"""DnCNN residual denoiser (Zhang et al. 2017) in Flax Linen: deepinv's, KAIR's, Corvi's weights.

OFA's fingerprint extractor does not look at images but at the noise residual a pretrained
denoiser finds in them (then at its log-magnitude spectrum), so this module's job is that residual.
DnCNN is a plain stack of 3x3 convs (torch's padding 1 on every side): conv + ReLU, depth - 2
times conv (+ BN) + ReLU, conv. Its last conv predicts the noise residual r and the denoised image
is x - r (the paper's residual learning); aux["residual"] is r.

The public checkpoints differ from the paper's 17 layers with batch norm:
  - deepinv's DnCNN (the defaults here): depth 20, 64 features, biases, no batch norm, and its
    forward adds the last conv's output to the input, i.e. that conv predicts -r;
  - KAIR's released DnCNNs (dncnn_15/25/50 depth 17, dncnn_color_blind depth 20) have their batch
    norms merged into the convs (act_mode "R"); KAIR's training layout ("BR") keeps them, with
    eps 1e-4 and torch momentum 0.9, and `batch_norm=True` reproduces it;
  - Corvi et al.'s sigma=1 denoiser (the noise residuals of "Intriguing properties of synthetic
    images" and of OFA's fingerprint extractor, CHECKPOINTS["dncnn_corvi_sigma1"]): depth 17, 64
    features, batch norm (torch eps 1e-5, momentum 0.1) on layers 2..16 whose convs have no bias,
    ReLU, a linear last conv, and *valid* convolutions (padding 0: every layer trims one pixel per
    side, 256 -> 222). Its last conv predicts the noise times 256/sigma = 256: the residual in
    image units is net(x) / 256 and the denoised image x[17:-17, 17:-17] - net(x) / 256. Here
    aux["residual"] is always the last conv's output in the network's own units, and
    `residual_scale` (256 for Corvi's, 1 for the others) is what the denoised output divides it by.
Names and the mapping from the reference state dicts (i = 0 .. depth - 3):

  deepinv               KAIR "R"        KAIR "BR"       Corvi          Flax
  in_conv.*             model.0.*       model.0.*       0.*            params/in_conv/*
  conv_list.<i>.*       model.<2i+2>.*  model.<3i+2>.*  <3i+2>.weight  params/conv_<i>/*
  -                     -               model.<3i+3>.*  <3i+3>.*       {params,batch_stats}/bn_<i>/*
  out_conv.* (negated)  model.<2d-2>.*  model.<3d-4>.*  <3d-4>.*       params/out_conv/*

deepinv's out_conv is negated on conversion (exact in floating point), so that out_conv means the
same thing whatever the source.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from iab_jax.models import _loading
from iab_jax.models.resnet import BatchNorm

# deepinv's init with pretrained=None: kaiming_normal_(fan_in, a=0) conv weights; the biases keep
# torch's default uniform(+-1/sqrt(fan_in)), which a Flax bias initialiser cannot compute itself.
_kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

CHECKPOINTS = {
    "dncnn_sigma2_color": dict(
        source="deepinv/dncnn",
        filename="dncnn_sigma2_color.pth",
        layout="deepinv DnCNN(in_channels=3, out_channels=3, depth=20, bias=True, nf=64)",
        arch={},
        preprocess="normalize('unit')",
        notes="deepinv's pretrained=\"download\" weights for colour images (RGB in [0, 1]). A "
              "pickle (plain OrderedDict of tensors): convert to safetensors with deepinv's key "
              "names by the data_prep tool (torch.load(weights_only=True)). The repo also has "
              "dncnn_sigma2_lipschitz_color.pth, the same layout. The training noise level "
              "(\"sigma2\", presumably 2/255) was not confirmed."),
    "dncnn_color_blind": dict(
        source="https://github.com/cszn/KAIR/releases/download/v1.0/dncnn_color_blind.pth",
        filename="dncnn_color_blind.pth",
        layout="KAIR DnCNN(in_nc=3, out_nc=3, nc=64, nb=20, act_mode='R') (batch norm merged)",
        arch=dict(depth=20),
        preprocess="normalize('unit')",
        notes="KAIR's blind colour Gaussian denoiser (RGB in [0, 1]); a GitHub release asset, "
              "not on Hugging Face. A pickle: convert to safetensors with KAIR's key names "
              "(model.<i>.*) by the data_prep tool."),
    "dncnn_corvi_sigma1": dict(
        source="https://github.com/grip-unina/SyntheticImagesAnalysis/raw/"
               "5343a64ab045bca067e875a267739eb236394aaf/DenoiserWeight/model_best.th",
        filename="model_best.th",
        layout="GRIP-UNINA DnCNN.make_net(3, 17 layers, 64 features, bns on layers 2..16, "
               "relu, last linear, bn_momentum=0.1, padding=0): nn.Sequential keys <i>.*, "
               "under checkpoint['network']",
        arch=dict(depth=17, width=64, padding=0, batch_norm=True, bn_conv_bias=False,
                  bn_epsilon=1e-5, bn_momentum=0.9, residual_scale=256.0),
        preprocess="normalize('unit')",
        notes="Corvi et al.'s sigma=1 colour denoiser (RGB in [0, 1]; their own scripts divide "
              "by 256, OFA's map [-1, 1] to [0, 1]), used by \"Intriguing properties of "
              "synthetic images\" (CVPRW 2023) and by OFA's fingerprint extractor (denoiser.py, "
              "weights_path model_best.th, residual = network(x) / 256). Published as "
              "DenoiserWeight/model_best.th inside a Google Drive zip (README of "
              "grip-unina/SyntheticImagesAnalysis: drive.google.com/file/d/"
              "1MvnHmtinwL1kNAUl1ikHsPKz5XIfCpFx) and committed in that repo at 5343a64 (removed "
              "later): 2,272,573 bytes, sha256 bf8e302573ca412c3d59d1271fb4b185242f582dee676e734a"
              "9995b7436fbfdf; {'network': state dict, 'global_step': 39}; 558,403 parameters. "
              "GRIP's non-commercial licence. A pickle: convert to safetensors by the data_prep "
              "tool (unwrapping 'network')."),
}


def _bias_init(fan_in: int):
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class Model(nn.Module):
  """DnCNN; the defaults are deepinv's DnCNN (depth 20, 64 features, biases, no batch norm).

  Input: (N, H, W, channels) images as the checkpoint expects them (RGB in [0, 1] for the public
  ones); any H, W (> 2 * depth with padding 0). Returns (denoised, aux): the denoised image
  x - r / residual_scale float32, aux["residual"] the last conv's output r (the predicted noise,
  times residual_scale) float32, aux["features"] the last hidden feature map averaged over space
  (N, width) float32. With padding 1 they are (N, H, W, channels); with padding 0 (valid convs)
  (N, H - 2 * depth, W - 2 * depth, channels), x being cropped by `depth` pixels per side to
  match. A denoiser has no classifier: num_classes must be 0.
  """
  num_classes: int = 0
  depth: int = 20
  width: int = 64
  channels: int = 3
  bias: bool = True
  batch_norm: bool = False
  padding: int = 1  # per side and per conv: 1 keeps the size, 0 is Corvi's valid convolution
  bn_conv_bias: bool = True  # whether the convs before a batch norm have biases (Corvi's: no)
  # Flax's momentum, the running average's own weight: KAIR's torch momentum 0.9 is 0.1 here,
  # Corvi's torch default 0.1 is 0.9.
  bn_momentum: float = 0.1
  bn_epsilon: float = 1e-4  # KAIR's; Corvi's is torch's default 1e-5
  residual_scale: float = 1.0  # the last conv predicts residual_scale x the noise (Corvi's: 256)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
    if self.num_classes != 0:
      raise ValueError(f"DnCNN is a denoiser without a classifier: num_classes must be 0, got "
                       f"{self.num_classes}")
    if self.depth < 2:
      raise ValueError(f"DnCNN needs depth >= 2 (an input and an output conv), got {self.depth}")
    if self.padding not in (0, 1):
      raise ValueError(f"DnCNN padding must be 1 (same size) or 0 (valid), got {self.padding}")
    crop = self.depth * (1 - self.padding)  # pixels lost per side
    if min(x.shape[1:3]) <= 2 * crop:
      raise ValueError(f"a {x.shape[1]}x{x.shape[2]} input leaves nothing after {self.depth} "
                       f"valid 3x3 convs")

    def conv(features: int, fan_in: int, name: str, use_bias: bool = self.bias):
      p = self.padding
      return nn.Conv(features, (3, 3), padding=((p, p), (p, p)), use_bias=use_bias,
                     dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_kernel_init,
                     bias_init=_bias_init(fan_in * 9), name=name)

    x = x.astype(jnp.float32)
    h = nn.relu(conv(self.width, x.shape[-1], "in_conv")(x.astype(self.dtype)))
    middle_bias = self.bias and (self.bn_conv_bias or not self.batch_norm)
    for i in range(self.depth - 2):
      h = conv(self.width, self.width, f"conv_{i}", middle_bias)(h)
      if self.batch_norm:
        h = BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                      epsilon=self.bn_epsilon, dtype=self.dtype, name=f"bn_{i}")(h)
      h = nn.relu(h)
    residual = conv(self.channels, self.width, "out_conv")(h).astype(jnp.float32)
    features = jnp.mean(h.astype(jnp.float32), axis=(1, 2))
    if crop:
      x = x[:, crop:x.shape[1] - crop, crop:x.shape[2] - crop]
    denoised = x - residual / self.residual_scale  # exact for the scale 1 of the other nets
    return denoised, {"residual": residual, "features": features}


# ---------------------------------------------------------------------------------------------
# deepinv and KAIR weights.


def _convert(state: Mapping[str, np.ndarray], keys: dict[str, tuple[str, ...]], what: str,
             width: int, channels: int, negate: tuple[str, ...] = ()) -> dict[str, Any]:
  """Maps `keys` (torch key -> Flax path) of `state` to Flax variables, checking shapes.

  Convs must be 3x3 with `width` features (`channels` at the output); the input channels of
  in_conv are taken from the file.
  """
  _loading.check_state_keys(state, keys, what)
  out: dict[str, Any] = {}
  in_key = next(k for k, p in keys.items() if p[1:] == ("in_conv", "kernel"))
  in_channels = np.shape(state[in_key])[1]
  for key, path in keys.items():
    value = np.asarray(state[key], np.float32)
    module, field = path[-2], path[-1]
    cout = channels if module == "out_conv" else width
    if field == "kernel":
      cin = in_channels if module == "in_conv" else width
      if value.shape != (cout, cin, 3, 3):
        raise ValueError(f"{key}: expected shape {(cout, cin, 3, 3)} for {what}, got "
                         f"{tuple(value.shape)}")
      value = _loading.conv_kernel(value)
    elif value.shape != (cout,):
      raise ValueError(f"{key}: expected shape {(cout,)} for {what}, got {tuple(value.shape)}")
    if module in negate:
      value = -value
    tree = out
    for name in path[:-1]:
      tree = tree.setdefault(name, {})
    tree[path[-1]] = np.ascontiguousarray(value)
  return out


def from_deepinv(state: Mapping[str, np.ndarray], *, depth: int = 20, width: int = 64,
                 channels: int = 3, bias: bool = True) -> dict[str, Any]:
  """Maps a deepinv DnCNN state dict (numpy arrays) to Flax {"params"} of Model(batch_norm=False).

  out_conv is negated: deepinv adds its output to the input, this Model subtracts it.
  """
  fields = (("weight", "kernel"), ("bias", "bias")) if bias else (("weight", "kernel"),)
  keys = {}
  modules = [("in_conv", "in_conv")] + [(f"conv_list.{i}", f"conv_{i}") for i in range(depth - 2)]
  modules.append(("out_conv", "out_conv"))
  for torch_name, flax_name in modules:
    for torch_field, flax_field in fields:
      keys[f"{torch_name}.{torch_field}"] = ("params", flax_name, flax_field)
  return _convert(state, keys, f"deepinv DnCNN(depth={depth}, nf={width}, bias={bias})", width,
                  channels, negate=("out_conv",))


def from_kair(state: Mapping[str, np.ndarray], *, depth: int = 20, width: int = 64,
              channels: int = 3, batch_norm: bool = False) -> dict[str, Any]:
  """Maps a KAIR DnCNN state dict (model.<i>.*) to Flax variables.

  batch_norm=False: the released weights (act_mode "R", batch norm merged), {"params"};
  batch_norm=True: KAIR's training layout ("BR"), {"params", "batch_stats"}.
  """
  keys = {}

  def add_conv(index: int, name: str):
    keys[f"model.{index}.weight"] = ("params", name, "kernel")
    keys[f"model.{index}.bias"] = ("params", name, "bias")

  add_conv(0, "in_conv")
  step = 3 if batch_norm else 2
  for i in range(depth - 2):
    add_conv(2 + step * i, f"conv_{i}")
    if batch_norm:
      bn = 3 + step * i
      keys[f"model.{bn}.weight"] = ("params", f"bn_{i}", "scale")
      keys[f"model.{bn}.bias"] = ("params", f"bn_{i}", "bias")
      keys[f"model.{bn}.running_mean"] = ("batch_stats", f"bn_{i}", "mean")
      keys[f"model.{bn}.running_var"] = ("batch_stats", f"bn_{i}", "var")
  add_conv(2 + step * (depth - 2), "out_conv")
  mode = "BR" if batch_norm else "R"
  return _convert(state, keys, f"KAIR DnCNN(nb={depth}, nc={width}, act_mode='{mode}')", width,
                  channels)


def from_corvi(state: Mapping[str, np.ndarray], *, depth: int = 17, width: int = 64,
               channels: int = 3) -> dict[str, Any]:
  """Maps Corvi et al.'s DnCNN state dict (GRIP's make_net nn.Sequential, checkpoint["network"])
  to Flax {"params", "batch_stats"} of Model(**CHECKPOINTS["dncnn_corvi_sigma1"]["arch"]).

  Sequential indices: 0 the first conv (bias), 1 its ReLU; then per middle layer i a conv without
  bias at 3i + 2, its BatchNorm2d at 3i + 3 and a ReLU; the last conv (bias, no activation) at
  3 (depth - 2) + 2.
  """
  keys = {"0.weight": ("params", "in_conv", "kernel"), "0.bias": ("params", "in_conv", "bias")}
  for i in range(depth - 2):
    keys[f"{3 * i + 2}.weight"] = ("params", f"conv_{i}", "kernel")
    bn = 3 * i + 3
    keys[f"{bn}.weight"] = ("params", f"bn_{i}", "scale")
    keys[f"{bn}.bias"] = ("params", f"bn_{i}", "bias")
    keys[f"{bn}.running_mean"] = ("batch_stats", f"bn_{i}", "mean")
    keys[f"{bn}.running_var"] = ("batch_stats", f"bn_{i}", "var")
  last = 3 * (depth - 2) + 2
  keys[f"{last}.weight"] = ("params", "out_conv", "kernel")
  keys[f"{last}.bias"] = ("params", "out_conv", "bias")
  return _convert(state, keys, f"Corvi DnCNN(depth={depth}, features={width})", width, channels)


def _depth_of(params: Mapping[str, Any]) -> int:
  return sum(name.startswith("conv_") for name in params) + 2


def load_pretrained(variables: dict[str, Any], path: str | os.PathLike, *,
                    layout: str | None = None) -> dict[str, Any]:
  """Returns `variables` with DnCNN weights from a safetensors file.

  layout: "deepinv" (in_conv / conv_list / out_conv keys, e.g. converted from deepinv/dncnn's
  dncnn_sigma2_color.pth), "kair" (model.<i> keys, e.g. KAIR's dncnn_color_blind.pth), "corvi"
  (<i> keys, GRIP's model_best.th), or None to tell them apart by their first conv's key. The
  architecture (depth, width, channels, bias, batch norm) is read off `variables`, arrays or
  jax.ShapeDtypeStructs; any difference with the file is an error naming the key.
  """
  if layout not in (None, "deepinv", "kair", "corvi"):
    raise ValueError(f"unknown DnCNN layout {layout!r}; known: deepinv, kair, corvi")
  state = _loading.read_safetensors(
      path, "a DnCNN safetensors file with deepinv's key names (converted from "
      "dncnn_sigma2_color.pth of deepinv/dncnn on Hugging Face), KAIR's (from "
      "dncnn_color_blind.pth of github.com/cszn/KAIR releases) or Corvi et al.'s (from "
      "model_best.th of grip-unina/SyntheticImagesAnalysis)")
  if layout is None:
    layout = "deepinv"
    if "in_conv.weight" not in state:
      layout = "kair" if "model.0.weight" in state else "corvi" if "0.weight" in state else layout
  params = variables["params"]
  arch = dict(depth=_depth_of(params), width=params["in_conv"]["kernel"].shape[-1],
              channels=params["out_conv"]["kernel"].shape[-1])
  if layout == "deepinv":
    converted = from_deepinv(state, bias="bias" in params["in_conv"], **arch)
  elif layout == "kair":
    converted = from_kair(state, batch_norm=bool(variables.get("batch_stats")), **arch)
  else:
    converted = from_corvi(state, **arch)
  return _loading.merge(variables, converted, path=os.fspath(path))


OUTPUT_KIND = "image"  # the output is the denoised image, not a pooled feature
