"""The contract between an attribution method and the shared train/eval loop.

A method supplies its model, how to initialise it, the loss of one training step, how to turn
images into class scores, its input transforms, and its recipe as a list of phases. The loop
(iab_jax/trainers) owns everything else: devices, sharding, data, optimizers, checkpoints,
metrics. It never looks at a method's name.

Variables are Flax Linen collections: {"params": ..., "batch_stats": ..., ...}. Everything a
method returns from `loss` and `predict` is traced under jax.jit, so it must be pure.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import ml_collections

Variables = dict[str, Any]
Batch = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Phase:
  """One stage of a method's recipe: its length, optimizer, and what it selects.

  select_best: its epochs' validation accuracy competes for the best checkpoint, the one that
  is tested. A pre-training phase on another task (DNA-Det's transformation classes) sets False.
  """

  name: str
  num_epochs: int
  optimizer: Mapping[str, Any]
  select_best: bool = True


class Method:
  """Base class; a subclass overrides what its recipe needs."""

  display_name: str = "?"  # as the paper's tables name it
  trainer: str = "supervised"  # the loop family in iab_jax/trainers that runs it

  def __init__(self, config: ml_collections.ConfigDict, classes: Sequence[str]):
    self.config = config
    self.classes = list(classes)

  @classmethod
  def check_config(cls, config: ml_collections.ConfigDict) -> None:
    """Checks the method's own config fields before any work starts, without JAX or data.

    Raise ValueError with a message that starts with the key ("config.model.name=...; expected
    ..."), so that a typo fails in a second rather than after compilation.
    """
    del config

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  def transforms(self) -> tuple[str, str]:
    """(training transform, evaluation transform) as iab_jax.data.transforms specs."""
    return self.config.input.transform, self.config.input.eval_transform

  def phases(self) -> list[Phase]:
    raise NotImplementedError

  def init(self, rng: jax.Array, images: jax.Array, pretrained: bool = True) -> Variables:
    """Variables for a model that will see images shaped like `images` (one local batch).

    pretrained: load the pretrained weights the config names; False when a checkpoint will
    replace every variable anyway (evaluation, attribution), which also needs no weights file.
    """
    raise NotImplementedError

  def loss(self, variables: Variables, batch: Batch, rng: jax.Array, phase: Phase
           ) -> tuple[jax.Array, tuple[Variables, dict[str, jax.Array]]]:
    """(scalar loss, (updated non-param collections, measurements to log)) for one batch."""
    raise NotImplementedError

  def predict(self, variables: Variables, images: jax.Array) -> jax.Array:
    """Class probabilities (N, num_classes) for evaluation."""
    raise NotImplementedError
