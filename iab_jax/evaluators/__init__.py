"""Pluggable evaluators: `config.evals[name] = dict(type=..., ...)` -> an Evaluator.

An evaluator is built once per run and its `run(variables)` returns a JSON-able dict of results.
Open-set, image-to-model and detection evaluators are new modules listed here, not edits of the
training loop.
"""

from __future__ import annotations

import importlib
from typing import Any

_REGISTRY = {
    "classification": "iab_jax.evaluators.classification:Evaluator",
    "detection": "iab_jax.evaluators.detection:Evaluator",
    "image_to_model": "iab_jax.evaluators.image_to_model:Evaluator",
    "open_set": "iab_jax.evaluators.open_set:Evaluator",
}


def detection_config() -> dict:
  """The `detection` eval every task config has (configs/common.py), and the one
  `iab_jax.evaluate --evals detection` adds to a run made before it existed: the test split at
  all 7 levels. Here rather than in detection.py, so that a config is built without JAX."""
  from iab_jax.data import degradations

  return {"type": "detection", "split": "test", "levels": tuple(range(degradations.NUM_LEVELS))}


def get(kind: str, key: str = "evals"):
  if kind not in _REGISTRY:
    raise ValueError(f"config.{key}.type={kind!r}; known evaluator types: "
                     f"{', '.join(sorted(_REGISTRY))}")
  module_name, class_name = _REGISTRY[kind].split(":")
  return getattr(importlib.import_module(module_name), class_name)


def provider(method, *, data, config, mesh):
  """The run's access to the method's frozen features (iab_jax.features), or None without any."""
  if not method.frozen_features():
    return None
  from iab_jax import features
  from iab_jax.data import pipeline

  return features.Provider(method, data=data, config=config, mesh=mesh,
                           batch_size=config.input.eval_batch_size,
                           reading=pipeline.reading_options(config.input))


def make(name: str, cfg: dict[str, Any], *, method, data, mesh, config, transform: str,
         features=None, memo: dict | None = None):
  """The evaluator `config.evals[name]` describes (type, split, levels, ...), reading its data
  with the run's input settings; `features` is the run's features.Provider (frozen features);
  `memo` a dict the evaluators of one pass over the same variables share their scores in."""
  from iab_jax.data import pipeline

  cfg = dict(cfg)
  kind = cfg.pop("type", "classification")
  batch_size = cfg.pop("batch_size", config.input.eval_batch_size)
  cfg.setdefault("max_examples", int(config.get("max_eval_examples", 0) or 0))
  if features is None:
    features = provider(method, data=data, config=config, mesh=mesh)
  try:
    return get(kind, f"evals.{name}")(
        name=name, method=method, data=data, mesh=mesh, transform=cfg.pop("transform", transform),
        batch_size=batch_size, reading=pipeline.reading_options(config.input), features=features,
        memo=memo, **cfg)
  except TypeError as e:
    raise ValueError(f"config.evals.{name}: {e}") from None


def run_all(config, *, method, data, mesh, variables, transform: str, writer=None,
            step: int = 0, features=None) -> dict[str, Any]:
  """Every evaluator of `config.evals` on `variables`; their results by name (also written as
  scalars to `writer` at `step`)."""
  from iab_jax.evaluators import classification

  if features is None:
    features = provider(method, data=data, config=config, mesh=mesh)
  results, memo = {}, {}
  # Classification evals first: they are the run's headline, and the others reuse their scores.
  ordered = sorted(config.evals.items(),
                   key=lambda item: item[1].get("type", "classification") != "classification")
  for name, eval_cfg in ordered:
    cfg = eval_cfg.to_dict() if hasattr(eval_cfg, "to_dict") else dict(eval_cfg)
    evaluator = make(name, cfg, method=method, data=data, mesh=mesh, config=config,
                     transform=transform, features=features, memo=memo)
    results[name] = evaluator.run(variables)
    if writer is not None:
      writer.write_scalars(step, classification.scalars(name, results[name]))
  return results
