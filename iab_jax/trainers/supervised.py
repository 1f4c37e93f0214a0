"""The supervised training loop: any method whose recipe is "minimise a loss over labelled batches".

One function, `train_and_evaluate(config, workdir)`, top to bottom:
  task and data -> mesh -> method and its variables -> evaluators -> checkpoint resume ->
  phases x epochs x steps (jitted, data-parallel) with validation and a checkpoint each epoch ->
  the best checkpoint evaluated on the test split at every degradation level -> results.json.

A killed run started again with the same command resumes from its latest checkpoint: the state,
the input iterator and the loop position are restored, and every step's randomness is folded
from the step number, so the resumed run ends exactly where the uninterrupted one would.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from iab_jax import checkpointing, evaluators, methods, optimizers, sharding, tasks, writers
from iab_jax.data import pipeline, records, transforms
from iab_jax.evaluators import classification

RESULTS_JSON = "results.json"
RESULTS_FORMAT = "iab_jax.results"


def _example_image(data: tasks.TaskData, transform: str) -> np.ndarray:
  """One transformed training image: its shape and dtype are what the model will see."""
  position = int(data.positions("train")[0])
  image = records.decode(data.dataset.raw(position))
  return transforms.parse(transform)(image, np.random.default_rng(0))


def _split_variables(variables: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
  return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def _variables(state: dict[str, Any]) -> dict[str, Any]:
  return {"params": state["params"], **state["model_state"]}


def _mean_measurements(pending: list[dict[str, jax.Array]]) -> dict[str, float]:
  """The mean of each measurement over the steps since the last log (one host transfer)."""
  values = sharding.to_host(pending)
  return {f"train/{k}": float(np.mean([v[k] for v in values])) for k in values[0]}


def _make_evaluator(name: str, cfg: dict[str, Any], *, method, data, mesh, config, transform):
  cfg = dict(cfg)
  kind = cfg.pop("type", "classification")
  batch_size = cfg.pop("batch_size", config.input.eval_batch_size)
  try:
    return evaluators.get(kind, f"evals.{name}")(
        name=name, method=method, data=data, mesh=mesh, transform=cfg.pop("transform", transform),
        batch_size=batch_size, cache=config.input.cache or None,
        worker_count=config.input.worker_count, **cfg)
  except TypeError as e:
    raise ValueError(f"config.evals.{name}: {e}") from None


# Settings a resumed run may change: they do not alter what is trained or how.
RESUME_MAY_CHANGE = ("evals", "log_every_steps", "checkpoint_every_steps", "distributed",
                     "input.worker_count", "input.cache", "input.eval_batch_size",
                     "input.prepare")


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def check_resumable(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir whose checkpoints were trained under another config.

  Restoring them would fail deep inside Orbax (another model) or, worse, silently continue a
  different recipe (another learning rate); the error names each differing key instead.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path) or not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return
  with open(path) as f:
    old = _flat(json.load(f))
  new = _flat(json.loads(config.to_json_best_effort()))
  differ = sorted(k for k in set(old) | set(new)
                  if old.get(k) != new.get(k)
                  and not any(k == p or k.startswith(p + ".") for p in RESUME_MAY_CHANGE))
  if differ:
    details = "; ".join(f"config.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ[:5])
    raise ValueError(f"config.* differs from the run in {workdir!r}, which this command would "
                     f"resume: {details}. Use a new --workdir, or the run's own config.")


def make_train_step(method, tx: optax.GradientTransformation, phase, mesh):
  """The jitted step `(state, batch, key_data) -> (state, measurements)` of one phase.

  The state is donated (updated in place on the device), replicated over the mesh; the batch is
  sharded along its first axis. The step's randomness is the run's key folded with the step
  number, so it does not depend on how the run was interrupted.
  """
  repl = sharding.replicated(mesh)

  def train_step(state, batch, key_data):
    rng = jax.random.fold_in(jax.random.wrap_key_data(key_data), state["step"])

    def loss_fn(params):
      return method.loss({"params": params, **state["model_state"]}, batch, rng, phase)

    (loss, (model_state, measured)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {"params": optax.apply_updates(state["params"], updates),
                 "model_state": {**state["model_state"], **model_state},
                 "opt_state": opt_state, "step": state["step"] + 1}
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **measured}

  return jax.jit(train_step, donate_argnums=0,
                 in_shardings=(repl, sharding.batch_sharded(mesh), repl),
                 out_shardings=(repl, repl))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config.method` on `config.task`, tests its best checkpoint; returns the results."""
  start_time = time.time()
  os.makedirs(workdir, exist_ok=True)
  task = tasks.parse_task(config.task)
  check_resumable(config, workdir)

  # ---------------------------------------------------------------- data, mesh, method
  data = tasks.load(config.input, task)
  mesh = sharding.make_mesh()
  method = methods.get(config.method)(config, data.classes)
  train_transform, eval_transform = method.transforms()
  batch_size = config.input.batch_size
  sharding.check_batch_size(batch_size, "input.batch_size")
  train_positions = data.positions("train")
  steps_per_epoch = pipeline.steps_per_epoch(len(train_positions), batch_size, train=True)
  if steps_per_epoch == 0:
    raise ValueError(f"config.input.batch_size={batch_size} is larger than the training split "
                     f"({len(train_positions)} images)")
  phases = method.phases()
  total_steps = sum(p.num_epochs for p in phases) * steps_per_epoch
  writer = writers.create(workdir)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=1, sort_keys=True))
  writer.write_hparams({k: v if isinstance(v, (int, float, str, bool)) else str(v)
                        for k, v in _flat(json.loads(config.to_json_best_effort())).items()})
  logging.info("%s on %s: %d classes, %d train images, %d devices in %d processes, %d steps",
               method.display_name, task.name, method.num_classes, len(train_positions),
               jax.device_count(), jax.process_count(), total_steps)

  # ---------------------------------------------------------------- variables
  rng = jax.random.key(config.seed)
  init_rng, train_rng = jax.random.split(rng)
  example = _example_image(data, train_transform)
  variables = method.init(init_rng, jnp.asarray(example[None]))
  params, model_state = _split_variables(sharding.replicate(variables, mesh))
  # Passed to the step as raw key data: a host value every process holds, replicated.
  train_key = sharding.replicate(jax.random.key_data(train_rng), mesh)
  repl = sharding.replicated(mesh)

  # ---------------------------------------------------------------- evaluators
  val_evaluator = _make_evaluator("val", dict(split="val", levels=[0]), method=method, data=data,
                                  mesh=mesh, config=config, transform=eval_transform)

  # ---------------------------------------------------------------- checkpoints
  ckpt = checkpointing.Checkpoints(os.path.join(workdir, "checkpoints"))
  position = {"phase": 0, "epoch": 0, "step_in_epoch": 0}
  latest = ckpt.latest_step()
  if latest is not None:
    position = ckpt.meta(latest)
    logging.info("resuming from step %d: phase %d, epoch %d, step %d of the epoch", latest,
                 position["phase"], position["epoch"], position["step_in_epoch"])

  def make_state(phase_index: int, params, model_state, step: int):
    phase = phases[phase_index]
    tx = optimizers.make(phase.optimizer, steps_per_epoch, phase.num_epochs * steps_per_epoch,
                         key="optimizer" if len(phases) == 1 else f"phases.{phase.name}.optimizer")
    opt_state = jax.jit(tx.init, out_shardings=repl)(params)
    return tx, {"params": params, "model_state": model_state, "opt_state": opt_state,
                "step": sharding.replicate(np.int32(step), mesh)}

  # ---------------------------------------------------------------- training
  progress = writers.Progress(total_steps, batch_size, start_step=latest or 0)
  log_every = max(int(config.log_every_steps), 1)
  checkpoint_every = int(config.get("checkpoint_every_steps", 0) or 0)
  step = latest or 0
  train_seconds = 0.0
  state = None
  try:
    for phase_index, phase in enumerate(phases):
      if phase_index < position["phase"]:
        continue
      tx, state = make_state(phase_index, params, model_state, step)

      step_fn = make_train_step(method, tx, phase, mesh)
      train_iter = iter(pipeline.make_dataset(
          data.dataset, train_positions, data.labels, train_transform, batch_size=batch_size,
          train=True, seed=config.seed + 1000 * phase_index, num_epochs=phase.num_epochs,
          cache=config.input.cache or None, worker_count=config.input.worker_count))
      first_epoch, skip_steps = 0, 0
      if phase_index == position["phase"] and latest is not None:
        state = ckpt.restore(latest, state, train_iter)
        first_epoch, skip_steps = position["epoch"], position["step_in_epoch"]

      pending: list[dict[str, jax.Array]] = []
      for epoch in range(first_epoch, phase.num_epochs):
        epoch_start = time.perf_counter()
        for step_in_epoch in range(skip_steps, steps_per_epoch):
          local = next(train_iter)
          batch = sharding.global_batch({"image": local["image"], "label": local["label"]}, mesh)
          state, measured = step_fn(state, batch, train_key)
          pending.append(measured)
          step += 1
          if step % log_every == 0 or step == total_steps:
            scalars, pending = _mean_measurements(pending), []
            writers.check_finite(step, scalars)
            scalars.update(progress.report(step))
            scalars["train/epoch"] = epoch + (step_in_epoch + 1) / steps_per_epoch
            writer.write_scalars(step, scalars)
          mid_epoch = step_in_epoch + 1 < steps_per_epoch
          if checkpoint_every and step % checkpoint_every == 0 and mid_epoch:
            ckpt.save(step, state, train_iter, {"phase": phase_index, "epoch": epoch,
                                                "step_in_epoch": step_in_epoch + 1})
        skip_steps = 0
        train_seconds += time.perf_counter() - epoch_start

        val = val_evaluator.run(_variables(state))["levels"]["0"]["accuracy"]
        logging.info("phase %s epoch %d/%d (step %d): val accuracy %.4f", phase.name, epoch + 1,
                     phase.num_epochs, step, val)
        writer.write_scalars(step, {"val/accuracy": val, "train/epoch": float(epoch + 1)})
        ckpt.save(step, state, train_iter,
                  {"phase": phase_index, "epoch": epoch + 1, "step_in_epoch": 0,
                   "val_accuracy": val},
                  metrics={checkpointing.BEST_METRIC: val} if phase.select_best else None)
        writer.flush()
      params, model_state = state["params"], state["model_state"]
  except BaseException:
    ckpt.close()  # a Python-level failure (NaN, Ctrl-C) still completes the save in flight
    raise
  ckpt.wait()

  # ---------------------------------------------------------------- test the best checkpoint
  best = ckpt.best_step()
  if best is None:
    best = ckpt.latest_step()
  best_meta = ckpt.meta(best)
  _, target = make_state(best_meta["phase"], params, model_state, best)
  state = ckpt.restore(best, target)
  ckpt.close()
  logging.info("testing the best checkpoint: step %d (phase %d, epoch %d, val accuracy %s)",
               best, best_meta["phase"], best_meta["epoch"], best_meta.get("val_accuracy"))
  results_evals = {}
  for name, eval_cfg in config.evals.items():
    evaluator = _make_evaluator(name, eval_cfg.to_dict(), method=method, data=data, mesh=mesh,
                                config=config, transform=eval_transform)
    results_evals[name] = evaluator.run(_variables(state))
    writer.write_scalars(best, classification.scalars(name, results_evals[name]))
  writer.flush()

  results = {
      "format": RESULTS_FORMAT,
      "version": 1,
      "method": config.method,
      "method_display": method.display_name,
      "task": task.name,
      "protocol": task.protocol,
      "train_semantic": task.semantic,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "workdir": os.path.abspath(workdir),
      "config": json.loads(config.to_json_best_effort()),
      "classes": data.classes,
      "dataset": {"root": os.path.abspath(data.dataset.root),
                  "fingerprint": data.dataset.info.get("fingerprint"),
                  "num_records": len(data.dataset)},
      "manifest": {"name": data.manifest.name, "path": os.path.abspath(data.manifest.path),
                   "digest": data.manifest.digest},
      "checkpoint": {"step": int(best), "phase": best_meta["phase"], "epoch": best_meta["epoch"],
                     "val_accuracy": best_meta.get("val_accuracy")},
      "devices": {"count": jax.device_count(), "processes": jax.process_count(),
                  "platform": jax.devices()[0].platform},
      "timing": {"train_seconds": round(train_seconds, 3),
                 "total_seconds": round(time.time() - start_time, 3)},
      "evals": results_evals,
  }
  if jax.process_index() == 0:
    path = os.path.join(workdir, RESULTS_JSON)
    with open(path + ".tmp", "w") as f:
      json.dump(results, f, indent=1)
    os.replace(path + ".tmp", path)
    logging.info("wrote %s", path)
  writer.close()
  return results
