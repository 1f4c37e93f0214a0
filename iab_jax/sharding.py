"""Device mesh and shardings for data-parallel training, on one device or a pod slice.

The mesh has one axis, "data", over every device of every process. Parameters and optimizer
state are replicated; a batch is split along its first dimension. Each process feeds only its
own slice of the global batch (grain shards the input by process), and
`jax.make_array_from_process_local_data` stitches the slices into one global array, so the same
jitted step runs unchanged on 1 CPU, 8 GPUs or many TPU hosts. Under jit, batch norm over such a
sharded batch sees global statistics without any explicit collective.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh() -> Mesh:
  # Auto axes: the compiler propagates the batch sharding through every op (a model may mix
  # replicated parameters with batch-sharded activations freely, e.g. broadcasting a ViT's class
  # token to the batch), where Explicit axes, jax.make_mesh's default since 0.7, would reject that.
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), devices=jax.devices(),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, key: str) -> None:
  """A global batch must split evenly over devices (and so over processes)."""
  devices = jax.device_count()
  if batch_size % devices:
    raise ValueError(f"config.{key}={batch_size} must be a multiple of the {devices} devices "
                     f"({jax.process_count()} processes x {jax.local_device_count()} local)")


def global_batch(local: dict[str, Any], mesh: Mesh) -> dict[str, Any]:
  """This process's slice of a batch (a dict, possibly nested: batch["features"][name]) ->
  global arrays sharded along the data axis."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda v: jax.make_array_from_process_local_data(sharding, np.asarray(v)),
                      local)


def to_host(tree: Any) -> Any:
  """Replicated device arrays -> numpy on every process (also where not fully addressable)."""
  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(fetch, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Host values identical on every process -> replicated global arrays (multi-host safe)."""
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)
