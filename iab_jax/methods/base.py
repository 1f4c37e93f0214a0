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
import jax.numpy as jnp
import ml_collections

Variables = dict[str, Any]
Batch = Mapping[str, jax.Array]


SAMPLERS = ("shuffle", "balanced")


@dataclasses.dataclass(frozen=True)
class Phase:
  """One stage of a method's recipe: its length, optimizer, inputs, and what it selects.

  Each phase starts a fresh optimizer state; the variables carry over from the phase before.

  select_best: its epochs' validation accuracy competes for the best checkpoint, the one that
    is tested. A pre-training phase on another task (DNA-Det's transformation classes) sets False.
  validate: run validation (method.predict on the val split) after each epoch; a pretext phase
    whose predictions are not yet attributions sets False.
  transform: this phase's training transform spec (None: the method's training transform).
  label: the batch key whose values are this phase's targets: the loop sets batch["label"] to it.
    "label" is the run's class; an op of the transform may emit another, e.g. "transform_id".
  sampler: "shuffle" (a new order each epoch) or "balanced" (class-balanced batches:
    iab_jax.data.pipeline.balanced_order).
  partners: each training example comes with this many other examples drawn uniformly from the
    training split, through the same transform: batch["partner_image"] (N, P, ...),
    batch["partner_label"] (N, P), batch["partner_levels"] (N, P, 4) (RepMix's mixing partner).
  optimizer_key: where the optimizer lives in the config, for error messages (None: "optimizer"
    for a single phase, "phases.<name>.optimizer" for several).
  classes: train on the training records of these classes only (names of the run's classes),
    e.g. ("real",) for a method that learns from real images alone (OFA); None: every class.
  num_steps: the phase's length in steps instead of epochs (then num_epochs must be 1): one long
    "epoch" over the training records repeated in a new order each pass, for recipes stated in
    steps (OFA: 10k extractor steps); validation and the epoch's checkpoint come at its end.
  """

  name: str
  num_epochs: int
  optimizer: Mapping[str, Any]
  select_best: bool = True
  validate: bool = True
  transform: str | None = None
  label: str = "label"
  sampler: str = "shuffle"
  partners: int = 0
  optimizer_key: str | None = None
  classes: tuple[str, ...] | None = None
  num_steps: int = 0

  def __post_init__(self):
    if self.sampler not in SAMPLERS:
      raise ValueError(f"phase {self.name!r}: sampler={self.sampler!r}; expected one of "
                       f"{', '.join(SAMPLERS)}")
    if self.partners < 0:
      raise ValueError(f"phase {self.name!r}: partners={self.partners}; expected >= 0")
    if self.num_steps < 0 or (self.num_steps and self.num_epochs != 1):
      raise ValueError(f"phase {self.name!r}: num_steps={self.num_steps} with num_epochs="
                       f"{self.num_epochs}; a phase stated in steps has num_epochs=1")
    if self.classes is not None and not self.classes:
      raise ValueError(f"phase {self.name!r}: classes=(); expected class names or None")
    if self.select_best and not self.validate:
      raise ValueError(f"phase {self.name!r}: select_best needs validate")


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
  # When predict returns several scores by name (a patch map's averaged softmax and its vote),
  # the one the headline accuracy, the tables and iab_jax.attribute use; the evaluator reports
  # every rule's metrics beside it.
  prediction_rule: str | None = None

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

  def init(self, rng: jax.Array, images: Any, pretrained: bool = True) -> Variables:
    """Variables for a model that will see images shaped like `images` (one local batch).

    `images` is what a transform makes of one image, with a batch axis: an array, or a dict of
    arrays (several views); training passes its first phase's training transform's, evaluation
    and imports the evaluation transform's, and both must give the same variables.

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

  def predict(self, variables: Variables, batch: Batch) -> jax.Array | dict[str, jax.Array]:
    """Class probabilities (N, num_classes) for evaluation; batch holds "image" (absent when
    uses_images is False) and "features" {name: (N, dim)} when the method has frozen_features.

    A method with several prediction rules returns {rule: (N, num_classes)} scores (each row
    probability-like, e.g. the fraction of patches voting for each class) and names the headline
    one in `prediction_rule`."""
    raise NotImplementedError

  def headline(self, scores: Any) -> Any:
    """The scores of the headline prediction rule, from what predict returned."""
    if not isinstance(scores, Mapping):
      return scores
    if self.prediction_rule not in scores:
      raise ValueError(f"{self.display_name}: predict returned the rules {sorted(scores)} but "
                       f"prediction_rule is {self.prediction_rule!r}")
    return scores[self.prediction_rule]

  # Open-set attribution with a reject option: predict returns (N, num_classes + 1) probabilities
  # whose last column is "none of the known classes" (OFA's class of simulator reconstructions).
  # Closed-set metrics read the first num_classes columns; the open-set evaluator's confidence of
  # being known is the largest of them.
  reject_class: bool = False

  def embed(self, variables: Variables, batch: Batch) -> jax.Array:
    """(N, d) embeddings of a batch (as predict receives it), for the evaluators that compare
    images with each other (image-to-model verification). Methods without any raise."""
    del variables, batch
    raise NotImplementedError(f"{self.display_name} yields no embeddings (Method.embed)")

  def pair_scores(self, variables: Variables, query: jax.Array, support: jax.Array) -> jax.Array:
    """(Q, S) scores that query i and support image j come from the same generator, higher =
    more likely, from their embeddings (Q, d) and (S, d). Default: cosine similarity; a method
    with a learned pair head (OFA) overrides it."""
    del variables
    q = query / (jnp.linalg.norm(query, axis=-1, keepdims=True) + 1e-12)
    s = support / (jnp.linalg.norm(support, axis=-1, keepdims=True) + 1e-12)
    return q @ s.T

  # The linear_probe trainer (methods fitted on features, not trained by SGD epochs) calls this
  # once with every training example's features and labels, and saves what it returns.
  def fit(self, variables: Variables, features: dict[str, Any], labels: Any) -> tuple[
      Variables, dict[str, Any]]:
    """(fitted variables, a JSON-able report of the fit: iterations, converged, loss)."""
    raise NotImplementedError
