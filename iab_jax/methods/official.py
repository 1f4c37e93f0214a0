"""The official benchmark's checkpoint layouts, shared by the methods' `import_official` and by
data_prep.import_official.

A layout file (data_prep/official_layouts/<method>_state_dict.txt, from building each official
attributor with random weights, METHODS.md §5) lists `key: [d0, d1, ...]`, one line per tensor.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

LAYOUTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "data_prep", "official_layouts")


def read_layout(name: str) -> dict[str, tuple[int, ...]]:
  """key -> shape of an official state dict, from a layout file name (or path)."""
  path = name if os.path.isabs(name) else os.path.join(LAYOUTS_DIR, name)
  layout = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        key, _, shape = line.rpartition(":")
        layout[key.strip()] = tuple(int(d) for d in shape.strip(" []\n").split(",") if d.strip())
  return layout


def check_state(state: Mapping[str, np.ndarray], layout: Mapping[str, tuple[int, ...]],
                what: str) -> None:
  """Raises a one-line ValueError naming the first missing, extra or mis-shaped key of `state`."""
  # BatchNorm's step counters change no number; a file with or without them is fine.
  present = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
  layout = {k: v for k, v in layout.items() if not k.endswith("num_batches_tracked")}
  missing = sorted(layout.keys() - present.keys())
  extra = sorted(present.keys() - layout.keys())
  if missing:
    raise ValueError(f"{what}: key {missing[0]!r} of the official layout is missing "
                     f"({len(missing)} missing in all)")
  if extra:
    raise ValueError(f"{what}: unexpected key {extra[0]!r} ({len(extra)} unexpected in all)")
  for key in sorted(layout):
    if tuple(np.shape(present[key])) != tuple(layout[key]):
      raise ValueError(f"{what}: key {key!r} has shape {tuple(np.shape(present[key]))}, the "
                       f"official layout has {tuple(layout[key])}")
