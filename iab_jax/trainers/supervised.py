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

from iab_jax import (checkpointing, console, evaluators, methods, optimizers, runs, sharding, tasks,
                     writers)
from iab_jax.data import pipeline, records, transforms

RESULTS_JSON = runs.RESULTS_JSON
RESULTS_FORMAT = "iab_jax.results"


def example_image(data: tasks.TaskData, transform: str, split: str = "train") -> Any:
  """One transformed image of `split` (an array, or a dict of arrays for several views): its
  shapes and dtypes are what the model will see."""
  position = int(data.positions(split)[0])
  image = records.decode(data.dataset.raw(position))
  return transforms.parse(transform)(image, np.random.default_rng(0))


def describe(images: Any) -> str:
  """'256x256x3 float32', or 'rich 256x256x3 float32, poor ...' for several views."""
  if isinstance(images, dict):
    return ", ".join(f"{k} {describe(v)}" for k, v in images.items())
  return f"{'x'.join(map(str, images.shape))} {images.dtype}"


# Batch keys that only the loop and the metrics read; the rest goes to the method's loss.
_NOT_FOR_LOSS = ("semantic", "position", "mask")


def _split_variables(variables: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
  return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def _variables(state: dict[str, Any]) -> dict[str, Any]:
  return {"params": state["params"], **state["model_state"]}


def _mean_measurements(pending: list[dict[str, jax.Array]]) -> dict[str, float]:
  """The mean of each measurement over the steps since the last log (one host transfer)."""
  values = sharding.to_host(pending)
  return {f"train/{k}": float(np.mean([v[k] for v in values])) for k in values[0]}


def _num_parameters(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


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
  task = tasks.parse_task(config.task)
  runs.check_resumable(config, workdir)

  # ---------------------------------------------------------------- data, mesh, method
  data = tasks.load(config.input, task)
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh()
  method = methods.get(config.method)(config, data.classes)
  train_transform, eval_transform = method.transforms()
  reading = pipeline.reading_options(config.input)
  batch_size = config.input.batch_size
  sharding.check_batch_size(batch_size, "input.batch_size")
  train_positions = data.positions("train")
  # A smoke test (runlocal) caps the steps of an "epoch"; the next one continues the stream.
  step_limit = int(config.get("max_steps_per_epoch", 0) or 0)
  phases = method.phases()
  phase_positions = [phase_training_positions(p, data, train_positions) for p in phases]
  # Per phase: the steps of one pass over its records (what epoch-based schedules count in),
  # and the steps of one of its epochs (a phase stated in steps is one epoch of that many).
  data_epochs = [pipeline.steps_per_epoch(len(x), batch_size, train=True)
                 for x in phase_positions]
  for p, x, n in zip(phases, phase_positions, data_epochs):
    if n == 0:
      raise ValueError(f"config.input.batch_size={batch_size} is larger than the training "
                       f"records of phase {p.name!r} ({len(x)} images)")
  epoch_steps = [p.num_steps or n for p, n in zip(phases, data_epochs)]
  if step_limit and any(step_limit < n for n in epoch_steps):
    console.say("max_steps_per_epoch=%d: each epoch is cut to %d of its %s steps", step_limit,
                step_limit, "/".join(map(str, epoch_steps)))
    epoch_steps = [min(n, step_limit) for n in epoch_steps]
  total_steps = sum(p.num_epochs * n for p, n in zip(phases, epoch_steps))
  for index in range(len(phases)):  # a bad optimizer setting fails now, not after the model
    make_optimizer(phases, index, data_epochs, epoch_steps)
  phase_transforms = [p.transform or train_transform for p in phases]
  writer = writers.create(workdir)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, runs.CONFIG_JSON), "w") as f:
      f.write(config.to_json_best_effort(indent=1, sort_keys=True))
  writer.write_hparams({k: v if isinstance(v, (int, float, str, bool)) else str(v)
                        for k, v in runs.flat(runs.config_dict(config)).items()})
  console.say("%s on %s: %d classes, %d training images, %d steps (%s); %d devices in %d "
              "processes", method.display_name, task.name, method.num_classes,
              len(train_positions), total_steps,
              ", ".join(f"{p.name} {p.num_steps} steps" if p.num_steps else
                        f"{p.name} {p.num_epochs} epochs" for p in phases), jax.device_count(),
              jax.process_count())

  # ---------------------------------------------------------------- variables
  rng = jax.random.key(config.seed)
  init_rng, train_rng = jax.random.split(rng)
  example = example_image(data, phase_transforms[0])
  ckpt = checkpointing.Checkpoints(os.path.join(workdir, runs.CHECKPOINTS))
  latest = ckpt.latest_step()
  console.say("initialising the model ...")
  with console.Timer() as t:
    variables = method.init(init_rng, jax.tree.map(lambda x: jnp.asarray(x[None]), example))
  console.say("model: %s parameters, input %s (%.1f s)",
              f"{_num_parameters(variables['params']):,}", describe(example), t.seconds)
  if method.needs_prepare and latest is None:  # a resumed run restores what prepare set
    variables = prepare(method, variables, data, train_transform, config, step_limit)
  params, model_state = _split_variables(sharding.replicate(variables, mesh))
  # Passed to the step as raw key data: a host value every process holds, replicated.
  train_key = sharding.replicate(jax.random.key_data(train_rng), mesh)
  repl = sharding.replicated(mesh)

  # ---------------------------------------------------------------- evaluators, frozen features
  features = evaluators.provider(method, data=data, config=config, mesh=mesh)
  val_evaluator = evaluators.make("val", dict(split="val", levels=[0]), method=method, data=data,
                                  mesh=mesh, config=config, transform=eval_transform,
                                  features=features)

  # ---------------------------------------------------------------- checkpoints
  position = {"phase": 0, "epoch": 0, "step_in_epoch": 0}
  if latest is not None:
    position = ckpt.meta(latest)
    console.say("resuming from step %d: phase %d, epoch %d, step %d of the epoch", latest,
                position["phase"], position["epoch"], position["step_in_epoch"])

  def make_state(phase_index: int, params, model_state, step: int):
    tx = make_optimizer(phases, phase_index, data_epochs, epoch_steps)
    opt_state = jax.jit(tx.init, out_shardings=repl)(params)
    return tx, {"params": params, "model_state": model_state, "opt_state": opt_state,
                "step": sharding.replicate(np.int32(step), mesh)}

  # ---------------------------------------------------------------- training
  progress = writers.Progress(total_steps, batch_size, start_step=latest or 0)
  bar = console.ProgressBar(total_steps, initial=latest or 0)
  log_every = max(int(config.log_every_steps), 1)
  checkpoint_every = int(config.get("checkpoint_every_steps", 0) or 0)
  step = latest or 0
  train_seconds = 0.0
  state = train_iter = None
  try:
    for phase_index, phase in enumerate(phases):
      if phase_index < position["phase"]:
        continue
      tx, state = make_state(phase_index, params, model_state, step)

      step_fn = make_train_step(method, tx, phase, mesh)
      compiled = None
      steps_per_epoch = epoch_steps[phase_index]
      train_iter = iter(pipeline.make_dataset(
          data.dataset, phase_positions[phase_index], data.labels, phase_transforms[phase_index],
          batch_size=batch_size, train=True, seed=config.seed + 1000 * phase_index,
          num_epochs=None if phase.num_steps else phase.num_epochs, sampler=phase.sampler,
          partners=phase.partners, partner_pool=phase_positions[phase_index],
          images=method.uses_images or not features, **reading))
      first_epoch, skip_steps = 0, 0
      if phase_index == position["phase"] and latest is not None:
        state = ckpt.restore(latest, state, train_iter)
        first_epoch, skip_steps = position["epoch"], position["step_in_epoch"]

      pending: list[dict[str, jax.Array]] = []
      for epoch in range(first_epoch, phase.num_epochs):
        epoch_start = time.perf_counter()
        for step_in_epoch in range(skip_steps, steps_per_epoch):
          local = next(train_iter)
          if features:
            local = features.add(local, "train", 0)
          local = {k: v for k, v in local.items() if k not in _NOT_FOR_LOSS}
          if phase.label != "label":
            if phase.label not in local:
              raise ValueError(f"phase {phase.name!r} trains on batch[{phase.label!r}], which "
                               f"its transform {phase_transforms[phase_index]!r} does not emit")
            local["label"] = local[phase.label]
          batch = sharding.global_batch(local, mesh)
          if compiled is None:  # ahead of time, so that a long XLA compilation is announced
            console.say("compiling the %s step (batch of %s) ...", phase.name,
                        describe(batch["image"] if "image" in batch else batch["features"]))
            with console.Timer() as t:
              compiled = step_fn.lower(state, batch, train_key).compile()
            console.say("compiled in %.1f s", t.seconds)
            epoch_start = time.perf_counter()
          state, measured = compiled(state, batch, train_key)
          pending.append(measured)
          step += 1
          bar.update(1)
          if step % log_every == 0 or step == total_steps:
            scalars, pending = _mean_measurements(pending), []
            writers.check_finite(step, scalars)
            scalars.update(progress.report(step))
            scalars["train/epoch"] = epoch + (step_in_epoch + 1) / steps_per_epoch
            writer.write_scalars(step, scalars)
            rate = scalars.get("perf/images_per_sec")
            bar.update(0, loss=f"{scalars['train/loss']:.4f}")
            if not bar.enabled:
              console.say("step %d/%d (%s epoch %d/%d): loss %.4f%s", step, total_steps,
                          phase.name, epoch + 1, phase.num_epochs, scalars["train/loss"],
                          "" if rate is None else f", {rate:.1f} images/s, ETA "
                          f"{writers.duration(scalars['perf/eta_seconds'])}")
          mid_epoch = step_in_epoch + 1 < steps_per_epoch
          if checkpoint_every and step % checkpoint_every == 0 and mid_epoch:
            ckpt.save(step, state, train_iter, {"phase": phase_index, "epoch": epoch,
                                                "step_in_epoch": step_in_epoch + 1})
        skip_steps = 0
        train_seconds += time.perf_counter() - epoch_start

        if phase.validate:
          val = val_evaluator.run(_variables(state), quiet=True)["levels"]["0"]["accuracy"]
          console.say("%s epoch %d/%d (step %d): val accuracy %.4f", phase.name, epoch + 1,
                      phase.num_epochs, step, val)
          writer.write_scalars(step, {"val/accuracy": val, "train/epoch": float(epoch + 1)})
        else:
          val = None
          console.say("%s epoch %d/%d (step %d) done (this phase is not validated)", phase.name,
                      epoch + 1, phase.num_epochs, step)
          writer.write_scalars(step, {"train/epoch": float(epoch + 1)})
        ckpt.save(step, state, train_iter,
                  {"phase": phase_index, "epoch": epoch + 1, "step_in_epoch": 0,
                   "val_accuracy": val},
                  metrics={checkpointing.BEST_METRIC: val} if phase.select_best else None)
        writer.flush()
      params, model_state = state["params"], state["model_state"]
  except BaseException:
    bar.close()
    ckpt.close()  # a Python-level failure (NaN, Ctrl-C) still completes the save in flight
    pipeline.close(train_iter)  # stops input workers, frees their shared memory
    raise
  bar.close()
  ckpt.wait()

  # ---------------------------------------------------------------- test the chosen checkpoint
  which = config.get("test_checkpoint", "best")
  tested = ckpt.best_step() if which == "best" else None
  if tested is None:
    tested = ckpt.latest_step()
  tested_meta = ckpt.meta(tested)
  model = ckpt.restore_model(tested, {"params": params, "model_state": model_state})
  ckpt.close()
  val = tested_meta.get("val_accuracy")
  console.say("testing the %s checkpoint: step %d (phase %d, epoch %d, val accuracy %s)", which,
              tested, tested_meta["phase"], tested_meta["epoch"],
              "?" if val is None else f"{val:.4f}")
  results_evals = evaluators.run_all(config, method=method, data=data, mesh=mesh,
                                     variables=_variables(model), transform=eval_transform,
                                     writer=writer, step=tested, features=features)
  writer.flush()
  results = make_results(config, method, task, data, results_evals, checkpoint={
      "step": int(tested), "which": which, "phase": tested_meta["phase"],
      "epoch": tested_meta["epoch"], "val_accuracy": tested_meta.get("val_accuracy")},
      timing={"train_seconds": round(train_seconds, 3),
              "total_seconds": round(time.time() - start_time, 3)}, workdir=workdir)
  if jax.process_index() == 0:
    write_results(results, os.path.join(workdir, RESULTS_JSON))
  writer.close()
  return results


def make_optimizer(phases, index: int, data_epochs, epoch_steps) -> optax.GradientTransformation:
  """Phase `index`'s optimizer, its durations in that phase's steps."""
  phase = phases[index]
  return optimizers.make(phase.optimizer, data_epochs[index],
                         phase.num_epochs * epoch_steps[index],
                         key=phase.optimizer_key or ("optimizer" if len(phases) == 1
                                                     else f"phases.{phase.name}.optimizer"))


def phase_training_positions(phase, data: tasks.TaskData, positions: np.ndarray) -> np.ndarray:
  """The training records a phase learns from: all of them, or those of the phase's classes."""
  if phase.classes is None:
    return positions
  missing = [c for c in phase.classes if c not in data.classes]
  if missing:
    raise ValueError(f"phase {phase.name!r} trains on the class {missing[0]!r}, which the run's "
                     f"data do not have (classes: {', '.join(data.classes)})")
  wanted = [data.classes.index(c) for c in phase.classes]
  return positions[np.isin(data.labels[positions], wanted)]


def prepare(method, variables, data: tasks.TaskData, transform: str, config, step_limit: int = 0):
  """The method's pass over the training split before training (method.prepare): batches in
  record order through the training transform, padding removed; at most `step_limit` batches
  when the run is cut short (runlocal)."""
  batch_size = config.input.batch_size
  it = iter(pipeline.make_dataset(data.dataset, data.positions("train"), data.labels, transform,
                                  batch_size=batch_size, train=False,
                                  **pipeline.reading_options(config.input)))
  limit = step_limit or None

  def batches():
    for i, batch in enumerate(it):
      if limit is not None and i >= limit:
        return
      keep = batch["mask"]
      yield {k: v[keep] for k, v in batch.items() if k != "mask"}

  console.say("preparing %s: a pass over the training split ...", method.display_name)
  try:
    with console.Timer() as t:
      variables = method.prepare(variables, batches())
  finally:
    pipeline.close(it)
  console.say("prepared in %.1f s", t.seconds)
  return variables


def baselines(data: tasks.TaskData, test_split: str = "test") -> dict[str, Any]:
  """What a result must beat: chance, and a classifier that reads only the file format and size
  (iab_jax.data.shortcuts), fit on the train split and scored on `test_split`."""
  from iab_jax.data import shortcuts

  out: dict[str, Any] = {"chance": 1.0 / len(data.classes)}
  if "train" in data.manifest.splits and test_split in data.manifest.splits:
    try:
      out["metadata"] = shortcuts.metadata_baseline(data.dataset, data.manifest, "train",
                                                    test_split)
    except ValueError as e:  # e.g. no training record of the run's classes in these data
      out["metadata"] = {"accuracy": None, "reason": str(e)}
  return out


def make_results(config, method, task, data, evals, *, checkpoint, timing, workdir,
                 **extra) -> dict[str, Any]:
  """The results JSON of a tested checkpoint (results.json, results_<name>.json)."""
  return {
      "format": RESULTS_FORMAT,
      "version": 1,
      "method": config.method,
      "method_display": method.display_name,
      "task": task.name,
      "protocol": task.protocol,
      "train_semantic": task.semantic,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "workdir": os.path.abspath(workdir),
      "config": runs.config_dict(config),
      "classes": data.classes,
      "dataset": {"root": os.path.abspath(data.dataset.root),
                  "fingerprint": data.dataset.info.get("fingerprint"),
                  "num_records": len(data.dataset)},
      "manifest": {"name": data.manifest.name, "path": os.path.abspath(data.manifest.path),
                   "digest": data.manifest.digest},
      "checkpoint": checkpoint,
      "devices": {"count": jax.device_count(), "processes": jax.process_count(),
                  "platform": jax.devices()[0].platform},
      "timing": timing,
      "baselines": baselines(data),
      "evals": evals,
      **extra,
  }


def write_results(results: dict[str, Any], path: str) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(results, f, indent=1)
  os.replace(tmp, path)
  console.say("wrote %s", path)
