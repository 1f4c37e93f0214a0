"""DCT-CNN (Frank et al., ICML 2020): a small CNN over each image's DCT spectrum.

The input transform ends with the `dct` op (per-channel orthonormal 2-D DCT-II of the 0-255
pixels; log-magnitudes by default, magnitudes under `official`). Before the first step, `prepare`
streams the training split once and stores each coefficient's mean and std in the model's
`dct_stats` collection, which standardises the spectra inside the model (as GANDCTAnalysis's
prepare_dataset.py does on disk); the official benchmark code does neither (config.model
.standardize=False). Training is softmax cross-entropy; prediction is the softmax of the logits.

`import_official` turns the benchmark's released checkpoint (official_layouts/dct_state_dict.txt)
into these variables.
"""

from __future__ import annotations

from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

from iab_jax import console
from iab_jax.data import transforms
from iab_jax.methods import base, classifier, official
from iab_jax.models import dct_cnn as dct_cnn_model

OFFICIAL_LAYOUT = "dct_state_dict.txt"
OFFICIAL_NUM_CLASSES = 23
OFFICIAL_IMAGE_SIZE = 256
_PREFIX = "feature_extractor."
_MODEL_KWARGS = ("widths", "standardize", "dtype")


class MomentAccumulator:
  """Per-element mean and (population) variance over a stream of batches, in float64.

  Batches are merged with Chan et al.'s pairwise update (each batch's own mean and centred sum
  of squares, then combined), which stays accurate where the naive sum of squares cancels:
  log-DCT coefficients have means far from zero relative to their spread.
  """

  def __init__(self):
    self.count = 0
    self.mean: np.ndarray | None = None
    self.m2: np.ndarray | None = None  # sum of squared deviations from the mean

  def update(self, batch: np.ndarray) -> None:
    batch = np.asarray(batch, np.float64)
    n = batch.shape[0]
    if n == 0:
      return
    batch_mean = batch.mean(axis=0)
    batch_m2 = np.square(batch - batch_mean).sum(axis=0)
    if self.mean is None:
      self.count, self.mean, self.m2 = n, batch_mean, batch_m2
      return
    total = self.count + n
    delta = batch_mean - self.mean
    self.mean = self.mean + delta * (n / total)
    self.m2 = self.m2 + batch_m2 + np.square(delta) * (self.count * n / total)
    self.count = total

  def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
    if not self.count:
      raise ValueError("no examples to compute DCT statistics from")
    return self.mean, np.sqrt(self.m2 / self.count)


class DctCnn(base.Method):

  @classmethod
  def check_config(cls, config):
    classifier.check_model_fields(config, _MODEL_KWARGS, name="dct_cnn")
    model = config.model
    widths = tuple(model.get("widths", (3, 8, 16, 32)))
    if len(widths) != 4 or any(int(w) < 1 for w in widths):
      raise ValueError(f"config.model.widths={widths}; expected four positive channel counts")
    for key in ("transform", "eval_transform"):
      spec = config.input[key]
      ops = transforms.parse(spec).ops
      if not ops or ops[-1][0] != "dct":
        raise ValueError(f"config.input.{key}={spec!r}; expected it to end with the dct op")

  def __init__(self, config, classes):
    super().__init__(config, classes)
    kwargs = classifier.model_kwargs(config, _MODEL_KWARGS)
    self.model = dct_cnn_model.Model(num_classes=self.num_classes, **kwargs)

  @property
  def needs_prepare(self) -> bool:
    # Only the standardised recipe has statistics to gather.
    return self.model.standardize

  def phases(self):
    return [base.Phase("train", self.config.num_epochs, self.config.optimizer)]

  def init(self, rng, images, pretrained=True):
    del pretrained  # trained from scratch, as in the paper and the official code
    try:
      seed = np.asarray(jax.random.key_data(rng))
    except jax.errors.TracerArrayConversionError:
      # Traced (jax.eval_shape for a checkpoint's structure): the model's own initialisers.
      return dict(self.model.init({"params": rng}, images, train=False))
    # torch's default initialisation (the model's initialisers' distribution), drawn on the host:
    # on a CPU, XLA takes longer to compile the random initialisers than this network takes to
    # train on the mini-bench.
    abstract = jax.eval_shape(
        lambda: self.model.init({"params": rng}, images, train=False))
    host_rng = np.random.default_rng(seed.astype(np.uint64).tolist())
    variables = {}
    for collection, modules in abstract.items():
      variables[collection] = {}
      for name, leaves in modules.items():
        if collection != "params":  # the identity statistics: mean 0, std 1
          variables[collection][name] = jnp.full(leaves.shape, 0.0 if name == "mean" else 1.0,
                                                 leaves.dtype)
          continue
        bound = 1.0 / np.sqrt(np.prod(leaves["kernel"].shape[:-1]))  # 1 / sqrt(fan_in)
        variables[collection][name] = {
            k: jnp.asarray(host_rng.uniform(-bound, bound, leaves[k].shape), leaves[k].dtype)
            for k in ("kernel", "bias")}
    return variables

  def prepare(self, variables, batches: Iterator[dict[str, Any]]):
    if not self.model.standardize:
      return variables
    moments = MomentAccumulator()
    for batch in batches:
      images = np.asarray(batch["image"])
      if "mask" in batch:  # padding examples repeat a real one and must not count twice
        images = images[np.asarray(batch["mask"], bool)]
      moments.update(images)
    mean, std = moments.mean_std()
    # A coefficient that never varies (a constant border, a tiny split) is passed through
    # centred rather than divided by zero.
    std = np.where(std > 0, std, 1.0)
    console.say("DCT statistics from %d training images: mean of the coefficient means %.3f, "
                "mean std %.3f", moments.count, float(mean.mean()), float(std.mean()))
    stats = {"mean": jnp.asarray(mean, jnp.float32), "std": jnp.asarray(std, jnp.float32)}
    return {**variables, dct_cnn_model.STATS: stats}

  def _logits(self, variables, images):
    logits, _ = self.model.apply(variables, images, train=False)
    return logits

  def loss(self, variables, batch, rng, phase):
    del rng, phase
    logits = self._logits(variables, batch["image"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    # No collection changes during training: the statistics are fixed after prepare.
    return loss, ({}, {"accuracy": accuracy})

  def predict(self, variables, batch):
    return jax.nn.softmax(self._logits(variables, batch["image"]), axis=-1)


# ---------------------------------------------------------------------------------------------
# The official checkpoint.


def official_layout(widths=(3, 8, 16, 32), num_classes: int = OFFICIAL_NUM_CLASSES,
                    image_size: int = OFFICIAL_IMAGE_SIZE) -> dict[str, tuple[int, ...]]:
  """The state_dict keys and shapes of the official DCTAttributor (feature_extractor=SimpleCNN)."""
  layout = {}
  in_channels = 3
  for i, width in enumerate(widths):
    layout[f"{_PREFIX}conv{i + 1}.weight"] = (width, in_channels, 3, 3)
    layout[f"{_PREFIX}conv{i + 1}.bias"] = (width,)
    in_channels = width
  side = image_size // 4
  layout[f"{_PREFIX}fc.weight"] = (num_classes, in_channels * side * side)
  layout[f"{_PREFIX}fc.bias"] = (num_classes,)
  return layout


def import_official(state: dict[str, np.ndarray], config, out_dir: str) -> base.OfficialImport:
  """The variables DctCnn.init makes for `config`, holding the official checkpoint's weights.

  torch's convolutions are (out, in, kh, kw) and become Flax's (kh, kw, in, out). The official
  fc reads the last feature map flattened as (channel, height, width); ours flattens (height,
  width, channel), so the fc rows are permuted to give the same logits.
  """
  del out_dir  # nothing besides the variables
  widths = tuple(int(w) for w in config.model.get("widths", (3, 8, 16, 32)))
  layout = official_layout(widths)
  official.check_state(state, layout, "official DCT-CNN checkpoint")
  params = {}
  for i in range(len(widths)):
    name = f"conv{i + 1}"
    weight = np.asarray(state[f"{_PREFIX}{name}.weight"], np.float32)
    params[name] = {"kernel": weight.transpose(2, 3, 1, 0),
                    "bias": np.asarray(state[f"{_PREFIX}{name}.bias"], np.float32)}
  side = OFFICIAL_IMAGE_SIZE // 4
  fc = np.asarray(state[f"{_PREFIX}fc.weight"], np.float32)
  fc = fc.reshape(OFFICIAL_NUM_CLASSES, widths[-1], side, side).transpose(2, 3, 1, 0)
  params[dct_cnn_model.HEAD] = {"kernel": fc.reshape(-1, OFFICIAL_NUM_CLASSES),
                                "bias": np.asarray(state[f"{_PREFIX}fc.bias"], np.float32)}
  variables: dict[str, Any] = {"params": params}
  notes = ["The official DCT-CNN was trained on abs(DCT) of 256x256 crops, without log or "
           "standardisation: evaluate it with the `official` transform resize(256)|"
           "central_crop(256)|dct(log=False)."]
  if config.model.get("standardize", True):
    # The official network saw unstandardised spectra: identity statistics keep its function.
    shape = (OFFICIAL_IMAGE_SIZE, OFFICIAL_IMAGE_SIZE, 3)
    variables[dct_cnn_model.STATS] = {"mean": np.zeros(shape, np.float32),
                                      "std": np.ones(shape, np.float32)}
    notes.append("config.model.standardize is set: identity DCT statistics (mean 0, std 1) "
                 "were stored, so the imported network sees the spectra as the official one did.")
  return base.OfficialImport(variables=variables, notes=notes)
