"""Supervised attribution with a network and a linear head over the classes (ResNet-50 & co.).

The paper's baseline recipe (appendix D): the network's classifier replaced by a linear layer
over the dataset's classes, softmax cross-entropy, Adam, validation accuracy picks the epoch.
`config.model.name` picks the network from iab_jax.models; its other keys go to the model's
constructor, except `pretrained`, a weights file the model module's `load_pretrained` reads.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from iab_jax import models
from iab_jax.methods import base, official

_NOT_MODEL_KWARGS = ("name", "pretrained", "weights_dir")


class Classifier(base.Method):

  @classmethod
  def check_config(cls, config):
    if "model" not in config or "name" not in config.model:
      raise ValueError("config.model.name is missing; expected a module of iab_jax/models")

  def __init__(self, config, classes):
    super().__init__(config, classes)
    self.module = models.get(config.model.name)
    kwargs = {k: v for k, v in config.model.items() if k not in _NOT_MODEL_KWARGS}
    if "dtype" in kwargs:
      kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    try:
      self.model = self.module.Model(num_classes=self.num_classes, **kwargs)
    except TypeError as e:
      raise ValueError(f"config.model: {e}") from None

  def phases(self):
    return [base.Phase("train", self.config.num_epochs, self.config.optimizer)]

  def init(self, rng, images, pretrained=True):
    variables = dict(self.model.init({"params": rng}, images, train=False))
    pretrained = self.config.model.get("pretrained") if pretrained else None
    if pretrained:
      from iab_jax import weights

      if not hasattr(self.module, "load_pretrained"):
        raise ValueError(f"config.model.pretrained: model {self.config.model.name!r} has no "
                         "pretrained weights loader")
      path = weights.resolve_or_random(pretrained, self.config, "config.model.pretrained")
      if path is not None:
        variables = weights.load_into(variables, self.module, path)
    return variables

  def _logits(self, variables, images, train: bool, rng=None):
    state = [k for k in variables if k != "params"]
    if train:
      (logits, _), state = self.model.apply(variables, images, train=True, mutable=state,
                                            rngs={"dropout": rng})
      return logits, dict(state)
    logits, _ = self.model.apply(variables, images, train=False)
    return logits, {}

  def loss(self, variables, batch, rng, phase):
    del phase
    logits, state = self._logits(variables, batch["image"], True, rng)
    smoothing = self.config.get("label_smoothing", 0.0)
    targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], self.num_classes), smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, (state, {"accuracy": accuracy})

  def predict(self, variables, batch):
    logits, _ = self._logits(variables, batch["image"], False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


# ---------------------------------------------------------------------------------------------
# The authors' released checkpoints (data_prep/import_official.py calls these).

OFFICIAL_LAYOUT_RESNET50 = "resnet50_state_dict.txt"


def check_model_fields(config, fields, name: str | None = None) -> None:
  """config.model exists, names only `fields` (one line naming the first unknown key) and, when
  `name` is given, has model.name == name."""
  model = config.get("model")
  if name is not None:
    if model is None or model.get("name") != name:
      raise ValueError(f"config.model.name must be {name!r} for the {name} method")
    fields = (*fields, "name")
  check_fields(config, "model", fields)


def check_fields(config, section: str, fields) -> None:
  """config.<section> exists and names only `fields` (one line naming the first unknown key)."""
  values = config.get(section)
  if values is None:
    raise ValueError(f"config.{section} is missing; expected " + ", ".join(fields))
  unknown = set(values) - set(fields)
  if unknown:
    raise ValueError(f"config.{section}.{sorted(unknown)[0]}: unknown; expected "
                     f"{', '.join(fields)}")


def model_kwargs(config, fields) -> dict:
  """The Model keyword arguments config.model holds among `fields`: tuples for sequences (the
  command line gives lists), a jnp dtype for "dtype"."""
  kwargs = {k: v for k, v in config.model.items() if k in fields}
  for key, value in kwargs.items():
    if isinstance(value, (list, tuple)):
      kwargs[key] = tuple(value)
  if "dtype" in kwargs:
    kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
  return kwargs


def load_backbone_resnet(variables, config):
  """`variables` with their "backbone" (an iab_jax.models.resnet) read from the file
  config.model.pretrained names (ImageNet weights; the file's 1000-way fc, which no method here
  keeps, is dropped), or unchanged when that file is absent and random_init_fallback is set."""
  from iab_jax import weights
  from iab_jax.models import resnet

  path = weights.resolve_or_random(config.model.get("pretrained"), config,
                                   "config.model.pretrained")
  if path is None:
    return variables
  backbone = {k: v["backbone"] for k, v in variables.items()}
  backbone = weights.load_into(backbone, resnet, path)
  return {k: {**v, "backbone": backbone[k]} for k, v in variables.items()}


def import_official_resnet50(state, config, out_dir: str,
                             *, layout: dict[str, tuple[int, ...]] | None = None
                             ) -> base.OfficialImport:
  """The official ResNet-50 attributor's state dict -> this method's variables.

  Its keys are `backbone.*` (torchvision resnet50 with fc = Identity) and `fc.{weight,bias}` (the
  Linear(2048, 23) head): the same network as ours once the head takes torchvision's fc place.
  `layout` replaces the official key/shape list (tests); config and out_dir are not needed.
  """
  del config, out_dir
  from iab_jax.models import resnet

  official.check_state(state, layout or official.read_layout(OFFICIAL_LAYOUT_RESNET50),
                       "official resnet50 checkpoint")
  torchvision_state = {k[len("backbone."):]: v for k, v in state.items()
                       if k.startswith("backbone.")}
  torchvision_state.update({k: v for k, v in state.items() if k.startswith("fc.")})
  variables = resnet.from_torchvision(torchvision_state)
  return base.OfficialImport(
      variables={k: jax.tree.map(jnp.asarray, v) for k, v in variables.items()},
      notes=["the official ResNet-50 saw 224x224 crops (Resize(256), CenterCrop(224)); test it "
             "with the same eval transform"])
