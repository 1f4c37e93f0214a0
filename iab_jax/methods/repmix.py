"""RepMix (Bui et al., ECCV 2022; IAB paper appendix D; METHODS.md 1.7): representation mixing.

An ImageNet ResNet-50 whose fc is a 2048 -> 256 embedding, an attribution head Linear(256 -> C)
and a real/fake detection head Linear(256 -> 2). In training every image comes with a partner
image the loop draws from the training split (Phase.partners); both go through the ResNet, and
their layer4 maps are mixed with weights beta ~ Dirichlet(alpha, alpha) drawn per example
(alpha 1: uniform, the official code's), before the pooling and the embedding. The loss is

  sum_k beta_k CE(gated attribution, y_k) + sum_k beta_k w(d_k) CE(detection, d_k),

d_k = 0 for the real class and 1 for a generator, w = (1, 1/(C-1)): with one real class and
C-1 generators of equal size, a generator image weighs 1/(C-1) so that real and generated count
alike (torch's CrossEntropyLoss(weight, reduction='none') multiplies each term by the weight of
its target; the mean is over the batch, not over the weights). At inference nothing is mixed.

The detection head gates the attribution logits: the real class's logit is multiplied by
P(real), every generator's by P(generated); the gated logits are the prediction (softmax).
The real class is the run's class named "real" (iab_jax/data/generators.py). The official code
(and the original, whose real class is label 0) gates class 0 as the real one, while the
benchmark's real class is 22: `config.gate = "class0"` reproduces that. When the run has no real
class (a manifest without real images), the default neither gates nor trains the detection head
(its parameters stay as initialised); "class0" still gates class 0 and trains the detection head
on all-generated targets, as the official code would.

Variables (the official checkpoint's backbone.model.{0..4} are the stem and layer1-4, its
backbone.model.6.2 the embedding):

  params/backbone/{conv1, bn1, layer1_0, ...}   torchvision ResNet-50 without fc
  params/embedding                              Linear(2048 -> 256), the official fc
  params/attribution, params/detection          the heads
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from iab_jax.data import generators
from iab_jax.methods import base, classifier, official
from iab_jax.models import _torch_init, resnet

OFFICIAL_LAYOUT = "repmix_state_dict.txt"
_MODEL_FIELDS = ("pretrained", "weights_dir", "embed_dim", "stage_sizes", "width", "dtype")
GATES = ("real", "class0")


def mix_representations(maps: jax.Array, beta: jax.Array) -> jax.Array:
  """(N * K, ...) maps, K consecutive per example (itself, then its partners), weighted by beta
  (N, K) and summed over the K: the official MixupLayer. Computed in float32."""
  n, k = beta.shape
  maps = maps.reshape((n, k) + maps.shape[1:]).astype(jnp.float32)
  weights = beta.astype(jnp.float32).reshape((n, k) + (1,) * (maps.ndim - 2))
  return jnp.sum(maps * weights, axis=1)


def gate(attribution: jax.Array, detection: jax.Array, real_index: int | None) -> jax.Array:
  """Attribution logits scaled by the detection head's softmax: column `real_index` by P(real)
  (detection class 0), every other column by P(generated) (class 1); unchanged when None."""
  if real_index is None:
    return attribution
  p = jax.nn.softmax(detection.astype(jnp.float32), axis=-1)
  is_real = jnp.arange(attribution.shape[-1]) == real_index
  return attribution * jnp.where(is_real, p[:, :1], p[:, 1:2])


class RepMixNet(nn.Module):
  """ResNet (no fc) -> [mixing of layer4 maps] -> avgpool -> embedding -> attribution, detection.

  __call__(x, train, partners=None, beta=None): x (N, H, W, 3); partners (N, P, H, W, 3) and beta
  (N, P + 1) mix each image's layer4 map with its partners' (beta[:, 0] weighs the image itself).
  All 2N images go through the ResNet as one batch, so that training batch norm sees them all, as
  the official code's concatenated batch does. Returns (attribution logits (N, C), aux) with
  aux["detection"] (N, 2) and aux["embedding"] (N, embed_dim), float32.
  """
  num_classes: int
  embed_dim: int = 256
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, partners: jax.Array | None = None,
               beta: jax.Array | None = None) -> tuple[jax.Array, dict[str, Any]]:
    backbone = resnet.Model(num_classes=0, stage_sizes=tuple(self.stage_sizes), width=self.width,
                            dtype=self.dtype, name="backbone")
    if partners is None:
      _, aux = backbone(x, train=train)
      maps = aux["stages"][-1].astype(jnp.float32)
    else:
      n = x.shape[0]
      # (N, 1 + P, H, W, 3) -> (N * (1 + P), H, W, 3): each image followed by its partners.
      group = jnp.concatenate([x[:, None], partners.astype(x.dtype)], axis=1)
      _, aux = backbone(group.reshape((-1,) + x.shape[1:]), train=train)
      maps = mix_representations(aux["stages"][-1], beta.reshape(n, group.shape[1]))
    pooled = jnp.mean(maps, axis=(1, 2))
    dense = lambda features, fan_in, name: nn.Dense(
        features, dtype=jnp.float32, param_dtype=jnp.float32, kernel_init=_torch_init.kernel_init,
        bias_init=_torch_init.bias_init(fan_in), name=name)
    embedding = dense(self.embed_dim, pooled.shape[-1], "embedding")(pooled)
    attribution = dense(self.num_classes, self.embed_dim, "attribution")(embedding)
    detection = dense(2, self.embed_dim, "detection")(embedding)
    return attribution, {"detection": detection, "embedding": embedding}


real_class_index = generators.real_class_index  # the run's real class (None without one)


class RepMix(base.Method):
  display_name = "RepMix"

  @classmethod
  def check_config(cls, config):
    classifier.check_model_fields(config, _MODEL_FIELDS)
    model = config.model
    if int(model.get("embed_dim", 256)) < 1:
      raise ValueError(f"config.model.embed_dim={model.embed_dim}; expected >= 1")
    mixup = config.get("mixup", {})
    if int(mixup.get("samples", 2)) < 2:
      raise ValueError(f"config.mixup.samples={mixup.get('samples')}; expected >= 2 (the image "
                       "and at least one partner)")
    if not float(mixup.get("alpha", 1.0)) > 0:
      raise ValueError(f"config.mixup.alpha={mixup.get('alpha')}; expected > 0")
    if config.get("gate", "real") not in GATES:
      raise ValueError(f"config.gate={config.get('gate')!r}; expected one of {GATES}")

  def __init__(self, config, classes):
    super().__init__(config, classes)
    model = config.model
    self.model = RepMixNet(num_classes=self.num_classes,
                           embed_dim=int(model.get("embed_dim", 256)),
                           stage_sizes=tuple(model.get("stage_sizes", (3, 4, 6, 3))),
                           width=int(model.get("width", 64)),
                           dtype=jnp.dtype(model.get("dtype", "float32")))
    self.samples = int(config.get("mixup", {}).get("samples", 2))
    self.alpha = float(config.get("mixup", {}).get("alpha", 1.0))
    self.real_index = real_class_index(self.classes)
    official_gate = config.get("gate", "real") == "class0"
    # Which column P(real) gates (None: no gating), and whether the detection head trains.
    self.gate_index = 0 if official_gate else self.real_index
    self.train_detection = official_gate or self.real_index is not None
    # (real, generated) weights of the detection cross-entropy: the official [1, 1/22] for 23.
    self.detection_weights = (1.0, 1.0 / max(self.num_classes - 1, 1))
    self._init_fn = jax.jit(lambda rng, images: self.model.init({"params": rng}, images,
                                                                train=False))

  def phases(self):
    return [base.Phase("train", self.config.num_epochs, self.config.optimizer,
                       partners=self.samples - 1)]

  def init(self, rng, images, pretrained=True):
    variables = dict(self._init_fn(rng, images))
    if pretrained and self.config.model.get("pretrained"):
      # ImageNet weights for the ResNet; the backbone has no fc, so the file's is dropped (the
      # official code replaces it with the fresh 2048 -> 256 embedding).
      variables = classifier.load_backbone_resnet(variables, self.config)
    return variables

  def mixing_weights(self, rng: jax.Array, n: int) -> jax.Array:
    """beta (n, samples) ~ Dirichlet(alpha, ..., alpha), one draw per example."""
    return jax.random.dirichlet(rng, jnp.full((self.samples,), self.alpha, jnp.float32), (n,))

  def detection_targets(self, labels: jax.Array) -> jax.Array:
    """0 for the real class, 1 for a generator (all 1 when the run has no real class)."""
    if self.real_index is None:
      return jnp.ones_like(labels)
    return (labels != self.real_index).astype(jnp.int32)

  def mixed_loss(self, attribution, detection, labels, beta):
    """(attribution loss, detection loss): beta-weighted cross-entropies, mean over the batch.

    attribution (N, C) raw logits, detection (N, 2), labels (N, K), beta (N, K).
    """
    k = labels.shape[1]
    gated = gate(attribution, detection, self.gate_index)
    per_label = lambda logits, targets: optax.softmax_cross_entropy_with_integer_labels(
        jnp.repeat(logits[:, None], k, axis=1), targets)
    attribution_loss = jnp.mean(jnp.sum(beta * per_label(gated, labels), axis=1))
    if not self.train_detection:
      return attribution_loss, jnp.zeros((), jnp.float32)
    targets = self.detection_targets(labels)
    weights = jnp.asarray(self.detection_weights, jnp.float32)[targets]
    detection_loss = jnp.mean(jnp.sum(beta * weights * per_label(detection, targets), axis=1))
    return attribution_loss, detection_loss

  def loss(self, variables, batch, rng, phase):
    del phase
    images, partners = batch["image"], batch["partner_image"]
    labels = jnp.concatenate([batch["label"][:, None], batch["partner_label"]], axis=1)
    beta = self.mixing_weights(rng, labels.shape[0])
    state = [k for k in variables if k != "params"]
    (attribution, aux), new_state = self.model.apply(
        variables, images, train=True, partners=partners, beta=beta, mutable=state)
    attribution_loss, detection_loss = self.mixed_loss(attribution, aux["detection"], labels, beta)
    gated = gate(attribution, aux["detection"], self.gate_index)
    # The original's training accuracy: each mixed label counts with its weight.
    hits = jnp.argmax(gated, -1)[:, None] == labels
    return attribution_loss + detection_loss, (dict(new_state), {
        "attribution_loss": attribution_loss, "detection_loss": detection_loss,
        "accuracy": jnp.mean(jnp.sum(beta * hits, axis=1))})

  def predict(self, variables, batch):
    attribution, aux = self.model.apply(variables, batch["image"], train=False)
    return jax.nn.softmax(gate(attribution, aux["detection"], self.gate_index), axis=-1)


# ---------------------------------------------------------------------------------------------
# The authors' released checkpoint (data_prep/import_official.py calls this).

_STEM = {"0": "conv1", "1": "bn1"}


def _torchvision_key(key: str) -> str | None:
  """backbone.model.* of the official ResnetMixup -> torchvision resnet50's key (None: not one)."""
  parts = key.split(".")
  if parts[:2] != ["backbone", "model"]:
    return None
  index, rest = parts[2], parts[3:]
  if index == "0":  # Sequential(conv1, bn1, relu, maxpool)
    return ".".join([_STEM[rest[0]]] + rest[1:])
  if index in ("1", "2", "3", "4"):
    return ".".join([f"layer{index}"] + rest)
  if index == "6" and rest[0] == "2":  # Sequential(avgpool, flatten, fc)
    return ".".join(["fc"] + rest[1:])
  return None


def import_official(state, config, out_dir: str, *,
                    layout: dict[str, tuple[int, ...]] | None = None) -> base.OfficialImport:
  """The official RepMix attributor's state dict -> this method's variables.

  Keys: backbone.model.{0: stem, 1-4: layer1-4, 6.2: the 2048 -> 256 fc} (torchvision names
  inside), attribution.*, detection.*, and the buffer det_ce.weight, the detection loss's class
  weights [1, 1/22], which no prediction uses (a note says when it holds something else).
  `layout` replaces the official key/shape list (tests); config and out_dir are not needed.
  """
  del config, out_dir
  official.check_state(state, layout or official.read_layout(OFFICIAL_LAYOUT),
                       "official repmix checkpoint")
  torchvision_state = {}
  for key, value in state.items():
    name = _torchvision_key(key)
    if name is not None:
      torchvision_state[name] = value
  # The official network is ResNet-50; reading the depth off the keys lets tests use a smaller one.
  blocks = {}
  for name in torchvision_state:
    m = re.match(r"layer(\d)\.(\d+)\.", name)
    if m:
      blocks[int(m.group(1))] = max(blocks.get(int(m.group(1)), 0), int(m.group(2)) + 1)
  converted = resnet.from_torchvision(torchvision_state,
                                      stage_sizes=tuple(blocks[i] for i in sorted(blocks)))
  linear = lambda prefix: {"kernel": np.ascontiguousarray(np.asarray(state[f"{prefix}.weight"],
                                                                     np.float32).T),
                           "bias": np.asarray(state[f"{prefix}.bias"], np.float32)}
  params = dict(converted["params"])
  embedding = params.pop("fc")
  variables = {"params": {"backbone": params, "embedding": embedding,
                          "attribution": linear("attribution"),
                          "detection": linear("detection")},
               "batch_stats": {"backbone": converted["batch_stats"]}}
  num_classes = variables["params"]["attribution"]["kernel"].shape[1]
  notes = ["the official RepMix gates class 0 as the real class (its real class is 22): import "
           "and test it with the `official` option (config.gate='class0'), whose eval transform "
           "is its training transform (random flip and 224 crop of a 256 resize, seeded per "
           "image)"]
  expected = np.asarray([1.0, 1.0 / (num_classes - 1)], np.float32)
  weight = np.asarray(state["det_ce.weight"], np.float32)
  if not np.allclose(weight, expected, rtol=1e-6):
    notes.append(f"det_ce.weight is {weight.tolist()}, not the official code's "
                 f"{expected.tolist()}: the checkpoint was trained with other detection weights")
  return base.OfficialImport(
      variables={k: jax.tree.map(jnp.asarray, v) for k, v in variables.items()}, notes=notes)
