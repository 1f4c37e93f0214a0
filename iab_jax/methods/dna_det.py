"""DNA-Det (Yang et al., AAAI 2022): attribution by a network pre-trained to recognise image
transformations, trained on many small crops with a cross-entropy and a supervised contrastive
loss.

Two phases in one run, sharing the network (iab_jax/models/dna_det.py):
  pretrain     the training images, each through one of 170 transformations drawn uniformly
               (iab_jax/data/transformations.py), the transformation's index being the label
               (170-way head); no validation, no checkpoint selection.
  attribution  the run's classes, from the pre-trained network; the 170-way head, its projection
               head and loss weights are left behind (the official code loads only the backbone).
Each training image is resized to 256 and centre-cropped, up-sampled to 512x512 (bicubic) and
cut into 16 random 64x64 crops; the loss of a batch is the automatically weighted sum
(Kendall et al.'s uncertainty weights, two learned parameters p: sum 0.5 / p^2 L + log(1 + p^2))
of the cross-entropy over all 16 N crops and the supervised contrastive loss (Khosla et al.,
temperature 0.07, contrast mode 'all') over the N images' 16 views. As in the original, whose
16 crop positions are 16 forwards of N crops, batch norm normalises each position's N crops
with their own statistics and updates its running averages 16 times (config.bn_per_crop).
Prediction runs on the whole 512x512 image.

`official` (config.model.softmax_inside): the original's and benchmark's Simple_CNN ends with a
softmax, so its cross-entropy is taken on probabilities (a double softmax), and the benchmark's
metrics softmax its outputs again. `predict` returns softmax(network output) in both cases:
the probabilities by default, and under `official` the very scores whose accuracy, AUC and AP
the benchmark reports.

`import_official` turns the benchmark's checkpoint (official_layouts/dna_state_dict.txt) into
these variables.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from iab_jax.data import transformations
from iab_jax.methods import base, classifier, official
from iab_jax.models import dna_det as dna_model

OFFICIAL_LAYOUT = "dna_state_dict.txt"
PRETRAIN, ATTRIBUTION = "pretrain", "attribution"
_MODEL_KWARGS = ("widths", "proj_dim", "dropout", "softmax_inside", "dtype")


def supcon_loss(features: jax.Array, labels: jax.Array, temperature: float = 0.07,
                base_temperature: float = 0.07) -> jax.Array:
  """Supervised contrastive loss (Khosla et al. 2020), contrast mode 'all'.

  features: (N, V, D) L2-normalised embeddings of V views of N examples; labels (N,). Every one
  of the N V embeddings is an anchor; its positives are the other embeddings with its label
  (its own other views included), its contrast set every embedding but itself.
  """
  n, v, d = features.shape
  # View-major, as torch.cat(torch.unbind(features, 1)) orders them; the mean is the same.
  z = jnp.swapaxes(features, 0, 1).reshape(v * n, d).astype(jnp.float32)
  tiled = jnp.tile(labels, v)
  logits = z @ z.T / temperature
  # Stabilised by each row's largest logit (its own, 1 / temperature), as the original.
  logits = logits - jax.lax.stop_gradient(logits.max(axis=1, keepdims=True))
  not_self = 1.0 - jnp.eye(v * n, dtype=logits.dtype)
  positives = (tiled[:, None] == tiled[None, :]).astype(logits.dtype) * not_self
  log_prob = logits - jnp.log((jnp.exp(logits) * not_self).sum(axis=1, keepdims=True))
  # V >= 2 views give every anchor a positive.
  mean_log_prob_pos = (positives * log_prob).sum(axis=1) / positives.sum(axis=1)
  return -(temperature / base_temperature) * mean_log_prob_pos.mean()


def weighted_loss(weights: jax.Array, losses) -> jax.Array:
  """The automatically weighted loss: sum_i 0.5 / p_i^2 L_i + log(1 + p_i^2)."""
  p2 = jnp.square(weights)
  return sum(0.5 / p2[i] * loss + jnp.log1p(p2[i]) for i, loss in enumerate(losses))


class DnaDet(base.Method):

  display_name = "DNA-Det"

  @classmethod
  def check_config(cls, config):
    classifier.check_model_fields(config, _MODEL_KWARGS, name="dna_det")
    if float(config.get("temperature", 0)) <= 0:
      raise ValueError(f"config.temperature={config.get('temperature')!r}; expected > 0")
    if config.get("sampler") not in ("balanced", "shuffle"):
      raise ValueError(f"config.sampler={config.get('sampler')!r}; expected 'balanced' or "
                       "'shuffle'")
    pretrain = config.get("pretrain")
    if pretrain is None or int(pretrain.get("num_epochs", -1)) < 0:
      raise ValueError("config.pretrain.num_epochs is missing; expected an integer >= 0")
    from iab_jax.data import transforms

    crops = {"config.input.transform": config.input.transform,
             "config.pretrain.transform": pretrain.transform}
    for key, spec in crops.items():
      names = [name for name, _, _ in transforms.parse(spec).ops]
      if "random_crops" not in names:
        raise ValueError(f"{key}={spec!r}; expected the training crops (random_crops(n, size))")
    if "dna_transformation" not in [n for n, _, _ in transforms.parse(pretrain.transform).ops]:
      raise ValueError(f"config.pretrain.transform={pretrain.transform!r}; expected the "
                       "dna_transformation op, whose index is the pre-training label")

  def __init__(self, config, classes):
    super().__init__(config, classes)
    kwargs = classifier.model_kwargs(config, _MODEL_KWARGS)
    self.model = dna_model.Model(num_classes=self.num_classes,
                                 pretext_classes=transformations.NUM_TRANSFORMATIONS, **kwargs)

  def phases(self):
    pretrain = self.config.pretrain
    phases = []
    if pretrain.num_epochs:
      phases.append(base.Phase(PRETRAIN, pretrain.num_epochs, pretrain.optimizer,
                               select_best=False, validate=False, label="transform_id",
                               transform=pretrain.transform, sampler="shuffle",
                               optimizer_key="pretrain.optimizer"))
    phases.append(base.Phase(ATTRIBUTION, self.config.num_epochs, self.config.optimizer,
                             sampler=self.config.sampler, optimizer_key="optimizer"))
    return phases

  def init(self, rng, images, pretrained=True):
    del pretrained, images  # trained from scratch
    # Convolutions and pooling: the variables do not depend on the input size, so training crops
    # (N, 16, 64, 64, 3) and whole test images (N, 512, 512, 3) give the same ones.
    probe = jnp.zeros((1, 32, 32, 3), jnp.float32)
    try:
      seed = np.asarray(jax.random.key_data(rng)).ravel()
    except jax.errors.TracerArrayConversionError:
      # Traced (jax.eval_shape for a checkpoint's structure): the model's own initialisers.
      return dict(self.model.init({"params": rng}, probe, train=False))
    # torch's default initialisation (the distribution of the model's initialisers), drawn on
    # the host: on a CPU, XLA takes longer to compile some forty random initialisers than a
    # mini-bench epoch takes.
    abstract = jax.eval_shape(lambda: self.model.init({"params": rng}, probe, train=False))
    host_rng = np.random.default_rng(seed.astype(np.uint64).tolist())
    flat = traverse_util.flatten_dict(abstract)
    values = {}
    for path, leaf in sorted(flat.items()):
      if path[0] == "batch_stats":
        value = np.zeros(leaf.shape) if path[-1] == "mean" else np.ones(leaf.shape)
      elif path[-2:-1] == ("bn",):
        value = np.ones(leaf.shape) if path[-1] == "scale" else np.zeros(leaf.shape)
      elif path[-1] in ("awl", "pretext_awl"):
        value = np.ones(leaf.shape)
      else:  # a convolution's or linear layer's kernel or bias: U(+-1/sqrt(fan_in))
        fan_in = int(np.prod(flat[path[:-1] + ("kernel",)].shape[:-1]))
        bound = 1.0 / np.sqrt(fan_in)
        value = host_rng.uniform(-bound, bound, leaf.shape)
      values[path] = jnp.asarray(value, leaf.dtype)
    return dict(traverse_util.unflatten_dict(values))

  def _crop_outputs(self, variables, crops, rng, pretext: bool):
    """(class scores (V, N, K), projections (V, N, D), new batch_stats) of (N, V, h, w, 3)."""
    n, v = crops.shape[:2]
    views = jnp.swapaxes(crops, 0, 1).reshape(v * n, *crops.shape[2:])  # position-major
    # The original's loop over crop positions: batch statistics of N crops each, the running
    # averages updated once per position (bn_per_crop); or one batch of all V N crops.
    groups = v if self.config.get("bn_per_crop", True) else 1
    (logits, aux), state = self.model.apply(variables, views, train=True, groups=groups,
                                            mutable=["batch_stats"], rngs={"dropout": rng})
    scores = aux["pretext_logits"] if pretext else logits
    projections = aux["pretext_projection" if pretext else "projection"]
    return (scores.reshape(v, n, -1), projections.reshape(v, n, -1), state["batch_stats"])

  def loss(self, variables, batch, rng, phase):
    pretext = phase.name == PRETRAIN
    crops, labels = batch["image"], batch["label"]
    if crops.ndim != 5:
      raise ValueError(f"DNA-Det trains on crops (N, V, h, w, 3); got {crops.shape}")
    scores, projections, batch_stats = self._crop_outputs(variables, crops, rng, pretext)
    v = scores.shape[0]
    # Under softmax_inside the scores are probabilities, and this is the original's double
    # softmax; otherwise the usual cross-entropy on logits.
    ce = optax.softmax_cross_entropy_with_integer_labels(
        scores.reshape(-1, scores.shape[-1]), jnp.tile(labels, v)).mean()
    contrastive = supcon_loss(jnp.swapaxes(projections, 0, 1), labels,
                              self.config.temperature, self.config.temperature)
    awl = variables["params"]["pretext_awl" if pretext else "awl"]
    loss = weighted_loss(awl, (ce, contrastive))
    # The official training accuracy: the mean of the crops' scores per image.
    accuracy = jnp.mean(jnp.argmax(scores.mean(axis=0), -1) == labels)
    measurements = {"accuracy": accuracy, "cross_entropy": ce, "supcon": contrastive,
                    "awl_ce": awl[0], "awl_supcon": awl[1]}
    return loss, ({"batch_stats": batch_stats}, measurements)

  def predict(self, variables, batch):
    images = batch["image"]
    if images.ndim != 4:
      raise ValueError(f"DNA-Det predicts on whole images (N, H, W, 3); got {images.shape}")
    output, _ = self.model.apply(variables, images, train=False)
    # softmax of logits (default), or of the network's probabilities under `official`, which is
    # what the benchmark's accuracy, AUC and AP are computed on.
    return jax.nn.softmax(output.astype(jnp.float32), axis=-1)


# ---------------------------------------------------------------------------------------------
# The authors' released checkpoint (data_prep/import_official.py calls this).


def _conv(state, prefix):
  return {"kernel": state[f"{prefix}.weight"].transpose(2, 3, 1, 0),
          "bias": state[f"{prefix}.bias"]}


def _dense(state, prefix):
  return {"kernel": state[f"{prefix}.weight"].T, "bias": state[f"{prefix}.bias"]}


def import_official(state, config, out_dir: str,
                    *, layout: dict[str, tuple[int, ...]] | None = None) -> base.OfficialImport:
  """The official DNA attributor's state dict -> this method's variables (config: a dna_det
  config whose model has the official widths).

  backbone.main.{j}.main.{0,1} are the eight conv + batch-norm layers (conv{j} here),
  backbone.classification_head.1 the class head, head.{0,2} SupCon's projection MLP, awl.params
  the loss weights. The pre-training heads are not in the file (the official attribution phase
  starts from the backbone only); they are set to zero and unused at test time. `layout`
  replaces the official key/shape list (tests); out_dir is not needed.
  """
  del out_dir
  layout = layout or official.read_layout(OFFICIAL_LAYOUT)
  official.check_state(state, layout, "official DNA-Det checkpoint")
  state = {k: np.asarray(v, np.float32) for k, v in state.items()}
  params, batch_stats = {}, {}
  for j in range(8):
    prefix = f"backbone.main.{j}.main"
    params[f"conv{j}"] = {"conv": _conv(state, f"{prefix}.0"),
                          "bn": {"scale": state[f"{prefix}.1.weight"],
                                 "bias": state[f"{prefix}.1.bias"]}}
    batch_stats[f"conv{j}"] = {"bn": {"mean": state[f"{prefix}.1.running_mean"],
                                      "var": state[f"{prefix}.1.running_var"]}}
  params[dna_model.HEAD] = _dense(state, "backbone.classification_head.1")
  params["supcon"] = {"dense0": _dense(state, "head.0"), "dense1": _dense(state, "head.2")}
  params["awl"] = state["awl.params"]

  num_classes = params[dna_model.HEAD]["bias"].shape[0]
  method = DnaDet(config, [f"class{i}" for i in range(num_classes)])
  abstract = jax.eval_shape(method.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  for name, leaves in abstract["params"].items():
    if name not in params:  # the pre-training heads
      params[name] = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), leaves)
  variables = {"params": params, "batch_stats": batch_stats}
  mismatched = [jax.tree_util.keystr(path) for path, (a, b) in _zip_with_path(abstract, variables)
                if a.shape != b.shape]
  if jax.tree.structure(abstract) != jax.tree.structure(variables) or mismatched:
    raise ValueError(f"official DNA-Det checkpoint: config.model gives other shapes than the "
                     f"official network ({mismatched[:1] or 'structure'}); import with the "
                     "official sizes (configs/dna_det.py:standard,official)")
  notes = ["the official DNA-Det tests whole 512x512 images (Resize(256), CenterCrop(256), "
           "bicubic 512x512) and its network ends in a softmax: use the `official` config",
           "the pre-training heads (170 transformation classes) are not in the checkpoint; "
           "they are zero here and play no part in attribution"]
  return base.OfficialImport(
      variables=jax.tree.map(jnp.asarray, variables), notes=notes)


def _zip_with_path(a, b):
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = jax.tree.leaves(b)
  if len(flat_a) != len(flat_b):
    return []
  return [(path, (x, y)) for (path, x), y in zip(flat_a, flat_b)]
