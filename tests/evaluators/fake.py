"""A tiny stand-in Method for the evaluator tests: fixed functions of the pixels, written once in
jnp (what the evaluators run) and once in NumPy (what the tests compare with), on images decoded
and transformed one by one without the pipeline."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np

from iab_jax import features, sharding, tasks
from iab_jax.data import records, transforms
from iab_jax.methods import base

TRANSFORM = "resize(32)|central_crop(32)|normalize('unit')"
EMBED_DIM = 9


def _embedding(images, xp):
  """Channel means, channel standard deviations and the top-left quarter's channel means."""
  return xp.concatenate([images.mean(axis=(1, 2)), images.std(axis=(1, 2)),
                         images[:, :16, :16].mean(axis=(1, 2))], axis=1)


def _softmax(logits, xp):
  e = xp.exp(logits - logits.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


class FakeMethod(base.Method):
  """predict: softmax of a fixed linear map of the embedding (+ a constant reject logit when
  reject_class); embed: the embedding (or the cached frozen feature "toy" when uses_images is
  False)."""

  display_name = "Fake"

  def __init__(self, classes, *, reject_class=False, uses_images=True, frozen=None):
    super().__init__(ml_collections.ConfigDict(), classes)
    self.reject_class = reject_class
    self.uses_images = uses_images
    self._frozen = frozen

  def transforms(self):
    return TRANSFORM, TRANSFORM

  def frozen_features(self):
    return [self._frozen] if self._frozen else []

  def variables(self):
    rng = np.random.default_rng(0)
    columns = self.num_classes + (1 if self.reject_class else 0)
    return {"w": rng.normal(size=(EMBED_DIM, columns)).astype(np.float32) * 20.0}

  def _logits(self, variables, z, xp):
    logits = (z - 0.35) @ variables["w"]
    if self.reject_class:  # a reject column that often wins: closed-set metrics must skip it
      known = logits[:, :-1]
      reject = known.max(axis=1, keepdims=True) + 30.0 * (z[:, :1] - z[:, 1:2])
      logits = xp.concatenate([known, reject], axis=1)
    return logits

  def embed(self, variables, batch):
    if not self.uses_images:
      return batch["features"]["toy"]
    return _embedding(batch["image"], jnp)

  def predict(self, variables, batch):
    return _softmax(self._logits(variables, self.embed(variables, batch), jnp), jnp)

  # NumPy re-statements, per image, for the tests.
  def np_embed(self, images):
    return _embedding(images.astype(np.float64), np)

  def np_predict(self, variables, images):
    w = {"w": variables["w"].astype(np.float64)}
    return _softmax(self._logits(w, self.np_embed(images), np), np)


class NoEmbedding(FakeMethod):
  def embed(self, variables, batch):
    return base.Method.embed(self, variables, batch)


class NegativeDistance(FakeMethod):
  """A method with its own pair score: minus the squared Euclidean distance."""

  def pair_scores(self, variables, query, support):
    return -((query[:, None, :] - support[None, :, :]) ** 2).sum(-1)


def frozen_spec():
  """A frozen "network" whose features are the fake embedding, for uses_images=False."""
  return base.FrozenFeatures(name="toy", transform=TRANSFORM, identity="fake-embedding",
                             dim=EMBED_DIM, build=lambda: (lambda v, x: _embedding(x, jnp), {}))


def load(data_dir: str, task: str, manifest: str = ""):
  return tasks.load(ml_collections.ConfigDict({"data_dir": data_dir, "manifest": manifest,
                                               "prepare": ""}), tasks.parse_task(task))


def images(data, positions, level: int = 0) -> np.ndarray:
  """The evaluation input of each record, decoded and transformed one by one."""
  transform = transforms.parse((f"degrade({level})|" if level else "") + TRANSFORM)
  return np.stack([transform(records.decode(data.dataset.raw(int(p))), np.random.default_rng(0))
                   for p in positions])


def mesh():
  return sharding.make_mesh()


def provider(method, data, root):
  return features.Provider(method, data=data, config={"feature_cache": root}, mesh=mesh(),
                           batch_size=8, reading={"worker_count": 0})
