"""Shared plumbing for loading converted public checkpoints into Flax variables.

A model module converts a checkpoint's state dict (numpy arrays under the reference library's
key names) into a Flax variables tree; these helpers do the rest the same way for every model:
read safetensors with numpy (never a pickle, never torch), explain a missing file, compare the
converted tree with the model's, keep a differently sized head freshly initialised, and place each
array on its target's sharding.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util


def read_safetensors(path: str | os.PathLike, expected: str) -> dict[str, np.ndarray]:
  """The tensors of a safetensors file as numpy arrays.

  expected: what the file must be and where to get it, for the error a missing file raises.
  """
  from safetensors.numpy import load_file  # only loading weights needs safetensors

  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"pretrained weights not found: {path!r}. It must be {expected}.")
  return load_file(path)


def conv_kernel(w: np.ndarray) -> np.ndarray:
  """torch Conv2d weight (out, in/groups, kh, kw) -> Flax Conv kernel (kh, kw, in/groups, out)."""
  if w.ndim != 4:
    raise ValueError(f"a conv weight has 4 dimensions, got shape {w.shape}")
  return np.transpose(w, (2, 3, 1, 0))


def dense_kernel(w: np.ndarray) -> np.ndarray:
  """torch Linear weight (out, in) -> Flax Dense kernel (in, out)."""
  if w.ndim != 2:
    raise ValueError(f"a linear weight has 2 dimensions, got shape {w.shape}")
  return np.transpose(w)


def format_keys(keys: Iterable[str], limit: int = 20) -> str:
  keys = sorted(keys)
  if not keys:
    return "(none)"
  shown = ", ".join(keys[:limit])
  return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_keys(state: Mapping[str, Any], expected: Iterable[str], what: str,
                     ignore_suffixes: tuple[str, ...] = ("num_batches_tracked",)) -> None:
  """Raises ValueError naming the missing and unexpected keys of a reference state dict."""
  present = {k for k in state if not k.endswith(ignore_suffixes)}
  expected = set(expected)
  missing, unexpected = expected - present, present - expected
  if missing or unexpected:
    raise ValueError(f"{what}: missing keys {format_keys(missing)}; unexpected keys "
                     f"{format_keys(unexpected)}")


def merge(variables: dict[str, Any], converted: dict[str, Any], *, path: str = "",
          head: str | None = None, collections: tuple[str, ...] | None = None,
          source_name: Callable[[tuple[str, ...]], str] | None = None) -> dict[str, Any]:
  """`variables` with every converted array copied in.

  `variables` is the model's own tree (arrays, or jax.ShapeDtypeStructs from jax.eval_shape).
  The params named `head` (a top-level module name) are kept as initialised when the file has no
  head or one of another shape, e.g. an attribution head over the benchmark's classes instead of ImageNet's
  1000. Any other key or shape difference is an error naming it. Arrays go to their target's
  sharding when it has one. `source_name` maps a Flax key to the checkpoint's own key name,
  for errors.
  """
  collections = collections or tuple(converted)
  target = traverse_util.flatten_dict({k: variables[k] for k in collections})
  source = traverse_util.flatten_dict({k: converted[k] for k in collections})
  where = f"{path}: " if path else ""

  def is_head(key):
    return head is not None and key[:2] == ("params", head)

  # A backbone file without the head (or with another one) leaves the model's head as initialised.
  only_source = source.keys() - target.keys()
  only_target = {k for k in target.keys() - source.keys() if not is_head(k)}
  if only_source or only_target:
    raise ValueError(f"{where}the file and the model disagree: only in the file "
                     f"{format_keys('/'.join(k) for k in only_source)}; only in the model "
                     f"{format_keys('/'.join(k) for k in only_target)}")

  mismatched = [k for k in source
                if tuple(source[k].shape) != tuple(target[k].shape) and not is_head(k)]
  if mismatched:
    k = mismatched[0]
    name = f"{source_name(k)} -> {'/'.join(k)}" if source_name else "/".join(k)
    raise ValueError(f"{where}shape mismatch for {name}: file {tuple(source[k].shape)} "
                     f"(in Flax layout), model {tuple(target[k].shape)}"
                     + (f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""))
  head_fits = all(tuple(source[k].shape) == tuple(target[k].shape) for k in source if is_head(k))

  out = dict(target)
  for key, value in source.items():
    if is_head(key) and not head_fits:
      continue
    leaf = target[key]
    value = np.asarray(value).astype(leaf.dtype)
    sharding = getattr(leaf, "sharding", None)
    out[key] = jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value)
  result = dict(variables)
  result.update(traverse_util.unflatten_dict(out))
  return result
