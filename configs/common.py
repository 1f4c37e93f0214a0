"""Config pieces every method shares: the task, the data, the evaluation protocol, the loop.

A method config calls `task_config(arg, ...)` with its recipe and overrides what else it needs.
`arg` is what follows the `:` in `--config configs/<method>.py:<arg>`: a task (`standard`,
`semantic1|2|3`, `semantic:<class>`, `openset0..4`, `openset:<fold>` or `detection:<generator>`),
optionally followed by comma-separated options:
`runlocal` shrinks the run to a smoke test, `data=DIR` points at a dataset directory,
`official` reproduces the official PyTorch code where it changes numbers (its split, its 16-bit
decoding, testing the last epoch instead of the best; methods add their own deviations),
`minibench` trains on the built-in mini-bench (built on first use) with the method's own
mini-bench sizes, the preset `python -m iab_jax.sweep --preset minibench` runs.
`runlocal` and `minibench` set `random_init_fallback`: a pretrained file that is absent leaves
the network randomly initialised (the log says so) instead of stopping the run.

List-valued fields are tuples, so that the command line can override them:
`--config.evals.test.levels=0,3,5`.
"""

from __future__ import annotations

import os

import ml_collections

from iab_jax import evaluators, tasks
from iab_jax.data import manifests

# The paper resizes and center-crops images to 256x256 (section 4).
EVAL_TRANSFORM = "resize(256)|central_crop(256)"
NUM_LEVELS = 7  # clean + the six degradations
MINIBENCH_DIR = tasks.MINIBENCH_DIR  # where `input.prepare = "minibench"` may build it
OPTIONS = ("runlocal", "data", "official", "minibench")


def default_worker_count() -> int:
  """grain worker processes for decoding: every core but two (the training loop's own), <= 16.

  Decoding a 1024x1024 PNG takes ~30 ms of a core, so one process cannot feed an accelerator.
  Workers give the same batches in the same order as none, and resume exactly.
  """
  return min(16, max(0, (os.cpu_count() or 1) - 2))


def input_config(data_dir: str = MINIBENCH_DIR, manifest: str = "",
                 transform: str = EVAL_TRANSFORM, eval_transform: str = EVAL_TRANSFORM,
                 batch_size: int = 32) -> ml_collections.ConfigDict:
  """The input section of a run config; fields map onto iab_jax.data.pipeline.make_dataset.

  manifest: "" for the task's default (<data_dir>/splits/<standard|semantic_cat|...>.json), a
  name under <data_dir>/splits, or a file.
  cache: "auto" reads a pre-resized cache whose ops begin `transform` when one was built
  (python -m data_prep.build_cache), "" never does, or a cache directory.
  prepare: "minibench" builds the built-in mini-bench and the task's manifest when they are
  absent, and only at MINIBENCH_DIR: any other data_dir must already hold a dataset.
  worker_count: grain processes that decode (0: threads of the training process).
  read_threads, prefetch_batches, worker_buffer_batches: the read-ahead, in batches; the pipeline
  holds about iab_jax.data.pipeline.buffered_batches(...) batches, so its memory stays bounded.
  sixteen_bit: 16-bit images to 8 bits by "scale" (ours) or "clip" (the official loader).
  train_fraction: train on this fraction of each class's training records (data-efficiency
  studies; iab_jax.tasks.train_fraction), drawn by train_fraction_seed; 1.0 = all of them.
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
      "read_threads": 2,
      "prefetch_batches": 2,
      "worker_buffer_batches": 1,
      "sixteen_bit": "scale",
      "prepare": "",
      "train_fraction": 1.0,
      "train_fraction_seed": 0,
  })


def parse_arg(arg: str) -> tuple[tasks.Task, dict[str, str | bool]]:
  """'semantic1,runlocal,data=/x' -> (Task(semantic:cat), {'runlocal': True, 'data': '/x'})."""
  task_text, *rest = (arg or "standard").split(",")
  options: dict[str, str | bool] = {}
  for item in rest:
    key, sep, value = item.partition("=")
    if key not in OPTIONS:
      raise ValueError(f"unknown config option {key!r} in {arg!r}; known: runlocal, data=DIR, "
                       "official")
    if (key == "data") != bool(sep) or (sep and not value):
      raise ValueError(f"config option {item!r} in {arg!r}: expected "
                       + ("data=DIR" if key == "data" else key))
    options[key] = value if sep else True
  task = tasks.parse_task(task_text)
  if options.get("official") and task.protocol not in ("standard", "semantic"):
    raise ValueError(f"config option 'official' in {arg!r}: the official code has only the "
                     "standard and semantic tasks")
  return task, options


def task_config(arg: str, *, method: str, standard_epochs: int = 10, semantic_epochs: int = 15,
                learning_rate: float = 1e-3, batch_size: int = 32,
                transform: str = EVAL_TRANSFORM, eval_transform: str = EVAL_TRANSFORM,
                data_dir: str = "data/iab") -> ml_collections.ConfigDict:
  """A run of `method` on the task `arg` names, with the paper's defaults (appendix D):
  Adam 1e-3, batch 32, cross-entropy, 10 epochs standard / 15 semantic, best checkpoint by
  validation accuracy, tested at all 7 levels. An open-set task trains on its known classes as
  the standard task does and adds the `openset` eval (closed-set accuracy, AUROC and OSCR of
  known against the fold's unknown generators, iab_jax.evaluators.open_set).

  Every run is also scored as a real/fake detector (the `detection` eval,
  iab_jax.evaluators.detection: 1 − P(real) against each generator, at all 7 levels; it reuses
  the test eval's scores). A detection task (`detection:<generator>`) has that eval alone."""
  task, options = parse_arg(arg)
  config = ml_collections.ConfigDict()
  config.method = method
  config.task = task.name
  config.input = input_config(str(options.get("data", data_dir)), transform=transform,
                              eval_transform=eval_transform, batch_size=batch_size)
  config.num_epochs = semantic_epochs if task.protocol == "semantic" else standard_epochs
  config.optimizer = ml_collections.ConfigDict({"name": "adam", "learning_rate": learning_rate})
  config.evals = ml_collections.ConfigDict({
      "test": {"type": "classification", "split": "test", "levels": tuple(range(NUM_LEVELS))}})
  if task.protocol == "openset":
    config.evals.openset = {"type": "open_set", "split": "test", "unknown_split": "test_unknown",
                            "levels": (0,)}
  if task.protocol == "detection":
    del config.evals["test"]
  config.evals.detection = evaluators.detection_config()
  config.seed = 0
  config.log_every_steps = 50
  config.checkpoint_every_steps = 0  # 0: at the end of each epoch only
  config.test_checkpoint = "best"  # "best" by validation accuracy (the paper), or "last"
  config.distributed = False
  config.official = bool(options.get("official"))
  if config.official:
    # The official code recomputes its own split each run (data_prep.split --official writes it),
    # clips 16-bit images (PIL's convert) and tests the last epoch's model, not the best one.
    config.input.manifest = manifests.manifest_name(task.protocol, semantic=task.semantic,
                                                    official=True)
    config.input.sixteen_bit = "clip"
    config.test_checkpoint = "last"
  # A frozen backbone's outputs are cached per (backbone, weights, transform, dataset, split,
  # level) under this directory ("" = <data_dir>/features), and reused by every later run.
  config.feature_cache = ""
  # Caps for smoke tests (0: none): steps per epoch, and records scored per evaluation split
  # (evenly spread over it).
  config.max_steps_per_epoch = 0
  config.max_eval_examples = 0
  config.random_init_fallback = bool(options.get("runlocal") or options.get("minibench"))
  if options.get("minibench"):
    config.input.data_dir = MINIBENCH_DIR
    config.input.prepare = "minibench"
    config.input.worker_count = 0
  if options.get("runlocal"):
    # A few steps, a few batches of every evaluation at all 7 levels.
    config.num_epochs = 1
    config.log_every_steps = 1
    config.max_steps_per_epoch = 3
    config.max_eval_examples = 2 * batch_size
  return config


def options_of(arg: str) -> dict[str, str | bool]:
  """The options of a config arg ('standard,runlocal' -> {'runlocal': True})."""
  return parse_arg(arg)[1]


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  del arg
  return input_config()
