"""The ACM detector (He et al. 2026): real/fake detection from deviations off one class's manifold.

Frozen CLIP ViT-L/14 image features f (CLIP-LR's tower and feature cache,
iab_jax/methods/clip_lr.py; "following UnivFD": the projected 768-d embedding) feed the
attribution consistency module
(iab_jax/models/acm.py): an autoencoder fitted with L_A = E ||f - D(E(f))||_1 (eq. 4) on the images
of ONE class only (config.acm.source: the real images by default, or the generated ones for the
paper's Table 3 variants), and a light classifier trained with binary cross-entropy (eq. 5) on the
attribution deviation A(f) = |f - D(E(f))| of both classes; it outputs P(generated).

Training alternates as the paper states: the classifier frozen while the autoencoder refines, then
the autoencoder frozen while the classifier updates. Both losses are summed in one step, the
classifier reading A through stop_gradient, so each loss reaches only its own network; the
optimizer's parameter groups take turns (iab_jax/optimizers.py: `turn_order` autoencoder then
classifier, `alternate_every_steps` or `alternate_every_epochs` long), each with its own Adam
state that stands still while the other trains.

The method is a detector: it runs on the tasks `detection:<generator>` (classes real, fake) and
predicts [P(real), P(generated)].

Variables: {"params": {"autoencoder": ..., "classifier": ...}}.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from iab_jax import tasks
from iab_jax.methods import base, classifier, clip_lr

FIELDS = ("source", "hidden", "bottleneck", "classifier_hidden", "activation")
GROUPS = ("autoencoder", "classifier")  # the optimizer's groups, in the paper's turn order


class Acm(clip_lr.ClipLR):
  trainer = "supervised"
  uses_images = False

  @classmethod
  def check_config(cls, config):
    from iab_jax.models import acm as acm_model

    task = tasks.parse_task(config.task)
    if task.protocol != "detection":
      raise ValueError(f"config.task={config.task!r}: ACM is a real/fake detector; expected a "
                       "detection task, e.g. configs/acm.py:detection:SD1_5")
    cls.check_tower(config)
    classifier.check_fields(config, "acm", FIELDS)
    acm = config.acm
    sources = ("real", "fake") + (() if task.generator == tasks.DETECTION_ALL
                                  else (task.generator,))
    if acm.get("source", "real") not in sources:
      raise ValueError(f"config.acm.source={acm.source!r}; expected one of {', '.join(sources)} "
                       f"(the class of {config.task}'s training images the autoencoder learns)")
    sizes = [*acm.get("hidden", ()), acm.get("bottleneck", 1), *acm.get("classifier_hidden", ())]
    if not all(isinstance(n, int) and n >= 1 for n in sizes):
      raise ValueError(f"config.acm.hidden/bottleneck/classifier_hidden={tuple(sizes)}; expected "
                       "positive layer widths")
    if acm.get("activation", "relu") not in acm_model.ACTIVATIONS:
      raise ValueError(f"config.acm.activation={acm.activation!r}; expected one of "
                       f"{', '.join(acm_model.ACTIVATIONS)}")
    groups = tuple(sorted((config.optimizer.get("groups") or {}).keys()))
    if groups != tuple(sorted(GROUPS)):
      raise ValueError(f"config.optimizer.groups={groups}; expected {GROUPS}: the autoencoder's "
                       "and the classifier's optimizer settings")
    order = tuple(config.optimizer.get("turn_order", ()))
    if order != GROUPS:
      raise ValueError(f"config.optimizer.turn_order={order}; expected {GROUPS}: the paper "
                       "refines the autoencoder first, then the classifier")

  def __init__(self, config, classes):
    super().__init__(config, classes)
    if tuple(self.classes) != tasks.DETECTION_CLASSES:
      raise ValueError(f"ACM needs the classes {tasks.DETECTION_CLASSES} of a detection task; "
                       f"the run has {', '.join(self.classes)}")
    source = self.config.acm.get("source", "real")
    self.source_label = 0 if source == "real" else 1  # the task's generator is class "fake"
    if source != "real":  # the tables tell the attribution spaces apart (the paper's Table 3)
      self.display_name = f"{type(self).display_name} (source {source})"

  def model(self):
    from iab_jax.models import acm as acm_model

    acm = self.config.acm
    return acm_model.AttributionConsistency(
        dim=self.dim, hidden=tuple(acm.get("hidden", (512,))),
        bottleneck=int(acm.get("bottleneck", 128)),
        classifier_hidden=tuple(acm.get("classifier_hidden", ())),
        activation=acm.get("activation", "relu"))

  def phases(self):
    return [base.Phase("train", int(self.config.num_epochs), self.config.optimizer)]

  def init(self, rng, images=None, pretrained=True):
    del images, pretrained  # reads cached features only; nothing pretrained of its own
    return {"params": self.model().init(rng, jnp.zeros((1, self.dim), jnp.float32))["params"]}

  def _forward(self, variables, batch):
    return self.model().apply({"params": variables["params"]},
                              batch["features"][self.features_name])

  def loss(self, variables, batch, rng, phase):
    del rng, phase
    attribution, _, logit = self._forward(variables, batch)
    label = batch["label"]
    l1 = attribution.sum(axis=-1)  # ||A(f)||_1 per image
    source = (label == self.source_label).astype(jnp.float32)
    other = 1.0 - source
    attribution_loss = (l1 * source).sum() / jnp.maximum(source.sum(), 1.0)  # eq. 4
    classify_loss = optax.sigmoid_binary_cross_entropy(
        logit, (label == 1).astype(jnp.float32)).mean()  # eq. 5, label 1 = generated
    measured = {
        "attribution_loss": attribution_loss,
        "classify_loss": classify_loss,
        "accuracy": jnp.mean((logit > 0) == (label == 1)),
        # The separation the module is for: mean ||A||_1 off the learned class over on it.
        "attribution_other": (l1 * other).sum() / jnp.maximum(other.sum(), 1.0),
    }
    return attribution_loss + classify_loss, ({}, measured)

  def predict(self, variables, batch):
    p_fake = jax.nn.sigmoid(self._forward(variables, batch)[2])
    return jnp.stack([1.0 - p_fake, p_fake], axis=-1)

  def embed(self, variables, batch):
    """The attribution deviation A(f), the space the classifier reads."""
    return self._forward(variables, batch)[0]
