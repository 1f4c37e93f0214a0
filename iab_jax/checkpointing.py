"""Orbax checkpoints of a run: the train state, the input iterator and the loop's position.

One CheckpointManager per run under `<workdir>/checkpoints`. Every save holds four items:
  model: what predicting needs, the parameters and the model state (batch statistics);
  train: the rest of the train state (optimizer state, step), needed to resume training only;
  data:  the grain iterator's state (one file per process), so a resumed run reads the exact
         batches the killed one would have read next;
  meta:  JSON with the loop's position (phase, epoch, steps into the epoch).
Keeping the model apart lets evaluation and attribution restore it alone, without knowing the
optimizer that trained it.
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
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policy

from iab_jax import errors

BEST_METRIC = "val_accuracy"
MODEL_KEYS = ("params", "model_state")  # the train state's keys that go into the "model" item


def _best_metric(metrics) -> float:
  return float(metrics[BEST_METRIC])


def _split(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  model = {k: v for k, v in state.items() if k in MODEL_KEYS}
  return model, {k: v for k, v in state.items() if k not in MODEL_KEYS}


def _abstract(tree: Any) -> Any:
  def spec(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
  return jax.tree.map(spec, tree)


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

  def save(self, step: int, state: dict[str, Any], data_iterator, meta: dict[str, Any],
           metrics: dict[str, float] | None = None) -> None:
    model, train = _split(state)
    items = {"model": ocp.args.StandardSave(model), "train": ocp.args.StandardSave(train),
             "meta": ocp.args.JsonSave(meta)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def meta(self, step: int) -> dict[str, Any]:
    return dict(self.manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"])

  def restore(self, step: int, target_state: dict[str, Any], data_iterator=None
              ) -> dict[str, Any]:
    """The train state saved at `step`, laid out like `target_state` (arrays with shardings, or
    jax.ShapeDtypeStruct); also sets `data_iterator` to where it was, when given."""
    model, train = _split(target_state)
    items = {"model": ocp.args.StandardRestore(_abstract(model)),
             "train": ocp.args.StandardRestore(_abstract(train))}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return {**restored["model"], **restored["train"]}

  def saved_shapes(self, step: int, item: str = "model") -> dict[tuple[str, ...], tuple[int, ...]]:
    """Every array of an item saved at `step`: its tree path and global shape (Orbax's
    metadata, nothing restored); empty when the metadata cannot be read."""
    try:
      metadata = ocp.StandardCheckpointer().metadata(os.path.join(self.directory, str(step), item))
      tree = getattr(metadata, "item_metadata", metadata)
      return {tuple(str(getattr(k, "key", k)) for k in p): tuple(v.shape)
              for p, v in jax.tree_util.tree_leaves_with_path(tree) if hasattr(v, "shape")}
    except Exception:  # noqa: BLE001 - no metadata: Orbax's own restore reports the problem
      return {}

  def check_fits(self, step: int, target: dict[str, Any]) -> None:
    """A one-line UserError when the model saved at `step` is not the model `target` describes
    (a checkpoint of another method, class count or size), before Orbax's long report."""
    saved = self.saved_shapes(step)
    if not saved:
      return
    wanted = {tuple(str(getattr(k, "key", k)) for k in p): tuple(np.shape(v))
              for p, v in jax.tree_util.tree_leaves_with_path(target)}
    for key in sorted(set(saved) | set(wanted)):
      if saved.get(key) != wanted.get(key):
        def show(shape):
          return "absent" if shape is None else str(shape)
        raise errors.UserError(
            f"checkpoint step {step} in {self.directory} does not fit the model the config builds "
            f"(another method, class count or size?): {'/'.join(key)} is "
            f"{show(saved.get(key))} in the checkpoint and {show(wanted.get(key))} in the model")

  def restore_model(self, step: int, target: dict[str, Any]) -> dict[str, Any]:
    """Only the model item (params and model state) saved at `step`, laid out like `target`."""
    self.check_fits(step, target)
    return dict(self.manager.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(_abstract(target))))["model"])

  def restore_variables(self, step: int, init, sharding) -> dict[str, Any]:
    """The model's variables ({"params": ..., **model state}) saved at `step`.

    `init()` gives variables of the right structure (only traced, with jax.eval_shape: nothing is
    computed and no pretrained file is read); they are restored onto `sharding`.
    """
    abstract = jax.eval_shape(init)
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        {"params": abstract["params"],
         "model_state": {k: v for k, v in abstract.items() if k != "params"}})
    model = self.restore_model(step, target)
    return {"params": model["params"], **model["model_state"]}

  def steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def step_for(self, which: str) -> int:
    """The step `which` names: "best" (by validation accuracy; the latest when no save had a
    metric), "last", or a saved step number."""
    from iab_jax import errors

    steps = self.steps()
    if not steps:
      raise errors.UserError(f"{self.directory} holds no checkpoint")
    if which == "best":
      step = self.best_step()
      return step if step is not None else self.latest_step()
    if which == "last":
      return self.latest_step()
    if str(which).isdigit() and int(which) in steps:
      return int(which)
    raise errors.UserError(f"--checkpoint={which!r}; expected best, last or one of the saved "
                           f"steps {sorted(steps)}")

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
