"""Pluggable evaluators: `config.evals[name] = dict(type=..., ...)` -> an Evaluator.

An evaluator is built once per run and its `run(variables)` returns a JSON-able dict of results.
Open-set, image-to-model and detection evaluators are new modules listed here, not edits of the
training loop.
"""

from __future__ import annotations

import importlib

_REGISTRY = {
    "classification": "iab_jax.evaluators.classification:Evaluator",
}


def get(kind: str, key: str = "evals"):
  if kind not in _REGISTRY:
    raise ValueError(f"config.{key}.type={kind!r}; known evaluator types: "
                     f"{', '.join(sorted(_REGISTRY))}")
  module_name, class_name = _REGISTRY[kind].split(":")
  return getattr(importlib.import_module(module_name), class_name)
