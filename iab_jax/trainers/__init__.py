"""Training loops, one per method family; a method's `trainer` attribute names its loop."""

from __future__ import annotations

import importlib

_FAMILIES = ("supervised", "linear_probe")


def get(name: str):
  if name not in _FAMILIES:
    raise ValueError(f"unknown trainer {name!r}; known: {', '.join(_FAMILIES)}")
  return importlib.import_module(f"iab_jax.trainers.{name}")
