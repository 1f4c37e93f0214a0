"""Benchmark tasks: what `configs/<method>.py:<task>` means, and the data a task trains on.

Tasks are `standard`, `semantic1|2|3` (the paper's sub-tasks: cat, bedroom, FFHQ) and
`semantic:<class>` for any of the ten semantic classes. A task names its manifest under
`<data_dir>/splits/` (`standard`, `semantic_cat`, ...), written by `python -m data_prep.split`.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from iab_jax.data import generators, manifests, records


@dataclasses.dataclass(frozen=True)
class Task:
  name: str  # canonical: "standard" or "semantic:<class>"
  protocol: str  # "standard" | "semantic"
  semantic: str | None = None  # the training class of a semantic task

  @property
  def manifest_name(self) -> str:
    return manifests.manifest_name(self.protocol, semantic=self.semantic)


def parse_task(text: str) -> Task:
  """'standard' | 'semantic1'..'semantic3' | 'semantic:<class>' -> Task; clear error otherwise."""
  text = text.strip()
  if text == "standard":
    return Task("standard", "standard")
  if text.startswith("semantic:"):
    name = generators.semantic_name(text.split(":", 1)[1])
    if name is None:
      raise ValueError(f"task {text!r}: unknown semantic class; known: "
                       f"{', '.join(generators.SEMANTIC_ORDER)}")
    return Task(f"semantic:{name}", "semantic", name)
  if text.startswith("semantic") and text[len("semantic"):].isdigit():
    k = int(text[len("semantic"):])
    if k not in generators.SEMANTIC_TASKS:
      known = ", ".join(f"semantic{i} ({n})" for i, n in generators.SEMANTIC_TASKS.items())
      raise ValueError(f"task {text!r}: the paper's semantic sub-tasks are {known}")
    name = generators.SEMANTIC_TASKS[k]
    return Task(f"semantic:{name}", "semantic", name)
  raise ValueError(f"unknown task {text!r}; expected standard, semantic1, semantic2, semantic3 "
                   "or semantic:<class>")


@dataclasses.dataclass
class TaskData:
  dataset: records.Dataset
  manifest: manifests.Manifest
  labels: np.ndarray  # every record's label under the manifest's classes (-1: not a class)

  @property
  def classes(self) -> list[str]:
    return self.manifest.classes

  def positions(self, split: str) -> np.ndarray:
    if split not in self.manifest.splits:
      raise ValueError(f"manifest {self.manifest.path!r} has no split {split!r} "
                       f"(it has {', '.join(self.manifest.splits)})")
    return self.manifest.splits[split]


def manifest_path(data_dir: str, manifest: str) -> str:
  """A manifest file, or a name under <data_dir>/splits/."""
  if manifest.endswith(".json") or os.sep in manifest:
    return manifest
  return os.path.join(data_dir, manifests.SPLITS_DIR, manifest + ".json")


def prepare_minibench(data_dir: str, task: Task) -> None:
  """Builds the built-in mini-bench and the task's manifest where they are absent (quickstart)."""
  from data_prep import minibench, split  # data preparation, only needed for this convenience

  if not os.path.exists(os.path.join(data_dir, records.DATASET_JSON)):
    minibench.build(data_dir)
  path = manifest_path(data_dir, task.manifest_name)
  if not os.path.exists(path):
    ds = records.Dataset(data_dir)
    if task.protocol == "standard":
      made = split.standard_split(ds)
    else:
      made = split.semantic_split(ds, task.semantic)
    manifests.save_manifest(made, path)


def load(input_config, task: Task) -> TaskData:
  """Opens the dataset and the manifest the input config names, checking they belong together."""
  data_dir = input_config.data_dir
  if input_config.get("prepare") == "minibench":
    prepare_minibench(data_dir, task)
  if not os.path.exists(os.path.join(data_dir, records.DATASET_JSON)):
    raise FileNotFoundError(
        f"config.input.data_dir={data_dir!r} holds no dataset ({records.DATASET_JSON} missing); "
        "build one with `python -m data_prep.ingest` or `python -m data_prep.minibench`")
  dataset = records.Dataset(data_dir)
  path = manifest_path(data_dir, input_config.manifest or task.manifest_name)
  if not os.path.exists(path):
    command = f"python -m data_prep.split --data {data_dir} --protocol {task.protocol}"
    if task.protocol == "semantic":
      command += f" --semantic {task.semantic}"
    raise FileNotFoundError(f"manifest {path!r} not found; write it with `{command}`")
  manifest = manifests.load_manifest(path, dataset)
  if manifest.protocol != task.protocol:
    raise ValueError(f"config.input.manifest {path!r} is a {manifest.protocol} split, but the "
                     f"task is {task.name}")
  return TaskData(dataset, manifest, manifests.labels_for(manifest, dataset))
