"""PatchCraft (Zhong et al. 2023; IAB paper appendix D): the contrast of rich- and poor-texture
patches, with a multi-class head.

The input transform cuts the full-resolution image into patches, ranks them by texture diversity
and tiles the richest and the poorest into two mosaics (iab_jax.data.patches.texture_tiles, under
a `fork`), so batches carry batch["image"] = {"rich": (N, H, W, 3), "poor": (N, H, W, 3)}. The
network (iab_jax.models.patchcraft) turns each into a binarised high-pass map, then a shared
conv + BN + Hardtanh, and classifies rich minus poor. Training is softmax cross-entropy;
prediction the softmax of the logits. PatchCraft's JPEG/blur/downsampling augmentation
(`patchcraft_augment`) belongs to the training transform; the official code also applies it at
test time (`official`).

`import_official` turns the benchmark's released checkpoint
(official_layouts/patchcraft_state_dict.txt) into these variables.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from iab_jax.methods import base, official
from iab_jax.models import patchcraft as patchcraft_model

OFFICIAL_LAYOUT = "patchcraft_state_dict.txt"
_MODEL_FIELDS = ("width", "stage_convs", "dtype")


class PatchCraft(base.Method):
  display_name = "PatchCraft"

  @classmethod
  def check_config(cls, config):
    model = config.get("model")
    if model is None:
      raise ValueError("config.model is missing; expected width, stage_convs, dtype")
    unknown = set(model) - set(_MODEL_FIELDS)
    if unknown:
      raise ValueError(f"config.model.{sorted(unknown)[0]}: unknown; expected "
                       f"{', '.join(_MODEL_FIELDS)}")
    if int(model.get("width", 32)) < 1:
      raise ValueError(f"config.model.width={model.width}; expected >= 1")
    stages = tuple(model.get("stage_convs", (4, 2, 2, 2)))
    if not stages or any(int(n) < 1 for n in stages):
      raise ValueError(f"config.model.stage_convs={stages}; expected positive conv counts")

  def __init__(self, config, classes):
    super().__init__(config, classes)
    model = config.model
    self.model = patchcraft_model.Model(
        num_classes=self.num_classes, width=int(model.get("width", 32)),
        stage_convs=tuple(int(n) for n in model.get("stage_convs", (4, 2, 2, 2))),
        dtype=jnp.dtype(model.get("dtype", "float32")))
    self._init_fn = jax.jit(lambda rng, images: self.model.init({"params": rng}, images,
                                                                train=False))

  def phases(self):
    return [base.Phase("train", self.config.num_epochs, self.config.optimizer)]

  def init(self, rng, images, pretrained=True):
    del pretrained  # trained from scratch
    return dict(self._init_fn(rng, _textures(images)))

  def _logits(self, variables, images, train: bool):
    if train:
      (logits, _), state = self.model.apply(variables, _textures(images), train=True,
                                            mutable=["batch_stats"])
      return logits, dict(state)
    logits, _ = self.model.apply(variables, _textures(images), train=False)
    return logits, {}

  def loss(self, variables, batch, rng, phase):
    del rng, phase
    logits, state = self._logits(variables, batch["image"], True)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, (state, {"accuracy": accuracy})

  def predict(self, variables, batch):
    logits, _ = self._logits(variables, batch["image"], False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def _textures(images) -> dict[str, Any]:
  if not isinstance(images, dict) or set(images) != {"rich", "poor"}:
    raise ValueError("PatchCraft expects batch['image'] = {'rich': ..., 'poor': ...} (a fork of "
                     "texture_tiles('rich') and texture_tiles('poor') in config.input.transform)"
                     f", got {type(images).__name__}"
                     + (f" with keys {sorted(images)}" if isinstance(images, dict) else ""))
  return images


# ---------------------------------------------------------------------------------------------
# The official checkpoint.


def import_official(state: dict[str, np.ndarray], config, out_dir: str,
                    *, layout: dict[str, tuple[int, ...]] | None = None) -> base.OfficialImport:
  """The variables PatchCraft.init makes for `config`, holding the official checkpoint's weights.

  The fixed filter bank (filter.filter_<g>.weight) is code here, not variables: its values in the
  file must be the published filters, or the file is not PatchCraft's. `layout` replaces the
  official key/shape list (tests at other sizes).
  """
  del out_dir
  what = "official PatchCraft checkpoint"
  official.check_state(state, layout or official.read_layout(OFFICIAL_LAYOUT), what)
  for key, expected in patchcraft_model.official_filter_weights().items():
    if not np.allclose(np.asarray(state[key], np.float32), expected):
      raise ValueError(f"{what}: key {key!r} differs from PatchCraft's fixed filters")
  stage_convs = tuple(int(n) for n in config.model.get("stage_convs", (4, 2, 2, 2)))
  variables = patchcraft_model.from_torch(state, stage_convs)
  return base.OfficialImport(
      variables={k: jax.tree.map(jnp.asarray, v) for k, v in variables.items()},
      notes=["the official PatchCraft also applied its JPEG/blur/downsampling augmentation at "
             "test time: configs/patchcraft.py:<task>,official reproduces that"])
