"""Closed-set attribution accuracy of a method on one split, at benchmark degradation levels.

For each level the split's images are degraded (iab_jax.data.degradations, applied to the
decoded original before the method's eval transform), scored by the method's `predict` in a
jitted, data-parallel step, and gathered on every process; the metrics (iab_jax.metrics) are
top-1 accuracy, macro one-vs-rest AUC and AP, the confusion matrix, and accuracy per generator
and per semantic class. Padding added to fill the last global batch is masked out.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import numpy as np
from absl import logging

from iab_jax import metrics, sharding
from iab_jax.data import degradations, generators, pipeline


class Evaluator:

  def __init__(self, *, name: str, method, data, mesh, transform: str, batch_size: int,
               split: str = "test", levels: Sequence[int] = (0,), cache: str | None = "auto",
               worker_count: int = 0):
    self.name, self.method, self.data, self.mesh = name, method, data, mesh
    self.split, self.transform, self.batch_size = split, transform, batch_size
    self.levels = [degradations.check_level(k) for k in levels]
    self.cache, self.worker_count = cache, worker_count
    self.positions = data.positions(split)
    sharding.check_batch_size(batch_size, f"evals.{name}.batch_size")
    repl = sharding.replicated(mesh)
    self._predict = jax.jit(self._predict_step, in_shardings=(repl, sharding.batch_sharded(mesh)),
                            out_shardings=repl)

  def _predict_step(self, variables, batch):
    scores = self.method.predict(variables, batch["image"])
    return {"scores": scores, "label": batch["label"], "semantic": batch["semantic"],
            "mask": batch["mask"]}

  def predictions(self, variables, level: int) -> dict[str, np.ndarray]:
    """Scores, labels and semantic ids of every (unpadded) example of the split at `level`."""
    ds = pipeline.make_dataset(self.data.dataset, self.positions, self.data.labels, self.transform,
                               batch_size=self.batch_size, train=False, degradation=level,
                               cache=self.cache, worker_count=self.worker_count)
    parts = []
    for batch in ds:
      batch = {k: batch[k] for k in ("image", "label", "semantic", "mask")}
      parts.append(self._predict(variables, sharding.global_batch(batch, self.mesh)))
    out = {k: np.concatenate([p[k] for p in sharding.to_host(parts)]) for k in parts[0]}
    keep = out.pop("mask")
    return {k: v[keep] for k, v in out.items()}

  def run(self, variables) -> dict[str, Any]:
    results: dict[str, Any] = {"split": self.split, "num_examples": int(len(self.positions)),
                               "levels": {}}
    for level in self.levels:
      start = time.perf_counter()
      p = self.predictions(variables, level)
      known = p["label"] >= 0  # records whose generator is outside the label map are not scored
      semantic_names = np.array([*generators.SEMANTIC_ORDER, "unknown"])[p["semantic"][known]]
      m = metrics.classification_metrics(p["scores"][known], p["label"][known],
                                         classes=self.method.classes, semantics=semantic_names)
      results["levels"][str(level)] = {"level": level,
                                       "level_name": degradations.LEVEL_NAMES[level], **m}
      logging.info("eval %s/%s level %d (%s): accuracy %.4f on %d images in %.1f s", self.name,
                   self.split, level, degradations.LEVEL_NAMES[level], m["accuracy"],
                   m["num_examples"], time.perf_counter() - start)
    degraded = [results["levels"].get(str(k), {}).get("accuracy")
                for k in range(1, degradations.NUM_LEVELS)]
    results["mean_degraded_accuracy"] = (None if any(a is None for a in degraded)
                                         else float(np.mean(degraded)))
    return results


def scalars(name: str, results: dict[str, Any]) -> dict[str, float]:
  """The headline numbers of `run`'s results as flat scalars for the metric writers."""
  out = {}
  for level, m in results["levels"].items():
    for key in ("accuracy", "auc_macro", "ap_macro"):
      if m.get(key) is not None:
        out[f"{name}/level{level}/{key}"] = float(m[key])
  if results.get("mean_degraded_accuracy") is not None:
    out[f"{name}/mean_degraded_accuracy"] = results["mean_degraded_accuracy"]
  return out
