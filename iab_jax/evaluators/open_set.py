"""Open-set attribution: tell images of the known generators apart, and from unseen generators.

The open-set task (tasks "openset<k>") trains on the known classes of fold k; its manifest's
`test` split holds known-class images and `test_unknown` the images of the fold's generators,
whose label under the run's classes is -1. Both are scored by the method's `predict` (the
classification evaluator's Runner: same batching, same compiled step), then, per degradation
level:

  closed-set prediction = argmax over the first T columns (T = the run's classes; a method with a
    reject class, Method.reject_class, returns one more column, which is not read here),
  confidence of being known = the largest of the first T columns of the headline scores,
  closed_set_accuracy over the known images, auroc of known (positive) against unknown images by
  that confidence, oscr (Dhamija et al. 2018, iab_jax.metrics.oscr), and the AUROC of the known
  images against each unknown generator alone.

Known = label >= 0, unknown = label -1, over the records of both splits, so the evaluator also
serves a run tested on other data whose test split holds generators outside its classes
(`unknown_split=""`).

Config keys: split ("test"), unknown_split ("test_unknown"; "" for none), levels ((0,)),
max_examples (per split, evenly spread; 0 = all), batch_size, transform.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from iab_jax import console, features as features_lib, metrics
from iab_jax.data import degradations
from iab_jax.evaluators import classification


class Evaluator:

  def __init__(self, *, name: str, method, data, mesh, transform: str, batch_size: int,
               split: str = "test", unknown_split: str = "test_unknown",
               levels: Sequence[int] = (0,), reading=None, max_examples: int = 0,
               features=None, memo: dict | None = None):
    self.name, self.method, self.data = name, method, data
    self.levels = [degradations.check_level(k) for k in levels]
    self.max_examples = int(max_examples or 0)
    self.splits = [split] + ([unknown_split] if unknown_split else [])
    if len(set(self.splits)) != len(self.splits):
      raise ValueError(f"split and unknown_split are both {split!r}")
    self.positions = {s: features_lib.spread(data.positions(s), self.max_examples)
                      for s in self.splits}
    self.runner = classification.Runner(name=name, method=method, data=data, mesh=mesh,
                                        transform=transform, batch_size=batch_size,
                                        reading=reading, features=features,
                                        memo=memo)
    self.generator = data.dataset.column("generator").astype(str)

  def scores(self, variables, level: int) -> dict[str, np.ndarray]:
    """Headline scores (N, T or T+1), labels and positions of the records of both splits."""
    parts = []
    for split in self.splits:
      p = self.runner.outputs(variables, classification._predict_step, split=split,
                              positions=self.positions[split], level=level,
                              limit=self.max_examples)
      rules = {k[len(classification._RULE):]: v for k, v in p.items()
               if k.startswith(classification._RULE)}
      scores = self.method.headline(rules) if rules else p["scores"]
      parts.append({"scores": scores, "label": p["label"], "position": p["position"]})
    return {k: np.concatenate([q[k] for q in parts]) for k in parts[0]}

  def level_metrics(self, scores: np.ndarray, labels: np.ndarray,
                    generator_names: np.ndarray) -> dict[str, Any]:
    """The level's numbers from headline scores, labels (-1 unknown) and generator names."""
    known_scores = classification.known_columns(self.method, np.asarray(scores))
    is_known = labels >= 0
    confidence = known_scores.max(axis=1)
    correct = is_known & (np.argmax(known_scores, axis=1) == labels)
    num_known, num_unknown = int(is_known.sum()), int((~is_known).sum())
    if not num_known or not num_unknown:
      raise ValueError(f"evals.{self.name}: open-set metrics need known and unknown images; "
                       f"splits {', '.join(self.splits)} hold {num_known} known and "
                       f"{num_unknown} unknown (label -1) images")
    per_generator = {}
    for gen in sorted(set(generator_names[~is_known].tolist())):
      pick = is_known | (generator_names == gen)
      per_generator[gen] = {
          "auroc": metrics.open_set_auroc(confidence[pick], is_known[pick]),
          "num_images": int((~is_known[pick]).sum())}
    return {
        "closed_set_accuracy": float(correct.sum() / num_known),
        "auroc": metrics.open_set_auroc(confidence, is_known),
        "oscr": metrics.oscr(confidence, correct, is_known),
        "num_known": num_known,
        "num_unknown": num_unknown,
        "per_unknown_generator": per_generator,
    }

  def run(self, variables, quiet: bool = False) -> dict[str, Any]:
    results: dict[str, Any] = {
        "split": self.splits[0], "unknown_split": self.splits[1] if len(self.splits) > 1 else "",
        "num_examples": int(sum(len(p) for p in self.positions.values())), "levels": {}}
    for level in self.levels:
      start = time.perf_counter()
      p = self.scores(variables, level)
      m = self.level_metrics(p["scores"], p["label"], self.generator[p["position"]])
      results["levels"][str(level)] = {"level": level,
                                       "level_name": degradations.LEVEL_NAMES[level], **m}
      if not quiet:
        console.say("%s level %d (%s): closed-set accuracy %.4f, AUROC %.4f, OSCR %.4f on %d "
                    "known and %d unknown images in %.1f s", self.name, level,
                    degradations.LEVEL_NAMES[level], m["closed_set_accuracy"], m["auroc"],
                    m["oscr"], m["num_known"], m["num_unknown"], time.perf_counter() - start)
    return results
