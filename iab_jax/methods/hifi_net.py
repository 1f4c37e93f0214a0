"""HiFi-Net (Guo et al., CVPR 2023) as an attributor: hierarchical fine-grained classification.

The network (iab_jax/models/hifi_net.py) predicts four levels of the paper's Table 6 hierarchy
from coarse to fine: generated/real, commercial/open-source/real, the architecture group, and
the run's classes. Training sums the four softmax cross-entropies (weights 1); prediction is the
softmax of the finest level. A level whose target is unknown (-1 in batch["levels"], e.g. the
mini-bench's simulated generators above level 0) is left out of that level's mean.

`import_official` turns the authors' released checkpoint (the layout of
data_prep/official_layouts/hifi_net_state_dict.txt) into this method's variables.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from iab_jax.methods import base
from iab_jax.models import hifi_net as hifi_model

OFFICIAL_LAYOUT = "hifi_net_state_dict.txt"
OFFICIAL_LEVEL_CLASSES = (2, 4, 6)  # the released checkpoint's coarse heads
_MODEL_FIELDS = ("level_classes", "stem_width", "branch_channels", "layer1_blocks",
                 "branch_blocks", "laplacian_scales", "dropout_rate", "head_width", "dtype")


def level_targets(batch) -> list[jax.Array]:
  """The targets of the four heads, coarse to fine: levels 0, 1, 2 of Table 6, then the label."""
  levels = batch["levels"]
  return [levels[:, 0], levels[:, 1], levels[:, 2], batch["label"]]


def masked_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy over the entries whose target is known (>= 0); 0 if none is."""
  valid = targets >= 0
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), jnp.where(valid, targets, 0))
  return jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def build_model(config, num_classes: int) -> hifi_model.Model:
  kwargs = {k: config.model[k] for k in _MODEL_FIELDS if k in config.model.keys()}
  for k in ("level_classes", "branch_channels", "laplacian_scales"):
    if k in kwargs:
      kwargs[k] = tuple(int(v) for v in kwargs[k])
  if "dtype" in kwargs:
    kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
  return hifi_model.Model(num_classes=num_classes, **kwargs)


class HiFiNet(base.Method):

  @classmethod
  def check_config(cls, config):
    model = config.get("model")
    if model is None:
      raise ValueError("config.model is missing; expected HiFi-Net's sizes (configs/hifi_net.py)")
    unknown = sorted(set(model.keys()) - set(_MODEL_FIELDS))
    if unknown:
      raise ValueError(f"config.model.{unknown[0]}: not a HiFi-Net field; known: "
                       f"{', '.join(_MODEL_FIELDS)}")
    if len(model.get("level_classes", (2, 3, 6))) != 3:
      raise ValueError(f"config.model.level_classes={model.level_classes!r}; expected the sizes "
                       "of the three coarse heads, e.g. (2, 3, 6)")
    if len(model.get("branch_channels", (18, 36, 72, 144))) != 4:
      raise ValueError(f"config.model.branch_channels={model.branch_channels!r}; expected 4 "
                       "branch widths")

  def __init__(self, config, classes):
    super().__init__(config, classes)
    self.model = build_model(config, self.num_classes)

  def phases(self):
    return [base.Phase("train", self.config.num_epochs, self.config.optimizer)]

  def init(self, rng, images, pretrained=True):
    del pretrained  # trained from scratch, as the official code does

    # One compiled program (op-by-op initialisation compiles every op apart), its draws from an
    # rbg key seeded by `rng`: XLA compiles threefry's draws for ~440 tensors far slower on CPU.
    def init(rng, images):
      key = jax.random.key(jax.random.bits(rng, dtype=jnp.uint32), impl="rbg")
      return self.model.init({"params": key}, images, train=False)

    return dict(jax.jit(init)(rng, images))

  def loss(self, variables, batch, rng, phase):
    del phase
    mutable = [k for k in variables if k != "params"]
    (logits, aux), state = self.model.apply(variables, batch["image"], train=True,
                                            mutable=mutable, rngs={"dropout": rng})
    all_logits = list(aux["level_logits"]) + [logits]
    losses = [masked_cross_entropy(lg, t) for lg, t in zip(all_logits, level_targets(batch))]
    measurements = {f"loss_level{i + 1}": l for i, l in enumerate(losses)}
    measurements["accuracy"] = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return sum(losses), (dict(state), measurements)

  def predict(self, variables, batch):
    logits, _ = self.model.apply(variables, batch["image"], train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def import_official(state: dict[str, np.ndarray], config, out_dir: str) -> base.OfficialImport:
  """The authors' checkpoint (FENet.* + SegNet.* keys, torch layout) as this method's variables.

  The file must hold exactly the keys of OFFICIAL_LAYOUT for the config's sizes: a missing,
  unexpected or mis-shaped key raises a one-line ValueError naming it. The finest head's size is
  the file's (23 official classes); the coarse heads must be the official (2, 4, 6).
  """
  del out_dir  # nothing to write: every variable comes back in memory
  level_classes = tuple(config.model.get("level_classes", OFFICIAL_LEVEL_CLASSES))
  if level_classes != OFFICIAL_LEVEL_CLASSES:
    raise ValueError(f"config.model.level_classes={level_classes}: the official checkpoint has "
                     f"coarse heads {OFFICIAL_LEVEL_CLASSES}; use the `official` option")
  fc = state.get("SegNet.branch_cls_level_4.fc.bias")
  if fc is None:
    raise ValueError("official HiFi-Net state dict: missing key SegNet.branch_cls_level_4.fc.bias")
  model = build_model(config, int(np.shape(fc)[0]))
  variables, notes = hifi_model.from_official(state, model)
  # The tree Method.init makes, so that a mismatch in our own table shows here, not in a run.
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                               train=False))
  want = traverse_util.flatten_dict(dict(abstract))
  got = traverse_util.flatten_dict(variables)
  if set(want) != set(got):
    missing = sorted("/".join(k) for k in set(want) - set(got))
    raise ValueError(f"HiFi-Net import left variables unset: {missing[:3]}")
  for k, v in want.items():
    if tuple(got[k].shape) != tuple(v.shape):
      raise ValueError(f"HiFi-Net import: {'/'.join(k)} has shape {got[k].shape}, model "
                       f"{tuple(v.shape)}")
  return base.OfficialImport(
      variables={c: jax.tree.map(jnp.asarray, variables[c]) for c in variables},
      notes=notes)

