"""Config pieces every method shares: the task, the data, the evaluation protocol, the loop.

A method config calls `task_config(arg, ...)` with its recipe and overrides what else it needs.
`arg` is what follows the `:` in `--config configs/<method>.py:<arg>`: a task (`standard`,
`semantic1|2|3`, `semantic:<class>`), optionally followed by comma-separated options:
`runlocal` shrinks the run to a smoke test, `data=DIR` points at a dataset directory.
"""

from __future__ import annotations

import os

import ml_collections

from iab_jax import tasks

# The paper resizes and center-crops images to 256x256 (section 4).
EVAL_TRANSFORM = "resize(256)|central_crop(256)"
NUM_LEVELS = 7  # clean + the six degradations


def default_worker_count() -> int:
  """grain worker processes for decoding: every core but two (the training loop's own), <= 16.

  Decoding a 1024x1024 PNG takes ~30 ms of a core, so one process cannot feed an accelerator.
  Workers give the same batches in the same order as none, and resume exactly.
  """
  return min(16, max(0, (os.cpu_count() or 1) - 2))


def input_config(data_dir: str = "workdir/minibench", manifest: str = "",
                 transform: str = EVAL_TRANSFORM, eval_transform: str = EVAL_TRANSFORM,
                 batch_size: int = 32) -> ml_collections.ConfigDict:
  """The input section of a run config; fields map onto iab_jax.data.pipeline.make_dataset.

  manifest: "" for the task's default (<data_dir>/splits/<standard|semantic_cat|...>.json), a
  name under <data_dir>/splits, or a file.
  cache: "auto" reads a pre-resized cache whose ops begin `transform` when one was built
  (python -m data_prep.build_cache), "" never does, or a cache directory.
  prepare: "minibench" builds the built-in mini-bench and the task's manifest if absent.
  """
  return ml_collections.ConfigDict({
      "data_dir": data_dir,
      "manifest": manifest,
      "transform": transform,
      "eval_transform": eval_transform,
      "batch_size": batch_size,
      "eval_batch_size": batch_size,
      "cache": "auto",
      "worker_count": default_worker_count(),
      "prepare": "",
  })


def parse_arg(arg: str) -> tuple[tasks.Task, dict[str, str | bool]]:
  """'semantic1,runlocal,data=/x' -> (Task(semantic:cat), {'runlocal': True, 'data': '/x'})."""
  task_text, *rest = (arg or "standard").split(",")
  options: dict[str, str | bool] = {}
  for item in rest:
    key, sep, value = item.partition("=")
    if key not in ("runlocal", "data"):
      raise ValueError(f"unknown config option {key!r} in {arg!r}; known: runlocal, data=DIR")
    options[key] = value if sep else True
  return tasks.parse_task(task_text), options


def task_config(arg: str, *, method: str, standard_epochs: int = 10, semantic_epochs: int = 15,
                learning_rate: float = 1e-3, batch_size: int = 32,
                transform: str = EVAL_TRANSFORM, eval_transform: str = EVAL_TRANSFORM,
                data_dir: str = "data/iab") -> ml_collections.ConfigDict:
  """A run of `method` on the task `arg` names, with the paper's defaults (appendix D):
  Adam 1e-3, batch 32, cross-entropy, 10 epochs standard / 15 semantic, best checkpoint by
  validation accuracy, tested at all 7 levels."""
  task, options = parse_arg(arg)
  config = ml_collections.ConfigDict()
  config.method = method
  config.task = task.name
  config.input = input_config(str(options.get("data", data_dir)), transform=transform,
                              eval_transform=eval_transform, batch_size=batch_size)
  config.num_epochs = standard_epochs if task.protocol == "standard" else semantic_epochs
  config.optimizer = ml_collections.ConfigDict({"name": "adam", "learning_rate": learning_rate})
  config.evals = ml_collections.ConfigDict({
      "test": {"type": "classification", "split": "test", "levels": list(range(NUM_LEVELS))}})
  config.seed = 0
  config.log_every_steps = 50
  config.checkpoint_every_steps = 0  # 0: at the end of each epoch only
  config.distributed = False
  if options.get("runlocal"):
    config.num_epochs = 1
    config.log_every_steps = 1
  return config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  del arg
  return input_config()
