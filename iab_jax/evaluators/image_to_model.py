"""Image-to-model verification (OFA, Fei et al. 2026, section 4): does a query image come from the
same generator as a handful of known images of it?

For every class c of the evaluated set a seeded draw splits its images into a support set S_c
(`support` images) and queries D_c (up to `queries` further images). For a target class t, a
query's score is the mean over S_t of Method.pair_scores(query, support image) (cosine similarity
of Method.embed's embeddings by default; OFA's sigmoid pair head), so higher = more likely made by
t. Then, per level:

  auc_ovo[t][o]: ROC AUC of D_t (positives) against D_o (negatives) scored for target t, for every
    other class o: the paper's one-vs-one protocol (its Tables 1-3); auc_ovo_per_target[t] is
    their mean, auc_ovo_mean / auc_ovo_std the mean and (population) std of those over targets.
  auc_ovr[t]: D_t against all other classes' queries pooled, as the authors' code
    (extract_sim_matrix.py) computes it, with auc_ovr_mean / auc_ovr_std.

Each class's draw is its own (np.random.default_rng([seed, crc32(name)])), so adding a class
leaves the others' sets unchanged; the same sets serve every target and level. A class with fewer
than support + 1 images keeps at least one query: support = n - 1 there, and the sizes used are
reported (support_size, num_queries).

Embeddings come from a jitted, data-parallel pass (the classification evaluator's Runner); a
method that reads no pixels (uses_images False) embeds its cached frozen features.

Config keys: split ("test", or "all": every record of the dataset), classes ("generators": every
class but real present in the split, or a tuple of generator names), support (100), queries
(100, per class), seed (0), levels ((0,)), batch_size, transform; max_examples is ignored (the
sets are the sample).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import zlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from iab_jax import console, features as features_lib, metrics
from iab_jax.data import degradations, generators
from iab_jax.evaluators import classification

ALL = "all"  # the split name meaning every record of the dataset
GENERATORS = "generators"  # classes: every non-real class present
QUERY_CHUNK = 256  # queries scored per call of the pair-score step


def _embed_step(method, variables, inputs):
  return {"embedding": method.embed(variables, inputs).astype(jnp.float32)}


def _mean_pair_scores(method, variables, query, support, valid):
  """(Q,) mean over the valid support rows of method.pair_scores(query, support)."""
  scores = method.pair_scores(variables, query, support).astype(jnp.float32)
  weights = valid.astype(jnp.float32)
  return scores @ weights / jnp.maximum(weights.sum(), 1.0)


def _with_all_split(data):
  """The run's data with an extra split "all" holding every record."""
  manifest = data.manifest
  splits = {**manifest.splits, ALL: np.arange(len(data.dataset), dtype=np.int64)}
  return dataclasses.replace(data, manifest=dataclasses.replace(manifest, splits=splits))


@dataclasses.dataclass(frozen=True)
class Draw:
  """One class's images: the support set and the queries (record positions)."""

  name: str
  num_images: int
  support: np.ndarray
  queries: np.ndarray


def draw(name: str, positions: np.ndarray, *, support: int, queries: int, seed: int) -> Draw:
  """A class's support set and queries, drawn with the seed from its records' positions."""
  n = len(positions)
  if n < 2:
    raise ValueError(f"image_to_model: class {name!r} has {n} image(s); it needs at least 2 (one "
                     "support image and one query)")
  order = np.random.default_rng([seed, zlib.crc32(name.encode())]).permutation(n)
  shuffled = np.sort(np.asarray(positions, np.int64))[order]
  s = min(support, n - 1)
  q = min(queries, n - s)
  return Draw(name, n, shuffled[:s], shuffled[s:s + q])


def auc_tables(scores: np.ndarray, query_class: np.ndarray,
               names: Sequence[str]) -> dict[str, Any]:
  """The AUCs from scores (Q, C): query i scored for target t, query_class (Q,) its class index."""
  ovo, ovo_mean, ovr = {}, {}, {}
  for t, target in enumerate(names):
    positive = query_class == t
    ovo[target] = {}
    for o, other in enumerate(names):
      if o != t:
        pick = positive | (query_class == o)
        ovo[target][other] = metrics.binary_roc_auc(scores[pick, t], positive[pick])
    ovo_mean[target] = float(np.mean(list(ovo[target].values())))
    ovr[target] = metrics.binary_roc_auc(scores[:, t], positive)
  return {
      "auc_ovo": ovo,
      "auc_ovo_per_target": ovo_mean,
      "auc_ovo_mean": float(np.mean(list(ovo_mean.values()))),
      "auc_ovo_std": float(np.std(list(ovo_mean.values()))),
      "auc_ovr": ovr,
      "auc_ovr_mean": float(np.mean(list(ovr.values()))),
      "auc_ovr_std": float(np.std(list(ovr.values()))),
  }


class Evaluator:

  def __init__(self, *, name: str, method, data, mesh, transform: str, batch_size: int,
               split: str = "test", classes: str | Sequence[str] = GENERATORS,
               support: int = 100, queries: int = 100, seed: int = 0,
               levels: Sequence[int] = (0,), reading=None, max_examples: int = 0,
               features=None, memo: dict | None = None):
    del max_examples  # the support and query sets are the sample
    for key, value in (("support", support), ("queries", queries)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key}={value!r}; expected a positive integer")
    self.name, self.method, self.split = name, method, split
    self.support, self.queries, self.seed = support, queries, int(seed)
    self.levels = [degradations.check_level(k) for k in levels]
    if split == ALL and ALL not in data.manifest.splits:
      data = _with_all_split(data)
      if features:  # the cache looks records up by split: give it the "all" split too
        shared = features
        features = features_lib.Provider(
            method, data=data, config={"feature_cache": shared.root, "max_eval_examples": 0},
            mesh=mesh, batch_size=shared.batch_size, reading=shared.reading)
        features.extractors = shared.extractors
    positions = data.positions(split)
    names = data.dataset.column("generator").astype(str)[positions]
    present = generators.class_order(set(names.tolist()))
    if classes == GENERATORS:
      self.classes = [c for c in present if not generators.is_real_name(c)]
    elif isinstance(classes, str):
      raise ValueError(f"classes={classes!r}; expected {GENERATORS!r} or a tuple of names")
    else:
      self.classes = [generators.canonical_name(c) for c in classes]
      missing = [c for c in self.classes if c not in present]
      if missing:
        raise ValueError(f"classes: {', '.join(missing)} not in split {split!r} (it holds "
                         f"{', '.join(present)})")
    if len(self.classes) < 2:
      raise ValueError(f"image_to_model needs at least 2 classes; split {split!r} has "
                       f"{len(self.classes)}: {', '.join(self.classes)}")
    self.draws = [draw(c, positions[names == c], support=support, queries=queries,
                       seed=self.seed) for c in self.classes]
    self.runner = classification.Runner(name=name, method=method, data=data, mesh=mesh,
                                        transform=transform, batch_size=batch_size,
                                        reading=reading, features=features, memo=memo)
    self._pair_step = jax.jit(functools.partial(_mean_pair_scores, method))

  def embeddings(self, variables, level: int) -> dict[int, np.ndarray]:
    """Every drawn image's embedding at `level`, by record position."""
    wanted = np.unique(np.concatenate([np.concatenate([d.support, d.queries])
                                       for d in self.draws]))
    try:
      out = self.runner.outputs(variables, _embed_step, split=self.split, positions=wanted,
                                level=level)
    except NotImplementedError:
      raise ValueError(f"evals.{self.name}: method {self.method.display_name} yields no "
                       "embeddings (Method.embed), so it cannot verify images against models"
                       ) from None
    return dict(zip(out["position"].tolist(), out["embedding"]))

  def query_scores(self, variables, embedding: dict[int, np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(scores (Q, C): every query scored for every target class, query class index (Q,))."""
    queries = np.stack([embedding[p] for d in self.draws for p in d.queries])
    query_class = np.concatenate([np.full(len(d.queries), c) for c, d in enumerate(self.draws)])
    width = max(len(d.support) for d in self.draws)
    pad = -len(queries) % QUERY_CHUNK
    padded = np.concatenate([queries, np.zeros((pad, queries.shape[1]), queries.dtype)])
    scores = np.zeros((len(queries), len(self.draws)), np.float32)
    for t, d in enumerate(self.draws):
      support = np.zeros((width, queries.shape[1]), np.float32)
      support[:len(d.support)] = np.stack([embedding[p] for p in d.support])
      valid = np.arange(width) < len(d.support)
      column = [np.asarray(self._pair_step(variables, padded[i:i + QUERY_CHUNK], support, valid))
                for i in range(0, len(padded), QUERY_CHUNK)]
      scores[:, t] = np.concatenate(column)[:len(queries)]
    return scores, query_class

  def run(self, variables, quiet: bool = False) -> dict[str, Any]:
    results: dict[str, Any] = {
        "split": self.split, "classes": self.classes, "support": self.support,
        "queries": self.queries, "seed": self.seed,
        "num_images": {d.name: d.num_images for d in self.draws},
        "support_size": {d.name: len(d.support) for d in self.draws},
        "num_queries": {d.name: len(d.queries) for d in self.draws},
        "levels": {}}
    for level in self.levels:
      start = time.perf_counter()
      scores, query_class = self.query_scores(variables, self.embeddings(variables, level))
      m = auc_tables(scores, query_class, self.classes)
      results["levels"][str(level)] = {"level": level,
                                       "level_name": degradations.LEVEL_NAMES[level], **m}
      if not quiet:
        console.say("%s level %d (%s): one-vs-one AUC %.4f ± %.4f, one-vs-rest %.4f ± %.4f over "
                    "%d classes in %.1f s", self.name, level, degradations.LEVEL_NAMES[level],
                    m["auc_ovo_mean"], m["auc_ovo_std"], m["auc_ovr_mean"], m["auc_ovr_std"],
                    len(self.classes), time.perf_counter() - start)
    return results
