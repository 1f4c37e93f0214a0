"""Models chosen by name: `get("resnet").Model(num_classes=..., **config.model)`.

Every module of this package defines `Model(nn.Module)` with a `num_classes` field and
`__call__(x, *, train) -> (logits, aux)`; configs name the module, so a new model is a new file.
"""

from __future__ import annotations

import importlib
import pkgutil
import types


def names() -> list[str]:
  """The model modules, without importing them (no JAX)."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))



def get(name: str) -> types.ModuleType:
  """Imports and returns iab_jax.models.<name>; an unknown name is a ValueError listing them."""
  known = names()
  # Checked before importing, so that a model module failing its own imports reports that failure
  # rather than being called unknown.
  if name not in known:
    raise ValueError(f"unknown model {name!r}; known model modules: {', '.join(known)}")
  return importlib.import_module(f"{__name__}.{name}")
