"""Li et al. (MHF/DEFL): directional high-pass features fused with a frozen CLIP embedding.

The benchmark's attributor (attributor_defl.py, backbones/defl/): the DEFL network
(iab_jax.models.defl) turns the image into a 2048-d feature, a linear layer fuses it with the
768-d embedding of the frozen OpenAI CLIP RN50x16 image tower into the "fingerprint", and an MLP
classifies it. The loss is cross-entropy on the MLP's logits plus the dual-margin contrastive
(DMC) loss on the fingerprints of the batch's pairs. Prediction is the softmax of the logits
(the paper's reference-set distance classifier is not used by the benchmark either).

The frozen CLIP is a FrozenFeatures ("clip"): the loop computes its embeddings once per split
and level, and batches carry them as batch["features"]["clip"]. Its BN statistics are therefore
truly frozen, whereas the official code calls model.train() on the whole attributor every epoch,
so the "frozen" CLIP runs its BNs on batch statistics in training and drifts their running
statistics [BUG]; a cache cannot reproduce that, `official` included.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from iab_jax.methods import base
from iab_jax.models import clip_resnet
from iab_jax.models import defl as defl_model

OFFICIAL_LAYOUT = "defl_state_dict.txt"

_MODEL_FIELDS = ("stage_sizes", "width", "fingerprint_dim", "hidden", "train_filters",
                 "filter_seed")
_CLIP_ARCH_FIELDS = ("layers", "width", "embed_dim", "heads", "image_size")
_UNKNOWN_FAMILY = ("different", "skip")


def _clip_arch(config) -> dict[str, Any]:
  m = config.model
  return {"layers": tuple(m.clip_layers), "width": int(m.clip_width),
          "embed_dim": int(m.clip_embed_dim), "heads": int(m.clip_heads),
          "image_size": int(m.clip_image_size)}


def dual_margin_contrastive(features: jax.Array, labels: jax.Array, families: jax.Array, *,
                            margin_same_family: float = 5.0, margin_other_family: float = 10.0,
                            unknown_family: str = "different") -> jax.Array:
  """The DMC loss over all pairs i < j of the batch, d the Euclidean distance of their features:
  same label +d; different label, same family +relu(m1 - d); different family +relu(m2 - d);
  the sum divided by B(B-1)/2 (0 for B < 2).

  A family of -1 is unknown: "different" counts a pair of different labels with an unknown family
  as different families (margin m2: two generators of unknown kinship are pushed apart as far as
  any); "skip" leaves such pairs out and divides by the number of pairs left.
  """
  b = features.shape[0]
  if b < 2:
    return jnp.zeros((), jnp.float32)
  f = features.astype(jnp.float32)
  squared = jnp.sum(jnp.square(f[:, None, :] - f[None, :, :]), axis=-1)
  positive = squared > 0
  # The gradient of sqrt at 0 is infinite; torch.cdist's backward gives 0 there, and so does this.
  d = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)
  same_label = labels[:, None] == labels[None, :]
  known = (families[:, None] >= 0) & (families[None, :] >= 0)
  same_family = (families[:, None] == families[None, :]) & known
  terms = jnp.where(same_label, d,
                    jnp.where(same_family, jax.nn.relu(margin_same_family - d),
                              jax.nn.relu(margin_other_family - d)))
  pairs = jnp.triu(jnp.ones((b, b), bool), k=1)
  if unknown_family == "skip":
    pairs = pairs & (same_label | known)
    count = jnp.maximum(jnp.sum(pairs), 1)
  else:
    count = b * (b - 1) / 2
  return jnp.sum(jnp.where(pairs, terms, 0.0)) / count


class Defl(base.Method):

  @classmethod
  def check_config(cls, config):
    model = config.get("model")
    needed = _MODEL_FIELDS + ("pretrained", "dtype", "clip_pretrained", "clip_dtype",
                              "clip_transform", "clip_text_layers") + tuple(
                                  f"clip_{k}" for k in _CLIP_ARCH_FIELDS)
    if model is None:
      raise ValueError("config.model is missing; expected the DEFL fields of configs/defl.py")
    for key in needed:
      if key not in model:
        raise ValueError(f"config.model.{key} is missing; expected it as in configs/defl.py")
    for key in ("dtype", "clip_dtype"):
      if model[key] not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"config.model.{key}={model[key]!r}; expected float32, float16 or "
                         "bfloat16")
    if "loss" not in config:
      raise ValueError("config.loss is missing; expected ce_weight, dmc_weight, margins")
    if config.loss.get("unknown_family") not in _UNKNOWN_FAMILY:
      raise ValueError(f"config.loss.unknown_family={config.loss.get('unknown_family')!r}; "
                       f"expected one of {_UNKNOWN_FAMILY}")

  def __init__(self, config, classes):
    super().__init__(config, classes)
    m = config.model
    self.model = defl_model.Model(
        num_classes=self.num_classes, stage_sizes=tuple(m.stage_sizes), width=int(m.width),
        clip_dim=int(m.clip_embed_dim), fingerprint_dim=int(m.fingerprint_dim),
        hidden=tuple(m.hidden), train_filters=bool(m.train_filters),
        filter_seed=int(m.filter_seed), dtype=jnp.dtype(m.dtype))

  def phases(self):
    return [base.Phase("train", self.config.num_epochs, self.config.optimizer)]

  # -- the frozen CLIP ----------------------------------------------------------------------

  def frozen_features(self):
    from iab_jax import weights

    m = self.config.model
    arch = _clip_arch(self.config)
    dtype = jnp.dtype(m.clip_dtype)
    if dtype == jnp.float16 and jax.default_backend() == "cpu":
      # XLA's CPU dot_general rejects float16 operands with a float32 accumulator, which the
      # attention pool asks for; the official float16 CLIP ran on CUDA.
      from iab_jax import console

      console.say("config.model.clip_dtype=float16: not supported on CPU, CLIP runs in float32")
      dtype = jnp.dtype(jnp.float32)
    path = None
    if m.clip_pretrained:
      path = weights.resolve_or_random(m.clip_pretrained, self.config,
                                       "config.model.clip_pretrained")
    described = "clip_resnet" + json.dumps(arch, sort_keys=True) + f"|{dtype.name}"
    identity = described + "|" + (weights.file_identity(path) if path else "random(rbg,seed=0)")

    def build():
      model = clip_resnet.Model(num_classes=0, dtype=dtype, **arch)
      size = arch["image_size"]
      # rbg: threefry's initialisers compile several times slower on CPU.
      init = lambda: model.init(jax.random.key(0, impl="rbg"), jnp.zeros((1, size, size, 3)),
                                train=False)
      if path:
        variables = clip_resnet.load_pretrained(jax.eval_shape(init), path)
      else:
        variables = jax.jit(init)()
      apply = lambda v, images: model.apply(v, images, train=False)[0]
      return apply, variables

    return [base.FrozenFeatures(name="clip", transform=m.clip_transform, identity=identity,
                                dim=arch["embed_dim"], build=build)]

  # -- the trainable model ------------------------------------------------------------------

  def _clip_placeholder(self, n: int) -> jax.Array:
    return jnp.zeros((n, int(self.config.model.clip_embed_dim)), jnp.float32)

  def init(self, rng, images, pretrained=True):
    # The initialisers draw from an rbg key seeded by `rng`: XLA compiles threefry's draws for
    # this many leaves several times slower on CPU (30 s against 14 s for the runlocal model).
    rng = jax.random.key(jax.random.bits(rng, dtype=jnp.uint32), impl="rbg")
    variables = dict(self.model.init({"params": rng}, images,
                                     self._clip_placeholder(images.shape[0]), train=False))
    name = self.config.model.get("pretrained") if pretrained else None
    if name:
      from iab_jax import weights

      path = weights.resolve_or_random(name, self.config, "config.model.pretrained")
      if path is not None:
        variables = defl_model.load_pretrained(variables, path)
    return variables

  def _apply(self, variables, batch, train: bool):
    clip = batch["features"]["clip"]
    if train:
      (logits, aux), state = self.model.apply(variables, batch["image"], clip, train=True,
                                              mutable=["batch_stats"])
      return logits, aux["fingerprint"], dict(state)
    logits, aux = self.model.apply(variables, batch["image"], clip, train=False)
    return logits, aux["fingerprint"], {}

  def loss(self, variables, batch, rng, phase):
    del rng, phase
    cfg = self.config.loss
    logits, fingerprint, state = self._apply(variables, batch, train=True)
    labels = batch["label"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    dmc = dual_margin_contrastive(
        fingerprint, labels, batch["levels"][:, 2], margin_same_family=cfg.margin_same_family,
        margin_other_family=cfg.margin_other_family, unknown_family=cfg.unknown_family)
    total = cfg.ce_weight * ce + cfg.dmc_weight * dmc
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return total, (state, {"ce_loss": ce, "dmc_loss": dmc, "accuracy": accuracy})

  def predict(self, variables, batch):
    logits, _, _ = self._apply(variables, batch, train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


# ---------------------------------------------------------------------------------------------
# The authors' checkpoint (data_prep/official_layouts/defl_state_dict.txt).

_DEFL = "defl_model."
_DEFL_ALIAS = "semantic_extractor.defl_model."
_CLIP = "semantic_extractor.clip_model."
_VISUAL = _CLIP + "visual."
_VISUAL_ALIAS = "semantic_extractor.clip_model_visual."
_RESNET = "semantic_extractor.resnet_for_defl."
_BN_FIELDS = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
_CLIP_FILE = "defl_clip_visual.safetensors"


def _torch_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """A Flax leaf's shape in torch layout."""
  if kind == "conv":  # (kh, kw, I, O) -> (O, I, kh, kw)
    return (shape[3], shape[2], shape[0], shape[1])
  if kind == "linear":  # (in, out) -> (out, in)
    return (shape[1], shape[0])
  return tuple(shape)


def _trainable_table(config) -> dict[str, tuple[str, tuple[str, ...], str]]:
  """Official key -> (collection, Flax path, kind) of everything trainable (or BN statistics);
  kind "conv", "linear", "vector" or "counter" (num_batches_tracked, not kept)."""
  dcb = "params" if config.model.train_filters else "mhf"
  table: dict[str, tuple[str, tuple[str, ...], str]] = {}

  def bn(prefix: str, path: tuple[str, ...]):
    for field, (collection, name) in _BN_FIELDS.items():
      table[f"{prefix}.{field}"] = (collection, path + (name,), "vector")
    table[f"{prefix}.num_batches_tracked"] = ("", (), "counter")

  for k in range(1, defl_model.NUM_LEVELS + 1):
    table[f"{_DEFL}level{k}_dcb.conv.weight"] = (dcb, (f"level{k}_dcb", "kernel"), "conv")
    table[f"{_DEFL}level{k}_scb.conv.weight"] = ("params", (f"level{k}_scb", "conv", "kernel"),
                                                 "conv")
    bn(f"{_DEFL}level{k}_scb.bn", (f"level{k}_scb", "bn"))
  table["semantic_extractor.adjust_channels.weight"] = ("params", ("adjust_channels", "kernel"),
                                                        "conv")
  table["semantic_extractor.adjust_channels.bias"] = ("params", ("adjust_channels", "bias"),
                                                      "vector")
  # resnet_for_defl = nn.Sequential(layer1, ..., layer4, pools): stage i is index i - 1.
  for key, (collection, path) in defl_model.resnet_stage_names(config.model.stage_sizes).items():
    m = re.fullmatch(r"layer(\d)\.(.*)", key)
    official = f"{_RESNET}{int(m.group(1)) - 1}.{m.group(2)}"
    kind = "conv" if path[-1] == "kernel" else "vector"
    table[official] = (collection, ("resnet",) + path, kind)
    if key.endswith("running_mean"):
      table[official.replace("running_mean", "num_batches_tracked")] = ("", (), "counter")
  table["semantic_extractor.fusion_layer.weight"] = ("params", ("fusion_layer", "kernel"),
                                                     "linear")
  table["semantic_extractor.fusion_layer.bias"] = ("params", ("fusion_layer", "bias"), "vector")
  for k in (1, 2, 3):
    table[f"nn_classifier.fc{k}.weight"] = ("params", ("nn_classifier", f"fc{k}", "kernel"),
                                            "linear")
    table[f"nn_classifier.fc{k}.bias"] = ("params", ("nn_classifier", f"fc{k}", "bias"), "vector")
  return table


def _text_keys(layers: int) -> list[str]:
  keys = [f"{_CLIP}{k}" for k in ("positional_embedding", "token_embedding.weight",
                                  "ln_final.weight", "ln_final.bias", "text_projection",
                                  "logit_scale")]
  for i in range(layers):
    block = f"{_CLIP}transformer.resblocks.{i}."
    keys += [block + k for k in (
        "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
        "ln_1.weight", "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
        "mlp.c_proj.bias", "ln_2.weight", "ln_2.bias")]
  return keys


def _text_shapes(state, layers: int, embed_dim: int) -> dict[str, tuple[int, ...]]:
  """The text tower's shapes, its width, context and vocabulary read off the state (unused)."""
  w = int(np.shape(state[_CLIP + "ln_final.weight"])[0])
  context = int(np.shape(state[_CLIP + "positional_embedding"])[0])
  vocab = int(np.shape(state[_CLIP + "token_embedding.weight"])[0])
  shapes = {f"{_CLIP}positional_embedding": (context, w),
            f"{_CLIP}token_embedding.weight": (vocab, w), f"{_CLIP}ln_final.weight": (w,),
            f"{_CLIP}ln_final.bias": (w,), f"{_CLIP}text_projection": (w, embed_dim),
            f"{_CLIP}logit_scale": ()}
  per_block = {"attn.in_proj_weight": (3 * w, w), "attn.in_proj_bias": (3 * w,),
               "attn.out_proj.weight": (w, w), "attn.out_proj.bias": (w,), "ln_1.weight": (w,),
               "ln_1.bias": (w,), "mlp.c_fc.weight": (4 * w, w), "mlp.c_fc.bias": (4 * w,),
               "mlp.c_proj.weight": (w, 4 * w), "mlp.c_proj.bias": (w,), "ln_2.weight": (w,),
               "ln_2.bias": (w,)}
  for i in range(layers):
    for k, shape in per_block.items():
      shapes[f"{_CLIP}transformer.resblocks.{i}.{k}"] = shape
  return shapes


def _abstract_variables(config, num_classes: int) -> dict[str, Any]:
  method = Defl(config, [str(i) for i in range(num_classes)])
  x = jnp.zeros((1, 32, 32, 3), jnp.float32)  # no variable depends on the image size
  return jax.eval_shape(lambda: method.init(jax.random.key(0), x, pretrained=False))


def _num_classes_of(state) -> int:
  """The checkpoint's classes (23 in the official run): the last layer's rows."""
  shape = np.shape(state.get("nn_classifier.fc3.weight", np.zeros((23, 0))))
  return int(shape[0]) if len(shape) == 2 else 23


def official_shapes(config, state=None, num_classes: int = 23) -> dict[str, tuple[int, ...]]:
  """Every key of the official state dict (aliases included) -> its shape, for this config's
  sizes. The text tower's sizes come from `state` (None: its keys with no shapes checked)."""
  abstract = traverse_util.flatten_dict(_abstract_variables(config, num_classes))
  shapes: dict[str, tuple[int, ...]] = {}
  for key, (collection, path, kind) in _trainable_table(config).items():
    shapes[key] = () if kind == "counter" else _torch_shape(kind, abstract[(collection,) + path].shape)
  for key in [k for k in shapes if k.startswith(_DEFL)]:
    shapes[_DEFL_ALIAS + key[len(_DEFL):]] = shapes[key]
  arch = _clip_arch(config)
  visual = clip_resnet.expected_shapes(layers=arch["layers"], width=arch["width"],
                                       embed_dim=arch["embed_dim"], image_size=arch["image_size"])
  for key, (collection, path, kind) in clip_resnet._open_clip_keys(arch["layers"]).items():
    kind = {"copy": "vector"}.get(kind, kind)
    name = key[len("visual."):]
    shape = _torch_shape(kind, visual[(collection,) + path])
    shapes[_VISUAL + name] = shapes[_VISUAL_ALIAS + name] = shape
    if name.endswith("running_mean"):
      counter = name.replace("running_mean", "num_batches_tracked")
      shapes[_VISUAL + counter] = shapes[_VISUAL_ALIAS + counter] = ()
  layers = int(config.model.clip_text_layers)
  if state is None:
    shapes.update({k: None for k in _text_keys(layers)})
  else:
    shapes.update(_text_shapes(state, layers, arch["embed_dim"]))
  return shapes


def check_official_layout(state, config) -> None:
  """Raises a one-line ValueError naming the first missing, extra or mis-shaped key."""
  expected = official_shapes(config, None, _num_classes_of(state))
  missing = sorted(expected.keys() - state.keys())
  extra = sorted(state.keys() - expected.keys())
  if missing:
    raise ValueError(f"DEFL checkpoint: missing key {missing[0]!r} ({len(missing)} missing in "
                     f"all; layout {OFFICIAL_LAYOUT})")
  if extra:
    raise ValueError(f"DEFL checkpoint: unexpected key {extra[0]!r} ({len(extra)} unexpected "
                     f"in all; layout {OFFICIAL_LAYOUT})")
  expected = official_shapes(config, state, _num_classes_of(state))
  for key in sorted(expected):
    shape = tuple(np.shape(state[key]))
    if shape != tuple(expected[key]):
      raise ValueError(f"DEFL checkpoint: key {key!r} has shape {list(shape)}, expected "
                       f"{list(expected[key])} for this config")


def import_official(state: dict[str, np.ndarray], config: ml_collections.ConfigDict,
                    out_dir: str) -> base.OfficialImport:
  """The authors' DEFL checkpoint -> our variables, and the frozen CLIP as a file in out_dir.

  `state` holds exactly the keys of OFFICIAL_LAYOUT (float32 numpy). The trainable parts (MHF and
  standard blocks, 1x1 conv, ResNet stages, fusion, MLP) become the variables Method.init makes
  for `config`; CLIP's image tower goes to out_dir/defl_clip_visual.safetensors in open_clip's
  layout, and the overrides point config.model.clip_pretrained at it. The text tower is ignored.
  """
  from safetensors.numpy import save_file

  check_official_layout(state, config)
  notes = []

  def resolve_aliases(primary: str, alias: str, what: str) -> dict[str, np.ndarray]:
    # Both names hold one tensor in the official model; torch's load_state_dict copies the
    # later-registered name last, so where they differ the alias's value is what it runs with.
    differing = [k for k in state if k.startswith(primary)
                 and not np.array_equal(state[k], state[alias + k[len(primary):]])]
    if differing:
      notes.append(f"{what}: {len(differing)} tensors differ between {primary}* and {alias}* "
                   f"(first: {differing[0][len(primary):]}); the {alias}* values are used, as "
                   "torch's load_state_dict would leave them")
    return {k[len(primary):]: state[alias + k[len(primary):]] for k in state
            if k.startswith(primary)}

  defl_values = resolve_aliases(_DEFL, _DEFL_ALIAS, "defl_model")
  visual = resolve_aliases(_VISUAL, _VISUAL_ALIAS, "CLIP visual")

  # The trainable parts.
  abstract = traverse_util.flatten_dict(_abstract_variables(config, _num_classes_of(state)))
  flat = {}
  for key, (collection, path, kind) in _trainable_table(config).items():
    if kind == "counter":
      continue
    value = defl_values[key[len(_DEFL):]] if key.startswith(_DEFL) else state[key]
    value = np.asarray(value, np.float32)
    if kind == "conv":
      value = value.transpose(2, 3, 1, 0)
    elif kind == "linear":
      value = value.T
    flat[(collection,) + path] = jnp.asarray(np.ascontiguousarray(value))
  if flat.keys() != abstract.keys():
    raise ValueError(f"DEFL import: variables {sorted(abstract.keys() ^ flat.keys())[:3]} are "
                     "not covered by the checkpoint (a bug of this import)")
  variables = traverse_util.unflatten_dict(flat)

  # The frozen CLIP image tower, for clip_resnet's loader; checked by converting it once.
  clip_state = {"visual." + k: np.ascontiguousarray(np.asarray(v, np.float32))
                for k, v in visual.items() if not k.endswith("num_batches_tracked")}
  clip_resnet.from_open_clip(clip_state, **_clip_arch(config))
  os.makedirs(out_dir, exist_ok=True)
  clip_path = os.path.join(os.path.abspath(out_dir), _CLIP_FILE)
  save_file(clip_state, clip_path, metadata={"source": "DEFL official checkpoint, "
                                             "semantic_extractor.clip_model.visual.*"})
  text = sum(1 for k in state if k.startswith(_CLIP) and not k.startswith(_VISUAL))
  notes += [
      f"CLIP's image tower was written to {clip_path} and config.model.clip_pretrained points "
      "at it: its BN running statistics are the checkpoint's, which the official training "
      "updated (model.train() reaches the 'frozen' CLIP), so they may differ from OpenAI's.",
      f"CLIP's text tower ({text} tensors) is not used by the attributor and was ignored.",
      "The official CLIP ran in float16; its weights arrive as float32 here and run in "
      "config.model.clip_dtype.",
  ]
  return base.OfficialImport(variables=variables,
                             overrides={"model.clip_pretrained": clip_path}, notes=notes)
