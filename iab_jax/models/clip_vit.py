"""CLIP's vision transformer (image tower), for methods that build on frozen or tuned CLIP features.

One implementation serves the two public checkpoints the benchmark's methods use: OpenAI's ViT-L/14
as Hugging Face transformers stores it (QuickGELU) and LAION's ViT-H/14 as open_clip stores it
(exact GELU). Both are the same network: patch conv without bias, a class token, a learned position
table, a LayerNorm before the blocks ("pre_layrnorm" / "ln_pre"), pre-norm residual blocks, a
LayerNorm on the final class token and a bias-free projection to the joint image-text space.

Flax parameters and the reference keys they come from (i = block index):

  Flax params                 transformers (vision_model. ...)          open_clip (visual. ...)
  patch_embed/kernel          embeddings.patch_embedding.weight         conv1.weight
  class_embedding             embeddings.class_embedding                class_embedding
  pos_embedding               embeddings.position_embedding.weight      positional_embedding
  ln_pre/{scale,bias}         pre_layrnorm.{weight,bias}                ln_pre.{weight,bias}
  block_i/ln_1                encoder.layers.i.layer_norm1              transformer.resblocks.i.ln_1
  block_i/attn/qkv            encoder.layers.i.self_attn.{q,k,v}_proj   ...i.attn.in_proj_*
  block_i/attn/out            encoder.layers.i.self_attn.out_proj       ....attn.out_proj
  block_i/ln_2                encoder.layers.i.layer_norm2              transformer.resblocks.i.ln_2
  block_i/fc1, block_i/fc2    encoder.layers.i.mlp.fc1, .fc2            ....mlp.c_fc, .mlp.c_proj
  ln_post                     post_layernorm                            ln_post
  proj/kernel (width, embed)  visual_projection.weight (transposed)     proj (as is)

The query, key and value projections are one fused (width, 3 * width) kernel, open_clip's layout;
transformers' three separate projections are concatenated in q, k, v order. `head` (a linear
classifier on the projected embedding, when num_classes > 0) is ours: no checkpoint has one.

At a resolution other than the native one the patch position table is resized on the fly with
torch's bicubic interpolation (align_corners=False, no antialiasing), exactly as transformers does
with `interpolate_pos_encoding=True`. open_clip instead resizes the table once at load time with
antialiasing, which differs when shrinking; we follow transformers for both checkpoints.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from iab_jax.models import _loading, _torch_init

_LN_EPS = 1e-5  # torch's default, which both transformers' config and open_clip use

# torch's nn.Linear default init: kaiming_uniform_(a=sqrt(5)), i.e. uniform(+-1/sqrt(fan_in)).
_linear_kernel_init = _torch_init.kernel_init


_linear_bias_init = _torch_init.bias_init


def quick_gelu(x: jax.Array) -> jax.Array:
  """OpenAI CLIP's sigmoid approximation of GELU, which its weights were trained with."""
  return x * jax.nn.sigmoid(1.702 * x)


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": quick_gelu,
    # torch's nn.GELU is the exact erf form; jax.nn.gelu defaults to the tanh approximation.
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


def torch_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) matrix M with M @ v == torch's 1-d bicubic resize of v.

  torch's `interpolate(mode="bicubic", align_corners=False, antialias=False)`: Keys' cubic with
  A = -0.75 (jax.image.resize uses A = -0.5 and antialiases when shrinking), source coordinate
  (i + 0.5) * in / out - 0.5 without clamping, taps clamped to the border.
  """
  a = -0.75

  def near(t):  # |t| <= 1
    return ((a + 2) * t - (a + 3)) * t * t + 1

  def far(t):  # 1 < |t| < 2
    return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

  m = np.zeros((out_size, in_size), np.float64)
  scale = in_size / out_size
  for i in range(out_size):
    src = (i + 0.5) * scale - 0.5
    base = math.floor(src)
    t = src - base
    weights = (far(t + 1), near(t), near(1 - t), far(2 - t))
    for offset, weight in zip((-1, 0, 1, 2), weights):
      m[i, min(max(base + offset, 0), in_size - 1)] += weight
  return m


def resize_position_table(table: jax.Array, grid: tuple[int, int],
                          new_grid: tuple[int, int]) -> jax.Array:
  """A (1 + gh * gw, D) class + patch position table resized to new_grid, transformers' way."""
  if tuple(grid) == tuple(new_grid):
    return table
  cls, patches = table[:1], table[1:].reshape(*grid, -1)
  rows = jnp.asarray(torch_bicubic_matrix(grid[0], new_grid[0]), table.dtype)
  cols = jnp.asarray(torch_bicubic_matrix(grid[1], new_grid[1]), table.dtype)
  hp = jax.lax.Precision.HIGHEST  # a resize of weights, not activations: keep float32 exact
  patches = jnp.einsum("yh,hwd,xw->yxd", rows, patches, cols, precision=hp)
  return jnp.concatenate([cls, patches.reshape(new_grid[0] * new_grid[1], -1)], axis=0)


class SelfAttention(nn.Module):
  """Multi-head self-attention with a fused q/k/v projection (nn.MultiheadAttention's layout)."""
  width: int
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, length, _ = x.shape
    if self.width % self.heads:
      raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
    head_dim = self.width // self.heads
    # torch's nn.MultiheadAttention: xavier_uniform_ on the (3 * width, width) in-projection,
    # zero biases; the same bound as Flax's xavier_uniform on the (width, 3 * width) kernel.
    qkv = nn.Dense(3 * self.width, dtype=self.dtype, param_dtype=jnp.float32,
                   kernel_init=nn.initializers.xavier_uniform(), name="qkv")(x)
    q, k, v = (t.reshape(n, length, self.heads, head_dim) for t in jnp.split(qkv, 3, axis=-1))
    y = jax.nn.dot_product_attention(q, k, v, scale=head_dim**-0.5)
    y = y.reshape(n, length, self.width)
    return nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=_linear_kernel_init, name="out")(y)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x)) with a 4x hidden width."""
  width: int
  heads: int
  activation: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    norm = lambda name: nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, param_dtype=jnp.float32,
                                     name=name)
    dense = lambda features, fan_in, name: nn.Dense(
        features, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_linear_kernel_init,
        bias_init=_linear_bias_init(fan_in), name=name)
    x = x + SelfAttention(self.width, self.heads, dtype=self.dtype, name="attn")(norm("ln_1")(x))
    y = dense(4 * self.width, self.width, "fc1")(norm("ln_2")(x))
    y = dense(self.width, 4 * self.width, "fc2")(_ACTIVATIONS[self.activation](y))
    return x + y


class Model(nn.Module):
  """CLIP image tower; the defaults are OpenAI's ViT-L/14 (CHECKPOINTS has ViT-H/14's too).

  Input: (N, H, W, 3) float32 normalised with CLIP's mean/std; H, W >= patch_size (the remainder
  that does not fill a patch is dropped, as torch's strided conv does). Returns (output, aux):
  output is the projected image embedding (N, embed_dim) float32 when num_classes == 0, else the
  logits of a linear head on that embedding. aux:
    "features", "embedding": the projected embedding, float32;
    "cls": the class token after ln_post, before the projection (N, width), float32;
    "tokens": all final tokens before ln_post (N, 1 + h * w, width), compute dtype;
    "hidden_states": transformers' `hidden_states` list, layers + 1 entries: the input of the
      first block (after ln_pre) and every block's output, so [-2] is the penultimate layer.
  """
  num_classes: int = 0
  width: int = 1024
  layers: int = 24
  heads: int = 16
  patch_size: int = 14
  image_size: int = 224  # native: the position table has (image_size // patch_size)**2 + 1 rows
  embed_dim: int = 768
  activation: str = "quick_gelu"  # "quick_gelu" (OpenAI) | "gelu" (exact; LAION's open_clip)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
    del train  # no dropout, no batch norm: train and eval compute the same function
    if self.activation not in _ACTIVATIONS:
      raise ValueError(f"unknown activation {self.activation!r}; known: {', '.join(_ACTIVATIONS)}")
    n, h, w, _ = x.shape
    p = self.patch_size
    if h < p or w < p:
      raise ValueError(f"input {h}x{w} is smaller than one {p}x{p} patch")
    grid = self.image_size // p
    scale = self.width**-0.5  # open_clip's init of the embeddings and the projection

    x = nn.Conv(self.width, (p, p), (p, p), padding="VALID", use_bias=False, dtype=self.dtype,
                param_dtype=jnp.float32, kernel_init=_linear_kernel_init,
                name="patch_embed")(x.astype(self.dtype))
    new_grid = x.shape[1:3]
    x = x.reshape(n, new_grid[0] * new_grid[1], self.width)
    cls = self.param("class_embedding", nn.initializers.normal(scale), (self.width,), jnp.float32)
    pos = self.param("pos_embedding", nn.initializers.normal(scale), (grid * grid + 1, self.width),
                     jnp.float32)
    pos = resize_position_table(pos, (grid, grid), new_grid)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (n, 1, self.width)), x], axis=1)
    x = x + pos.astype(self.dtype)

    x = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, param_dtype=jnp.float32, name="ln_pre")(x)
    hidden_states = [x]
    for i in range(self.layers):
      x = Block(self.width, self.heads, self.activation, dtype=self.dtype, name=f"block_{i}")(x)
      hidden_states.append(x)

    # LayerNorm is per token, so normalising only the class token equals open_clip's ln_post on
    # all tokens followed by taking the first.
    cls_out = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, param_dtype=jnp.float32,
                           name="ln_post")(x[:, 0])
    embedding = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype,
                         param_dtype=jnp.float32, kernel_init=nn.initializers.normal(scale),
                         name="proj")(cls_out)
    embedding = embedding.astype(jnp.float32)
    aux = {"features": embedding, "embedding": embedding, "cls": cls_out.astype(jnp.float32),
           "tokens": x, "hidden_states": hidden_states}
    if self.num_classes <= 0:
      return embedding, aux
    # The head runs in float32 whatever the compute dtype: it is small, and its logits feed softmax.
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                      kernel_init=_linear_kernel_init,
                      bias_init=_linear_bias_init(self.embed_dim), name="head")(embedding)
    return logits, aux


# ---------------------------------------------------------------------------------------------
# Public checkpoints.

_PREPROCESS_224 = "resize(224, method='bicubic')|central_crop(224)|normalize('clip')"

CHECKPOINTS = {
    "clip_vit_l14_openai": dict(
        source="openai/clip-vit-large-patch14",
        filename="model.safetensors",
        layout="transformers CLIPModel (vision_model.* and visual_projection.weight are used; the "
               "text tower is ignored)",
        arch=dict(width=1024, layers=24, heads=16, patch_size=14, image_size=224, embed_dim=768,
                  activation="quick_gelu"),
        preprocess=_PREPROCESS_224,
        notes="OpenAI CLIP ViT-L/14 at 224 px: 303,966,208 image-tower parameters with the "
              "projection. CLIPImageProcessor resizes the shorter side to 224 (bicubic), "
              "center-crops 224 and normalises with CLIP's mean/std.",
    ),
    "clip_vit_h14_laion2b": dict(
        source="laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        filename="open_clip_model.safetensors",
        layout="open_clip CLIP 'ViT-H-14' (visual.* keys are used; the text tower is ignored)",
        arch=dict(width=1280, layers=32, heads=16, patch_size=14, image_size=224, embed_dim=1024,
                  activation="gelu"),
        preprocess=_PREPROCESS_224,
        notes="open_clip pretrained tag laion2b_s32b_b79k: 632,076,800 image-tower parameters. "
              "open_clip's preprocessing is Resize(224, bicubic) of the shorter side, "
              "CenterCrop(224) and OpenAI's mean/std.",
    ),
}


# ---------------------------------------------------------------------------------------------
# Converters. Each maps a reference key to (Flax path, kind); kinds: "conv" (OIHW -> HWIO),
# "linear" ((out, in) -> (in, out)), "copy" (as is).

_LN = (("weight", "scale"), ("bias", "bias"))


def _transformers_keys(layers: int) -> dict[str, tuple[tuple[str, ...], str]]:
  keys = {
      "vision_model.embeddings.patch_embedding.weight": (("patch_embed", "kernel"), "conv"),
      "vision_model.embeddings.class_embedding": (("class_embedding",), "copy"),
      "vision_model.embeddings.position_embedding.weight": (("pos_embedding",), "copy"),
      "visual_projection.weight": (("proj", "kernel"), "linear"),
  }
  for torch_name, flax_name in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
    for field, flax_field in _LN:
      keys[f"vision_model.{torch_name}.{field}"] = ((flax_name, flax_field), "copy")
  for i in range(layers):
    src, dst = f"vision_model.encoder.layers.{i}", f"block_{i}"
    for torch_name, flax_name in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2")):
      for field, flax_field in _LN:
        keys[f"{src}.{torch_name}.{field}"] = ((dst, flax_name, flax_field), "copy")
    # q, k and v go to one fused kernel: _convert concatenates what maps to the same path.
    for proj in ("q", "k", "v"):
      keys[f"{src}.self_attn.{proj}_proj.weight"] = ((dst, "attn", "qkv", "kernel"), "linear")
      keys[f"{src}.self_attn.{proj}_proj.bias"] = ((dst, "attn", "qkv", "bias"), "copy")
    for torch_name, flax_path in (("self_attn.out_proj", ("attn", "out")), ("mlp.fc1", ("fc1",)),
                                  ("mlp.fc2", ("fc2",))):
      keys[f"{src}.{torch_name}.weight"] = ((dst, *flax_path, "kernel"), "linear")
      keys[f"{src}.{torch_name}.bias"] = ((dst, *flax_path, "bias"), "copy")
  return keys


def _open_clip_keys(layers: int) -> dict[str, tuple[tuple[str, ...], str]]:
  keys = {
      "visual.conv1.weight": (("patch_embed", "kernel"), "conv"),
      "visual.class_embedding": (("class_embedding",), "copy"),
      "visual.positional_embedding": (("pos_embedding",), "copy"),
      "visual.proj": (("proj", "kernel"), "copy"),  # used as x @ proj: already (width, embed)
  }
  for name in ("ln_pre", "ln_post"):
    for field, flax_field in _LN:
      keys[f"visual.{name}.{field}"] = ((name, flax_field), "copy")
  for i in range(layers):
    src, dst = f"visual.transformer.resblocks.{i}", f"block_{i}"
    for name in ("ln_1", "ln_2"):
      for field, flax_field in _LN:
        keys[f"{src}.{name}.{field}"] = ((dst, name, flax_field), "copy")
    keys[f"{src}.attn.in_proj_weight"] = ((dst, "attn", "qkv", "kernel"), "linear")
    keys[f"{src}.attn.in_proj_bias"] = ((dst, "attn", "qkv", "bias"), "copy")
    for torch_name, flax_path in (("attn.out_proj", ("attn", "out")), ("mlp.c_fc", ("fc1",)),
                                  ("mlp.c_proj", ("fc2",))):
      keys[f"{src}.{torch_name}.weight"] = ((dst, *flax_path, "kernel"), "linear")
      keys[f"{src}.{torch_name}.bias"] = ((dst, *flax_path, "bias"), "copy")
  return keys


def _count_layers(state: dict[str, Any], pattern: str) -> int:
  found = {int(m.group(1)) for k in state for m in [re.match(pattern, k)] if m}
  return max(found) + 1 if found else 0


def expected_shapes(*, width: int, layers: int, patch_size: int, image_size: int,
                    embed_dim: int) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flax param path -> shape of the image tower (no head) with this architecture."""
  grid = image_size // patch_size
  shapes = {
      ("patch_embed", "kernel"): (patch_size, patch_size, 3, width),
      ("class_embedding",): (width,),
      ("pos_embedding",): (grid * grid + 1, width),
      ("proj", "kernel"): (width, embed_dim),
  }
  for name in ("ln_pre", "ln_post"):
    shapes[(name, "scale")] = shapes[(name, "bias")] = (width,)
  for i in range(layers):
    b = f"block_{i}"
    for name in ("ln_1", "ln_2"):
      shapes[(b, name, "scale")] = shapes[(b, name, "bias")] = (width,)
    shapes[(b, "attn", "qkv", "kernel")] = (width, 3 * width)
    shapes[(b, "attn", "qkv", "bias")] = (3 * width,)
    shapes[(b, "attn", "out", "kernel")] = (width, width)
    shapes[(b, "attn", "out", "bias")] = (width,)
    shapes[(b, "fc1", "kernel")] = (width, 4 * width)
    shapes[(b, "fc1", "bias")] = (4 * width,)
    shapes[(b, "fc2", "kernel")] = (4 * width, width)
    shapes[(b, "fc2", "bias")] = (width,)
  return shapes


def _convert(state: dict[str, Any], table: dict[str, tuple[tuple[str, ...], str]], what: str,
             arch: dict[str, Any], layers: int) -> dict[str, Any]:
  """Renames/transposes per `table`, then checks every shape against the architecture.

  Architecture fields not given in `arch` are read off the state itself (so a lone state dict
  converts), then every tensor must agree with them.
  """
  _loading.check_state_keys(state, table, what)
  ndims = {"conv": 4, "linear": 2}
  parts: dict[tuple[str, ...], list[np.ndarray]] = {}
  source_of: dict[tuple[str, ...], str] = {}
  for key, (path, kind) in table.items():
    value = np.asarray(state[key], dtype=np.float32)
    if kind in ndims and value.ndim != ndims[kind]:
      raise ValueError(f"{what}: {key}: expected a {ndims[kind]}-d {kind} weight, got shape "
                       f"{value.shape}")
    if kind == "conv":
      value = _loading.conv_kernel(value)
    elif kind == "linear":
      value = _loading.dense_kernel(value)
    parts.setdefault(path, []).append(value)
    source_of.setdefault(path, key)
  try:
    flat = {path: np.ascontiguousarray(np.concatenate(values, axis=-1) if len(values) > 1
                                       else values[0]) for path, values in parts.items()}
  except ValueError as e:  # q, k, v of different widths
    raise ValueError(f"{what}: attention projections do not concatenate: {e}") from None
  for path, values in parts.items():
    if len(values) > 1:
      source_of[path] += " (with k, v)"

  def first_dim(path, axis=0):  # 0 for a scalar: the shape check below then names the key
    shape = flat[path].shape
    return shape[axis] if shape else 0

  patch_size = arch.get("patch_size") or first_dim(("patch_embed", "kernel"))
  grid = math.isqrt(max(first_dim(("pos_embedding",)) - 1, 0))
  inferred = dict(width=first_dim(("class_embedding",)), layers=layers, patch_size=patch_size,
                  image_size=grid * patch_size, embed_dim=first_dim(("proj", "kernel"), -1))
  given = {k: arch[k] for k in inferred if arch.get(k) is not None}
  shapes = expected_shapes(**{**inferred, **given})
  for path, shape in shapes.items():
    if flat[path].shape != shape:
      raise ValueError(f"{what}: {source_of[path]} -> params/{'/'.join(path)} has shape "
                       f"{flat[path].shape} in Flax layout, expected {shape} for "
                       + ", ".join(f"{k}={v}" for k, v in {**inferred, **given}.items()))
  return {"params": traverse_util.unflatten_dict(flat)}


def from_transformers(state: dict[str, np.ndarray], **arch: Any) -> dict[str, Any]:
  """Hugging Face CLIPModel / CLIPVisionModelWithProjection state dict -> Flax {"params"}.

  The text tower (text_model.*, text_projection.weight, logit_scale) and position_ids buffers
  (persistent in checkpoints saved by older transformers) are ignored. `arch` takes Model fields;
  width, layers, patch_size, image_size and embed_dim are checked against the tensors when given
  (read off the tensors otherwise); the others do not change the weights and are ignored.
  """
  text = ("text_model.", "text_projection.", "logit_scale")
  vision = {k: v for k, v in state.items()
            if not k.startswith(text) and not k.endswith("position_ids")}
  layers = arch.get("layers") or _count_layers(vision, r"vision_model\.encoder\.layers\.(\d+)\.")
  return _convert(vision, _transformers_keys(layers), "transformers CLIP state dict", arch, layers)


def from_open_clip(state: dict[str, np.ndarray], **arch: Any) -> dict[str, Any]:
  """open_clip CLIP state dict (visual.* of a VisionTransformer tower) -> Flax {"params"}.

  Every key outside visual.* belongs to the text tower or the logit scale and is ignored. `arch`
  as for from_transformers.
  """
  vision = {k: v for k, v in state.items() if k.startswith("visual.")}
  layers = arch.get("layers") or _count_layers(vision, r"visual\.transformer\.resblocks\.(\d+)\.")
  return _convert(vision, _open_clip_keys(layers), "open_clip CLIP state dict", arch, layers)


def load_pretrained(variables: dict[str, Any], path: str | os.PathLike, *,
                    head: str = "head") -> dict[str, Any]:
  """Returns `variables` with a CLIP image tower's weights from a safetensors file.

  The layout (transformers' or open_clip's) is recognised from the keys. `variables` is the
  Model's {"params"} (arrays, or jax.ShapeDtypeStructs from jax.eval_shape for every leaf but the
  head). No checkpoint has a classifier on the embedding, so the params named `head` stay as
  initialised. Any other key or shape difference is an error.
  """
  expected = ("a CLIP image tower safetensors file: model.safetensors of openai/clip-vit-large-"
              "patch14 (transformers layout) or open_clip_model.safetensors of laion/CLIP-ViT-H-"
              "14-laion2B-s32B-b79K (open_clip layout) on Hugging Face")
  state = _loading.read_safetensors(path, expected)
  params = variables["params"]
  layers = sum(1 for name in params if re.fullmatch(r"block_\d+", name))
  if "vision_model.embeddings.patch_embedding.weight" in state:
    converted = from_transformers(state, layers=layers)
  elif "visual.conv1.weight" in state:
    converted = from_open_clip(state, layers=layers)
  else:
    raise ValueError(f"{os.fspath(path)}: neither a transformers nor an open_clip CLIP state "
                     f"dict (some keys: {_loading.format_keys(state, limit=5)}); it must be "
                     f"{expected}")
  # No public CLIP file has a classifier: merge keeps the model's head as initialised.
  return _loading.merge(variables, converted, path=os.fspath(path), head=head)


HEAD = "head"  # the classifier a method replaces (iab_jax.weights keeps it fresh)
