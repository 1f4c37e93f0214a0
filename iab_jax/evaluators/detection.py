"""Detection: tell real images from generated ones, generator by generator (the protocol of the
ACM paper, He et al., and of CNNDetection and UnivFD before it: its Tables 1-3).

Every attributor is also a detector: an image's score of being generated is p_fake = 1 - P(real),
P(real) the column of the run's class "real" in the method's headline scores. A method with a
reject class returns one more column; it counts as fake, which is what "none of the known
classes, real included" means. Runs of the `detection:<generator>` task (classes real and fake)
are scored the same way, so attributors and detectors share one table.

Every record of the split is scored, whatever its label under the run's classes: a generator the
run never saw (label -1) is still generated. The ground truth is the record's generator name
(real iff the registry calls it real, or the name is "real"). Per degradation level:

  per_generator[g]: iab_jax.metrics.detection_metrics over the real images and those of g,
  mean: each metric averaged over the generators (the tables' avg column), also at the level's
    top as ap, accuracy, f1, real_accuracy, fake_accuracy (the headline numbers),
  pooled: detection_metrics over all images at once,
  trained_on: the generators the run trained on (a detection run's manifest options
    "generators"; else the run's classes but real), for the seen/unseen split of Table 3,
  num_real, num_fake.

A run without a class "real" (a user's folders of generators only) cannot be read as a detector:
run() then returns {"skipped": reason} rather than failing the end of a training run, and so it
does when the split holds no real or no generated image.

Config keys: split ("test"), levels ((0,)), threshold (0.5: predicted fake iff p_fake > it),
max_examples (evenly spread; 0 = all), batch_size, transform.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from iab_jax import console, features as features_lib, metrics
from iab_jax.data import degradations, generators
from iab_jax.evaluators import classification

METRICS = ("ap", "accuracy", "f1", "real_accuracy", "fake_accuracy")  # averaged over generators


real_column = generators.real_class_index  # the column of P(real) (None: no real class)


def real_mask(generator_names: np.ndarray) -> np.ndarray:
  """Whether each record's generator name means real images (generators.is_real_name)."""
  names, inverse = np.unique(np.asarray(generator_names).astype(str), return_inverse=True)
  return np.array([generators.is_real_name(n) for n in names], bool)[inverse.reshape(-1)]


def trained_on(data) -> list[str]:
  """The generators a run trained on: a detection run's manifest lists them, an attributor's
  classes are them (but real)."""
  manifest = data.manifest
  if manifest.protocol == "detection":
    return list(manifest.options.get("generators") or [])
  return [c for c in data.classes if not generators.is_real_name(c)]


def level_metrics(p_fake: np.ndarray, generator_names: np.ndarray, seen: Sequence[str],
                  threshold: float = 0.5) -> dict[str, Any]:
  """One level's numbers from scores of being generated and the images' generator names."""
  p_fake = np.asarray(p_fake, np.float64)
  names = np.asarray(generator_names).astype(str)
  is_fake = ~real_mask(names)
  fakes = generators.class_order(set(names[is_fake].tolist()))
  if not fakes or is_fake.all():
    raise ValueError(f"detection metrics need real and generated images; got "
                     f"{int((~is_fake).sum())} real and {int(is_fake.sum())} generated")
  per_generator = {g: metrics.detection_metrics(p_fake[~is_fake | (names == g)],
                                                is_fake[~is_fake | (names == g)], threshold)
                   for g in fakes}
  mean = {k: float(np.mean([m[k] for m in per_generator.values()])) for k in METRICS}
  return {
      **mean,
      "mean": mean,
      "per_generator": per_generator,
      "pooled": metrics.detection_metrics(p_fake, is_fake, threshold),
      "trained_on": list(seen),
      "num_real": int((~is_fake).sum()),
      "num_fake": int(is_fake.sum()),
  }


class Evaluator:

  def __init__(self, *, name: str, method, data, mesh, transform: str, batch_size: int,
               split: str = "test", levels: Sequence[int] = (0,), threshold: float = 0.5,
               reading=None, max_examples: int = 0, features=None, memo: dict | None = None):
    self.name, self.method, self.data, self.split = name, method, data, split
    self.levels = [degradations.check_level(k) for k in levels]
    self.threshold = float(threshold)
    self.max_examples = int(max_examples or 0)
    # The positions, limit and step the classification eval of the split uses, so that a shared
    # memo hands this eval the scores that one already made.
    self.positions = features_lib.spread(data.positions(split), self.max_examples)
    self.runner = classification.Runner(name=name, method=method, data=data, mesh=mesh,
                                        transform=transform, batch_size=batch_size,
                                        reading=reading, features=features, memo=memo)
    self.generator = data.dataset.column("generator").astype(str)
    self.real = real_column(method.classes)
    self.trained_on = trained_on(data)

  def p_fake(self, variables, level: int) -> dict[str, np.ndarray]:
    """1 - P(real) of the headline scores, and the positions, of the split's scored records."""
    p = self.runner.outputs(variables, classification._predict_step, split=self.split,
                            positions=self.positions, level=level, limit=self.max_examples)
    rules = {k[len(classification._RULE):]: v for k, v in p.items()
             if k.startswith(classification._RULE)}
    scores = np.asarray(self.method.headline(rules) if rules else p["scores"], np.float64)
    return {"p_fake": 1.0 - scores[:, self.real], "position": p["position"]}

  def skip_reason(self) -> str | None:
    if self.real is None:
      return (f"the run's classes ({', '.join(self.method.classes)}) have no class of real "
              "images, so 1 - P(real) is not defined")
    num_real, num = int(real_mask(self.generator[self.positions]).sum()), len(self.positions)
    if not num_real or num_real == num:
      return (f"split {self.split!r} holds {num_real} real and {num - num_real} "
              "generated images; detection needs both")
    return None

  def run(self, variables, quiet: bool = False) -> dict[str, Any]:
    reason = self.skip_reason()
    if reason is not None:
      console.say("%s: skipped: %s", self.name, reason)
      return {"skipped": reason}
    results: dict[str, Any] = {
        "split": self.split, "num_examples": int(len(self.positions)),
        "threshold": self.threshold, "real_class": self.method.classes[self.real],
        "trained_on": self.trained_on, "levels": {}}
    for level in self.levels:
      start = time.perf_counter()
      p = self.p_fake(variables, level)
      m = level_metrics(p["p_fake"], self.generator[p["position"]], self.trained_on,
                        self.threshold)
      results["levels"][str(level)] = {"level": level,
                                       "level_name": degradations.LEVEL_NAMES[level], **m}
      if not quiet:
        console.say("%s/%s level %d (%s): mean over %d generators AP %.4f, accuracy %.4f, F1 "
                    "%.4f (real %.4f, fake %.4f); pooled AP %.4f on %d real and %d generated "
                    "images in %.1f s", self.name, self.split, level,
                    degradations.LEVEL_NAMES[level], len(m["per_generator"]), m["ap"],
                    m["accuracy"], m["f1"], m["real_accuracy"], m["fake_accuracy"],
                    m["pooled"]["ap"], m["num_real"], m["num_fake"],
                    time.perf_counter() - start)
    for key in ("ap", "accuracy"):
      degraded = [results["levels"].get(str(k), {}).get(key)
                  for k in range(1, degradations.NUM_LEVELS)]
      results[f"mean_degraded_{key}"] = (None if any(v is None for v in degraded)
                                         else float(np.mean(degraded)))
    return results
