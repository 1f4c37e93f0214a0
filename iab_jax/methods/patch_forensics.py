"""PatchForensics (Chai et al., ECCV 2020): a truncated Xception that attributes every patch.

The network is Xception cut after its second block (the variables and function of
iab_jax.models.xception.Model(truncate_after="block2"), its depthwise convs and max pools written
as shifted element-wise ops, several times faster on XLA's CPU backend) followed by a 1x1
convolution to the classes, so it outputs a map of class logits, one per receptive field
("patch"): 32x32 of them for a 256x256 image. Training
broadcasts the image's label to every patch and averages the softmax cross-entropy over all of
them. An image is then scored two ways (predict returns both):

  "vote"     the fraction of patches whose argmax is each class; its argmax is the most voted
             class, the lowest class index among equal counts (jnp.argmax keeps the first),
             which is also what torch.mode returns on CPU for the official `acc_D_voted`;
  "average"  the spatial mean of the per-patch softmax (the official `acc`, `acc_D_avg`).

The paper (appendix D) reports the vote, the official code's `acc` (used for its model selection
and its tables' metric) is the average: `prediction_rule` names the headline rule, "vote" by
default, "average" under `official`.

Initialisation is the original's (patch-forensics netutils.init_weights, init_type "xavier", as
the benchmark's patch.yaml sets): every convolution xavier-normal with gain 0.02, biases zero,
BatchNorm weights ~ N(1, 0.02) and biases zero; no pretraining. config.model.name is "xception",
the backbone's model module; the 1x1 head lives here rather than in iab_jax/models because a
patch classifier's output is a map, not the (N, C) logits of the models' contract.

`import_official` turns the benchmark's released checkpoint (official_layouts/
patch_state_dict.txt, DataParallel keys prefixed `net_D.module.`) into these variables.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from iab_jax.methods import base, official
from iab_jax.models import _loading, xception

OFFICIAL_LAYOUT = "patch_state_dict.txt"
OFFICIAL_PREFIX = "net_D.module."  # the official model is wrapped in torch's DataParallel
OFFICIAL_TRUNCATION = "block2"  # which_model_netD: xception_block2
RULES = ("vote", "average")
_MODEL_KEYS = ("name", "truncate_after", "init_gain", "dtype")


class PatchNet(nn.Module):
  """Xception's stem and blocks up to `truncate_after`, then a 1x1 conv to the classes.

  Input (N, H, W, 3) normalised with mean = std = 0.5; output the patch logits (N, h, w, C)
  float32 (h = w = 32 for H = W = 256 after block 2).
  """
  num_classes: int
  truncate_after: str = OFFICIAL_TRUNCATION
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    # Xception's stem and blocks, with the CPU-friendly depthwise convs and max pools.
    feature_map, _ = xception.Model(num_classes=0, truncate_after=self.truncate_after,
                                    dtype=self.dtype, shifted_ops=True, name="backbone")(
                                        x, train=train)
    # The classifier runs in float32 whatever the compute dtype: it feeds the softmax.
    return nn.Conv(self.num_classes, (1, 1), padding="VALID", dtype=jnp.float32,
                   param_dtype=jnp.float32, name="convout")(feature_map.astype(jnp.float32))


def patch_scores(logits: jax.Array) -> dict[str, jax.Array]:
  """{"vote", "average"}: (N, C) image scores from patch logits (N, h, w, C); rows sum to 1."""
  num_classes = logits.shape[-1]
  logits = logits.astype(jnp.float32)
  votes = jax.nn.one_hot(jnp.argmax(logits, axis=-1), num_classes, dtype=jnp.float32)
  return {"vote": jnp.mean(votes, axis=(1, 2)),
          "average": jnp.mean(jax.nn.softmax(logits, axis=-1), axis=(1, 2))}


def patch_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy over every patch of every image, each patch labelled with its
  image's label (torch's CrossEntropyLoss over the (N, C, h, w) map with the label expanded)."""
  n, h, w, _ = logits.shape
  patch_labels = jnp.broadcast_to(labels[:, None, None], (n, h, w))
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), patch_labels).mean()


def official_init(abstract: dict[str, Any], rng: np.random.Generator,
                  gain: float) -> dict[str, Any]:
  """Variables shaped like `abstract`, drawn as patch-forensics' init_weights("xavier") does.

  Conv kernels (kh, kw, in/groups, out) ~ N(0, gain^2 * 2 / (fan_in + fan_out)) with torch's
  fans (fan_in = kh kw in/groups, fan_out = kh kw out; a depthwise kernel has fan_in 9); every
  bias 0; BatchNorm scales ~ N(1, gain^2); running means 0 and variances 1 (torch's fresh
  buffers). Drawn on the host: XLA compiles random initialisers slower than this net trains.
  """
  flat = traverse_util.flatten_dict(abstract)
  out = {}
  for path, leaf in flat.items():
    collection, name = path[0], path[-1]
    if collection == "batch_stats":
      value = np.zeros(leaf.shape) if name == "mean" else np.ones(leaf.shape)
    elif name == "kernel":
      receptive = int(np.prod(leaf.shape[:-2]))
      fan_in, fan_out = receptive * leaf.shape[-2], receptive * leaf.shape[-1]
      value = rng.normal(0.0, gain * np.sqrt(2.0 / (fan_in + fan_out)), leaf.shape)
    elif name == "scale":
      value = rng.normal(1.0, gain, leaf.shape)
    elif name == "bias":
      value = np.zeros(leaf.shape)
    else:
      raise ValueError(f"official_init: no rule for variable {'/'.join(path)}")
    out[path] = jnp.asarray(value, leaf.dtype)
  return traverse_util.unflatten_dict(out)


class PatchForensics(base.Method):

  display_name = "PatchForensics"
  prediction_rule = "vote"  # the paper's tables; config.prediction_rule overrides it

  @classmethod
  def check_config(cls, config):
    model = config.get("model")
    if model is None or model.get("name") != "xception":
      raise ValueError("config.model.name must be 'xception' (the backbone, cut after "
                       "config.model.truncate_after) for the patch_forensics method")
    unknown = set(model.keys()) - set(_MODEL_KEYS)
    if unknown:
      raise ValueError(f"config.model.{sorted(unknown)[0]}: unknown key; expected some of "
                       f"{', '.join(_MODEL_KEYS)}")
    cut = model.get("truncate_after", OFFICIAL_TRUNCATION)
    if cut not in xception.BLOCK_NAMES:
      raise ValueError(f"config.model.truncate_after={cut!r}; expected one of "
                       f"{', '.join(xception.BLOCK_NAMES)}")
    if not float(model.get("init_gain", 0.02)) > 0:
      raise ValueError(f"config.model.init_gain={model.get('init_gain')!r}; expected > 0")
    rule = config.get("prediction_rule", cls.prediction_rule)
    if rule not in RULES:
      raise ValueError(f"config.prediction_rule={rule!r}; expected one of {', '.join(RULES)}")

  def __init__(self, config, classes):
    super().__init__(config, classes)
    self.prediction_rule = config.get("prediction_rule", type(self).prediction_rule)
    self.init_gain = float(config.model.get("init_gain", 0.02))
    self.model = PatchNet(num_classes=self.num_classes,
                          truncate_after=config.model.get("truncate_after", OFFICIAL_TRUNCATION),
                          dtype=jnp.dtype(config.model.get("dtype", "float32")))

  def phases(self):
    return [base.Phase("train", self.config.num_epochs, self.config.optimizer)]

  def init(self, rng, images, pretrained=True):
    del pretrained  # trained from scratch, as in the original and the official code
    try:
      seed = np.asarray(jax.random.key_data(rng))
    except jax.errors.TracerArrayConversionError:
      # Traced (jax.eval_shape for a checkpoint's structure): the same tree from Flax's init.
      return dict(self.model.init({"params": rng}, images, train=False))
    abstract = jax.eval_shape(lambda: self.model.init({"params": rng}, images, train=False))
    host_rng = np.random.default_rng(seed.astype(np.uint64).ravel().tolist())
    return official_init(dict(abstract), host_rng, self.init_gain)

  def patch_logits(self, variables, images, *, train: bool = False):
    """(patch logits (N, h, w, C), updated batch statistics ({} when not training))."""
    if train:
      logits, state = self.model.apply(variables, images, train=True, mutable=["batch_stats"])
      return logits, dict(state)
    return self.model.apply(variables, images, train=False), {}

  def loss(self, variables, batch, rng, phase):
    del rng, phase
    logits, state = self.patch_logits(variables, batch["image"], train=True)
    loss = patch_cross_entropy(logits, batch["label"])
    labels = batch["label"]
    scores = patch_scores(jax.lax.stop_gradient(logits))
    measurements = {
        # per patch (the official acc_D_raw): not an image's score, so only logged here
        "patch_accuracy": jnp.mean(jnp.argmax(logits, -1) == labels[:, None, None]),
        "vote_accuracy": jnp.mean(jnp.argmax(scores["vote"], -1) == labels),
        "average_accuracy": jnp.mean(jnp.argmax(scores["average"], -1) == labels),
    }
    return loss, (state, measurements)

  def predict(self, variables, batch):
    logits, _ = self.patch_logits(variables, batch["image"])
    return patch_scores(logits)


# ---------------------------------------------------------------------------------------------
# The official checkpoint.

# The Flax modules the truncated backbone keeps (the stem and blocks 1..2).
_BACKBONE_MODULES = ("conv1", "bn1", "conv2", "bn2", "block1", "block2")


def _official_table(num_classes: int) -> dict[str, tuple[str, tuple[str, ...], str, tuple]]:
  """official key -> (collection, Flax path, kind, torch shape), num_batches_tracked aside.

  The backbone's keys are timm's legacy_xception names (the original's CustomXceptionNet uses
  Cadene's module names, as timm does), so xception's own table maps them.
  """
  table = {}
  for key, (collection, path, kind, shape) in xception._timm_table(None).items():
    if path[0] in _BACKBONE_MODULES:
      table[OFFICIAL_PREFIX + key] = (collection, ("backbone",) + path, kind, shape)
  table[OFFICIAL_PREFIX + "convout.weight"] = (
      "params", ("convout", "kernel"), "conv", (num_classes, 256, 1, 1))
  table[OFFICIAL_PREFIX + "convout.bias"] = ("params", ("convout", "bias"), "vector",
                                             (num_classes,))
  return table


def import_official(state: dict[str, np.ndarray], config, out_dir: str) -> base.OfficialImport:
  """The variables PatchForensics.init makes for `config`, holding the official checkpoint.

  The class count is the file's (23 for the released checkpoints); the layout file fixes the
  rest. torch's (out, in, kh, kw) convolutions become Flax's (kh, kw, in, out).
  """
  del out_dir  # nothing besides the variables
  cut = config.model.get("truncate_after", OFFICIAL_TRUNCATION)
  if cut != OFFICIAL_TRUNCATION:
    raise ValueError(f"config.model.truncate_after={cut!r}: the official checkpoint is cut "
                     f"after {OFFICIAL_TRUNCATION}")
  layout = official.read_layout(OFFICIAL_LAYOUT)
  official.check_state(state, layout, "official PatchForensics checkpoint")
  num_classes = layout[OFFICIAL_PREFIX + "convout.bias"][0]
  flat = {}
  for key, (collection, path, kind, shape) in _official_table(num_classes).items():
    value = np.asarray(state[key], np.float32)
    if value.shape != shape:  # the layout file and xception's table disagree: a bug here
      raise ValueError(f"official PatchForensics checkpoint: key {key!r} has shape "
                       f"{value.shape}, the network needs {shape}")
    if kind in ("conv", "pointwise"):
      value = _loading.conv_kernel(value)
    flat[(collection,) + path] = jnp.asarray(np.ascontiguousarray(value))
  notes = ["The official PatchForensics saw resize(256)|central_crop(256)|normalize('half'), "
           "this method's eval transform.",
           "The official `acc` is the averaged softmax over patches; the paper's tables report "
           "the patch vote. Both rules are scored; `official` makes the average the headline."]
  return base.OfficialImport(variables=traverse_util.unflatten_dict(flat), notes=notes)
