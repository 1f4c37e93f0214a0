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
from typing import Any, Callable, Iterator, Mapping, Sequence

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


@dataclasses.dataclass(frozen=True)
class FrozenFeatures:
  """A frozen network whose outputs a method reads instead of (or besides) the images.

  The loop computes them once per (identity, transform, dataset, split, degradation level) with
  iab_jax.features and stores them; batches then carry `batch["features"][name]` (N, dim), looked
  up by record. The network itself is built (and its weights read) only when something is left to
  extract, so a second run of the same config loads nothing.

  name: the key in batch["features"].
  transform: the iab_jax.data.transforms spec of its input (after any degradation).
  identity: everything besides the input that determines the outputs: architecture and weights
    (a file digest, or "random(seed=...)" for a randomly initialised stand-in), so that runs and
    methods that share a backbone share its features.
  dim: the feature width.
  build: () -> (apply, variables): apply(variables, images (N, H, W, C)) -> (N, dim) features,
    traced under jax.jit.
  """

  name: str
  transform: str
  identity: str
  dim: int
  build: Callable[[], tuple[Callable[[Any, jax.Array], jax.Array], Any]]


@dataclasses.dataclass
class OfficialImport:
  """What a method's `import_official(state, config, out_dir)` makes of the authors' checkpoint.

  variables: the run's variables ({"params": ..., "batch_stats": ...} as Method.init makes them),
    or None when the file holds nothing to test with (CLIP-LR: the fitted head is not in it).
  overrides: config fields (dotted keys) the imported run needs, e.g. a frozen backbone's weights
    that the function wrote to out_dir as a file the config then names.
  notes: what the user should know (one sentence each), printed and kept in the run.
  """

  variables: Variables | None
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
  notes: list[str] = dataclasses.field(default_factory=list)


class Method:
  """Base class; a subclass overrides what its recipe needs."""

  display_name: str = "?"  # as the paper's tables name it
  trainer: str = "supervised"  # the loop family in iab_jax/trainers that runs it
  # Whether loss/predict read batch["image"]. A method that reads only cached features
  # (frozen_features) sets False, and its evaluation reads no pixels once they are cached.
  uses_images: bool = True

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

  def frozen_features(self) -> list[FrozenFeatures]:
    """The frozen networks whose cached outputs the batches carry (none by default)."""
    return []

  def init(self, rng: jax.Array, images: jax.Array, pretrained: bool = True) -> Variables:
    """Variables for a model that will see images shaped like `images` (one local batch).

    pretrained: load the pretrained weights the config names; False when a checkpoint will
    replace every variable anyway (evaluation, attribution), which also needs no weights file.
    Frozen networks (frozen_features) are not part of the variables.
    """
    raise NotImplementedError

  # A pass over the training split before the first step, for statistics a model keeps with its
  # variables (DCT-CNN's per-coefficient mean and std). `prepare` receives an iterator of
  # training batches in record order (the training transform, no shuffling) and returns the
  # variables with those statistics set; it runs once per run, not again on resume, and what it
  # sets is saved in every checkpoint.
  needs_prepare: bool = False

  def prepare(self, variables: Variables, batches: Iterator[dict[str, Any]]) -> Variables:
    del batches
    return variables

  def loss(self, variables: Variables, batch: Batch, rng: jax.Array, phase: Phase
           ) -> tuple[jax.Array, tuple[Variables, dict[str, jax.Array]]]:
    """(scalar loss, (updated non-param collections, measurements to log)) for one batch.

    batch: "image" (N, H, W, C), "label" (N,), "levels" (N, 4) int32 Table 6 family levels
    (-1 where unknown; level 3 is the generator, not the run's label), and "features"
    {name: (N, dim)} when the method has frozen_features.
    """
    raise NotImplementedError

  def predict(self, variables: Variables, batch: Batch) -> jax.Array:
    """Class probabilities (N, num_classes) for evaluation; batch holds "image" (absent when
    uses_images is False) and "features" {name: (N, dim)} when the method has frozen_features."""
    raise NotImplementedError

  # The linear_probe trainer (methods fitted on features, not trained by SGD epochs) calls this
  # once with every training example's features and labels, and saves what it returns.
  def fit(self, variables: Variables, features: dict[str, Any], labels: Any) -> tuple[
      Variables, dict[str, Any]]:
    """(fitted variables, a JSON-able report of the fit: iterations, converged, loss)."""
    raise NotImplementedError
