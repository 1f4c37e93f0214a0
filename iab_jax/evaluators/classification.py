"""Closed-set attribution accuracy of a method on one split, at benchmark degradation levels.

For each level the split's images are degraded (iab_jax.data.degradations, applied to the
decoded original before the method's eval transform), scored by the method's `predict` in a
jitted, data-parallel step, and gathered on every process; the metrics (iab_jax.metrics) are
top-1 accuracy, macro one-vs-rest AUC and AP, the confusion matrix, and accuracy per generator,
per semantic class and, when the records carry groups (a user's folders ingested with
--group_from), per group. Padding added to fill the last global batch is masked out. A method
with a reject class (Method.reject_class) is scored on its first num_classes columns.

`Runner`, the batching and compiled step, also serves the open-set and image-to-model evaluators.
"""

from __future__ import annotations

import functools
import hashlib
import time
import weakref
from typing import Any, Sequence

import jax
import numpy as np
from iab_jax import console, features as features_lib, metrics, sharding
from iab_jax.data import degradations, generators, pipeline


# Compiled steps per method, then per (step function, mesh, batch shapes): a run's validation and
# test evaluators, and the degradation levels, share one compilation.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


_PASSED = ("label", "semantic", "position", "mask")  # returned with the scores, for the metrics
_INPUTS = ("image", "levels", "features")  # what predict may read


def _step(fn, method, variables, batch):
  """One batch of a Runner: fn's outputs (an array: "scores"; a dict: its entries) and _PASSED."""
  values = fn(method, variables, {k: batch[k] for k in _INPUTS if k in batch})
  out = {k: batch[k] for k in _PASSED}
  out.update(values if isinstance(values, dict) else {"scores": values})
  return out


def _predict_step(method, variables, inputs):
  scores = method.predict(variables, inputs)
  if isinstance(scores, dict):  # several prediction rules: "scores/<rule>"
    return {f"{_RULE}{rule}": v for rule, v in scores.items()}
  return scores


_RULE = "scores/"
_RULE_METRICS = ("accuracy", "auc_macro", "ap_macro")


class Runner:
  """Runs a per-batch function of a method (its predict, its embed) jitted and data-parallel over
  chosen records of a split at one degradation level, and gathers the outputs on every host.

  `fn(method, variables, inputs)` receives what the method may read (`_INPUTS`) and returns an
  array or a dict of arrays per example; the runner adds the records' label, semantic id and
  position and drops the padding of the last global batch. A method that reads no pixels gets its
  cached features (the run's features.Provider) and no images are decoded. Every evaluator of a
  run shares one compilation per (function, batch shapes).

  `memo`: a dict shared by the evaluators of one pass over the same variables (evaluators.run_all
  makes one): outputs of the same function on the same records, level and transform are computed
  once, so the detection eval reads the scores the test eval already made.
  """

  def __init__(self, *, name: str, method, data, mesh, transform: str, batch_size: int,
               reading=None, features=None, memo: dict | None = None):
    self.name, self.method, self.data, self.mesh = name, method, data, mesh
    self.transform, self.batch_size = transform, batch_size
    self.reading = dict(reading or {})  # pipeline.make_dataset's reading keywords
    self.features = features if features else None
    self.memo = memo
    sharding.check_batch_size(batch_size, f"evals.{name}.batch_size")

  def step(self, fn, variables, batch):
    key = (fn, self.mesh, tuple((jax.tree_util.keystr(path), v.shape, v.dtype.name)
                                for path, v in jax.tree_util.tree_leaves_with_path(batch)))
    compiled = _COMPILED.setdefault(self.method, {})
    if key not in compiled:  # ahead of time, so that the log can say so
      repl = sharding.replicated(self.mesh)
      step = jax.jit(functools.partial(_step, fn, self.method),
                     in_shardings=(repl, sharding.batch_sharded(self.mesh)), out_shardings=repl)
      with console.Timer() as t:
        compiled[key] = step.lower(variables, batch).compile()
      what = fn.__name__.strip("_").removesuffix("_step").replace("predict", "prediction")
      console.say("compiled the %s %s step in %.1f s", self.name, what, t.seconds)
    return compiled[key](variables, batch)

  def _feature_batches(self, split: str, positions: np.ndarray, level: int, limit: int):
    """Batches of cached features alone (a method that reads no pixels), in the layout the
    pipeline gives, this process's slice of each global batch."""
    tables = self.features.tables(split, level, limit)
    pad = -len(positions) % self.batch_size
    mask = np.concatenate([np.ones(len(positions), bool), np.zeros(pad, bool)])
    positions = np.concatenate([positions, np.repeat(positions[:1], pad)])
    semantics = pipeline.semantic_ids(self.data.dataset)
    levels = pipeline.family_levels(self.data.dataset)
    count, index = jax.process_count(), jax.process_index()
    for start in range(0, len(positions), self.batch_size):
      where = positions[start:start + self.batch_size][index::count]
      yield {"label": self.data.labels[where].astype(np.int32),
             "semantic": semantics[where], "levels": levels[where], "position": where,
             "mask": mask[start:start + self.batch_size][index::count],
             "features": {k: t.lookup(where) for k, t in tables.items()}}

  def outputs(self, variables, fn, *, split: str, positions: np.ndarray, level: int,
              limit: int = 0) -> dict[str, np.ndarray]:
    """fn's outputs, labels, semantic ids and positions of the records at `positions` (records of
    `split`, in that order) at degradation `level`. `limit`: the max_examples of the split's
    feature tables that hold these records (0: the whole split's)."""
    positions = np.asarray(positions, np.int64)
    if not len(positions):
      raise ValueError(f"evals.{self.name}: no records of split {split!r} to score")
    key = None
    if self.memo is not None:
      key = (fn, self.transform, split, level, limit,
             hashlib.sha256(positions.tobytes()).hexdigest())
      if key in self.memo:
        return dict(self.memo[key])
    parts = []
    if self.features is not None and not self.method.uses_images:
      for batch in self._feature_batches(split, positions, level, limit):
        parts.append(self.step(fn, variables, sharding.global_batch(batch, self.mesh)))
    else:
      ds = pipeline.make_dataset(self.data.dataset, positions, self.data.labels,
                                 self.transform, batch_size=self.batch_size, train=False,
                                 degradation=level, **self.reading)
      it = iter(ds)
      try:
        for batch in it:
          batch = {k: batch[k] for k in ("image", "levels", *_PASSED)}
          if self.features is not None:
            batch = self.features.add(batch, split, level, limit)
          parts.append(self.step(fn, variables, sharding.global_batch(batch, self.mesh)))
      finally:
        pipeline.close(it)
    out = {k: np.concatenate([p[k] for p in sharding.to_host(parts)]) for k in parts[0]}
    keep = out.pop("mask")
    out = {k: v[keep] for k, v in out.items()}
    if key is not None:
      self.memo[key] = out
    return dict(out)


def known_columns(method, scores: np.ndarray) -> np.ndarray:
  """The scores of the run's classes: a method with a reject class (Method.reject_class) returns
  one more column, "none of them", which closed-set metrics do not read."""
  if method.reject_class:
    if scores.shape[-1] != method.num_classes + 1:
      raise ValueError(f"{method.display_name} has a reject class, so predict should return "
                       f"{method.num_classes + 1} columns; it returned {scores.shape[-1]}")
    return scores[..., :method.num_classes]
  return scores


class Evaluator:

  def __init__(self, *, name: str, method, data, mesh, transform: str, batch_size: int,
               split: str = "test", levels: Sequence[int] = (0,), reading=None,
               max_examples: int = 0, features=None, memo: dict | None = None):
    """max_examples: score only that many of the split's records, evenly spread (0: all).
    features: the run's features.Provider when the method reads frozen features."""
    self.name, self.method, self.data, self.mesh = name, method, data, mesh
    self.split, self.transform, self.batch_size = split, transform, batch_size
    self.levels = [degradations.check_level(k) for k in levels]
    self.max_examples = int(max_examples or 0)
    self.positions = features_lib.spread(data.positions(split), self.max_examples)
    self.runner = Runner(name=name, method=method, data=data, mesh=mesh, transform=transform,
                         batch_size=batch_size, reading=reading, features=features,
                         memo=memo)
    groups = data.dataset.column("group").astype(str)
    self.groups = groups if (groups != "").any() else None

  def predictions(self, variables, level: int) -> dict[str, np.ndarray]:
    """Scores, labels, semantic ids and positions of every (unpadded) example at `level`."""
    return self.runner.outputs(variables, _predict_step, split=self.split,
                               positions=self.positions, level=level, limit=self.max_examples)

  def run(self, variables, quiet: bool = False) -> dict[str, Any]:
    results: dict[str, Any] = {"split": self.split, "num_examples": int(len(self.positions)),
                               "levels": {}}
    for level in self.levels:
      start = time.perf_counter()
      p = self.predictions(variables, level)
      known = p["label"] >= 0  # records whose generator is outside the label map are not scored
      semantic_names = np.array([*generators.SEMANTIC_ORDER, "unknown"])[p["semantic"][known]]
      rules = {k[len(_RULE):]: known_columns(self.method, v) for k, v in p.items()
               if k.startswith(_RULE)}
      if not rules:
        p["scores"] = known_columns(self.method, p["scores"])
      if rules:
        p["scores"] = self.method.headline(rules)
      m = metrics.classification_metrics(p["scores"][known], p["label"][known],
                                         classes=self.method.classes, semantics=semantic_names)
      if rules:
        # Every rule's headline metrics; the top level holds the method's prediction_rule.
        m["prediction_rule"] = self.method.prediction_rule
        m["rules"] = {}
        for rule, scores in rules.items():
          r = metrics.classification_metrics(scores[known], p["label"][known],
                                              classes=self.method.classes)
          m["rules"][rule] = {k: r[k] for k in _RULE_METRICS}
      if self.groups is not None:
        correct = np.argmax(p["scores"][known], axis=1) == p["label"][known]
        acc, count = metrics.grouped_accuracy(correct, self.groups[p["position"][known]])
        m["per_group_accuracy"], m["per_group_count"] = acc, count
      results["levels"][str(level)] = {"level": level,
                                       "level_name": degradations.LEVEL_NAMES[level], **m}
      if not quiet:
        console.say("%s/%s level %d (%s): accuracy %.4f%s on %d images in %.1f s", self.name,
                    self.split, level, degradations.LEVEL_NAMES[level], m["accuracy"],
                    "".join(f", {rule} {r['accuracy']:.4f}" for rule, r in m["rules"].items())
                    if rules else "", m["num_examples"], time.perf_counter() - start)
    degraded = [results["levels"].get(str(k), {}).get("accuracy")
                for k in range(1, degradations.NUM_LEVELS)]
    results["mean_degraded_accuracy"] = (None if any(a is None for a in degraded)
                                         else float(np.mean(degraded)))
    return results


# The headline numbers of each evaluator type's levels: classification, open-set (open_set.py),
# image-to-model (image_to_model.py), detection (detection.py: means over the generators).
_SCALARS = ("accuracy", "auc_macro", "ap_macro", "closed_set_accuracy", "auroc", "oscr",
            "auc_ovo_mean", "auc_ovr_mean", "ap", "f1")


def scalars(name: str, results: dict[str, Any]) -> dict[str, float]:
  """The headline numbers of `run`'s results as flat scalars for the metric writers."""
  out = {}
  for level, m in results.get("levels", {}).items():
    for key in _SCALARS:
      if m.get(key) is not None:
        out[f"{name}/level{level}/{key}"] = float(m[key])
  if results.get("mean_degraded_accuracy") is not None:
    out[f"{name}/mean_degraded_accuracy"] = results["mean_degraded_accuracy"]
  return out
