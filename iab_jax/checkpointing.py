"""Orbax checkpoints of a run: the train state, the input iterator and the loop's position.

One CheckpointManager per run under `<workdir>/checkpoints`. Every save holds three items:
  state: the train-state pytree (params, model state, optimizer state, step);
  data:  the grain iterator's state (one file per process), so a resumed run reads the exact
         batches the killed one would have read next;
  meta:  JSON with the loop's position (phase, epoch, steps into the epoch).
The manager keeps the latest checkpoint (to resume) and the best one by validation accuracy (to
test). Orbax's `max_to_keep` with `best_fn` would let a better old step push out the latest one, so
both are kept by an explicit preservation policy instead. Saves are asynchronous; a checkpoint
becomes visible only once complete, so a kill mid-save leaves the previous one intact.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policy

BEST_METRIC = "val_accuracy"


def _best_metric(metrics) -> float:
  return float(metrics[BEST_METRIC])


class Checkpoints:

  def __init__(self, directory: str, *, asynchronous: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        best_fn=_best_metric,
        best_mode="max",
        keep_checkpoints_without_metrics=False,
        preservation_policy=policy.AnyPreservationPolicy([
            policy.LatestN(n=1),
            policy.BestN(get_metric_fn=_best_metric, reverse=False, n=1,
                         keep_checkpoints_without_metrics=False),
        ]),
        enable_async_checkpointing=asynchronous,
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def save(self, step: int, state: Any, data_iterator, meta: dict[str, Any],
           metrics: dict[str, float] | None = None) -> None:
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def meta(self, step: int) -> dict[str, Any]:
    return dict(self.manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"])

  def restore(self, step: int, target_state: Any, data_iterator=None) -> Any:
    """The state saved at `step`, laid out like `target_state` (arrays with shardings, or
    jax.ShapeDtypeStruct); also sets `data_iterator` to where it was, when given."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target_state)
    items = {"state": ocp.args.StandardRestore(abstract)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
