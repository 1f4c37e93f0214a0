"""The linear-probe loop: methods fitted once on frozen features rather than trained by SGD epochs.

CLIP-LR (Cioni et al.) is the example: a frozen CLIP image tower, then a standardising scaler and
a multinomial logistic regression fitted by L-BFGS. Top to bottom:

  task and data -> mesh -> method -> the training split's frozen features (iab_jax.features:
  extracted once, then read from the cache by every later run) -> `method.fit` -> validation
  accuracy -> one checkpoint -> the test split at every degradation level -> results.json,

the same results.json, tables and `iab_jax.evaluate`/`iab_jax.attribute` as the supervised loop.
A killed run started again resumes the feature extraction after its last complete chunk; a run
whose fit was saved goes straight to testing.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from iab_jax import checkpointing, console, evaluators, methods, runs, sharding, tasks, writers
from iab_jax.trainers import supervised

FIT_STEP = 1  # the one checkpoint a linear probe saves


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Fits `config.method` on the training split's frozen features, tests it; the results."""
  start_time = time.time()
  task = tasks.parse_task(config.task)
  runs.check_resumable(config, workdir)

  # ---------------------------------------------------------------- data, mesh, method
  data = tasks.load(config.input, task)
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh()
  method = methods.get(config.method)(config, data.classes)
  if not method.frozen_features():
    raise ValueError(f"config.method={config.method!r}: the linear_probe trainer fits on frozen "
                     "features, and this method declares none (frozen_features)")
  _, eval_transform = method.transforms()
  writer = writers.create(workdir)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, runs.CONFIG_JSON), "w") as f:
      f.write(config.to_json_best_effort(indent=1, sort_keys=True))
  train_positions = data.positions("train")
  console.say("%s on %s: %d classes, %d training images, a linear probe on frozen features; "
              "%d devices in %d processes", method.display_name, task.name, method.num_classes,
              len(train_positions), jax.device_count(), jax.process_count())
  features = evaluators.provider(method, data=data, config=config, mesh=mesh)
  example = supervised.example_image(data, eval_transform)
  variables = method.init(jax.random.key(config.seed), jnp.asarray(example[None]))

  # ---------------------------------------------------------------- fit (once)
  ckpt = checkpointing.Checkpoints(os.path.join(workdir, runs.CHECKPOINTS), asynchronous=False)
  fit_seconds = 0.0
  try:
    if ckpt.latest_step() is None:
      inputs = {name: table.lookup(train_positions)
                for name, table in features.tables("train", 0).items()}
      labels = np.asarray(data.labels[train_positions])
      console.say("fitting on %d examples (%s) ...", len(labels),
                  ", ".join(f"{k} {v.shape[1]}-d" for k, v in inputs.items()))
      with console.Timer() as t:
        variables, report = method.fit(variables, inputs, labels)
      fit_seconds = t.seconds
      console.say("fitted in %.1f s: %s", fit_seconds,
                  ", ".join(f"{k} {v}" for k, v in report.items()))
      writer.write_scalars(FIT_STEP, {f"fit/{k}": float(v) for k, v in report.items()
                                      if isinstance(v, (int, float, bool))})
      val_evaluator = evaluators.make("val", dict(split="val", levels=[0]), method=method,
                                      data=data, mesh=mesh, config=config,
                                      transform=eval_transform, features=features)
      variables = sharding.replicate(variables, mesh)
      val = val_evaluator.run(variables, quiet=True)["levels"]["0"]["accuracy"]
      console.say("val accuracy %.4f", val)
      writer.write_scalars(FIT_STEP, {"val/accuracy": val})
      state = {"params": variables["params"],
               "model_state": {k: v for k, v in variables.items() if k != "params"},
               "opt_state": {}, "step": np.int32(FIT_STEP)}
      ckpt.save(FIT_STEP, state, None, {"phase": 0, "epoch": 1, "step_in_epoch": 0,
                                        "val_accuracy": val, "fit": report},
                metrics={checkpointing.BEST_METRIC: val})
      ckpt.wait()

    # -------------------------------------------------------------- test the fit
    step = ckpt.latest_step()
    meta = ckpt.meta(step)
    restored = ckpt.restore_variables(step, lambda: variables, sharding.replicated(mesh))
  finally:
    ckpt.close()
  console.say("testing the fit (val accuracy %.4f)", meta["val_accuracy"])
  results_evals = evaluators.run_all(config, method=method, data=data, mesh=mesh,
                                     variables=restored, transform=eval_transform, writer=writer,
                                     step=step, features=features)
  writer.flush()
  results = supervised.make_results(
      config, method, task, data, results_evals,
      checkpoint={"step": int(step), "which": "fit", "phase": 0, "epoch": 1,
                  "val_accuracy": meta.get("val_accuracy")},
      timing={"train_seconds": round(fit_seconds, 3),
              "total_seconds": round(time.time() - start_time, 3)},
      workdir=workdir, fit=meta.get("fit"))
  if jax.process_index() == 0:
    supervised.write_results(results, os.path.join(workdir, runs.RESULTS_JSON))
  writer.close()
  return results
