"""Benchmark tasks: what `configs/<method>.py:<task>` means, and the data a task trains on.

Tasks are `standard`, `semantic1|2|3` (the paper's sub-tasks: cat, bedroom, FFHQ),
`semantic:<class>` for any of the ten semantic classes, `openset0`..`openset4` or `openset:<k>`
(open-set attribution, fold k: its generators are unknown, never trained on, and tested as
`test_unknown`), and `group` (a user's own folders split by groups such as prompts: test groups
are never seen in training). A task names its manifest under `<data_dir>/splits/` (`standard`,
`semantic_cat`, `openset_fold2`, `group`, ...), written by `python -m data_prep.split`; a detection
task derives its splits from the standard manifest (detection_manifest), so it needs no file.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from iab_jax.data import generators, manifests, records


@dataclasses.dataclass(frozen=True)
class Task:
  name: str  # canonical: "standard", "semantic:<class>", "openset:<k>", "detection:<g>", "group"
  protocol: str  # "standard" | "semantic" | "openset" | "detection" | "group"
  semantic: str | None = None  # the training class of a semantic task
  fold: int | None = None  # the fold of an open-set task (its generators are the unknown ones)
  generator: str | None = None  # the fake class a detection task trains on, or "all"

  @property
  def manifest_name(self) -> str:
    if self.protocol == "detection":  # derived from the standard split
      return manifests.manifest_name("standard")
    return manifests.manifest_name(self.protocol, semantic=self.semantic, fold=self.fold)


DETECTION_CLASSES = ("real", "fake")  # a detection task's label map: 0 real, 1 generated
DETECTION_ALL = "all"  # detection:all trains on every generator of the standard split

OPENSET_FOLDS = 5  # data_prep.split's default number of open-set folds: openset0..openset4


def parse_task(text: str) -> Task:
  """'standard' | 'semantic1'..'semantic3' | 'semantic:<class>' | 'openset0'..'openset4' |
  'openset:<k>' | 'group' -> Task; clear error otherwise."""
  text = text.strip()
  if text in ("standard", "group"):
    return Task(text, text)
  if text == "detection" or text.startswith("detection:"):
    name = text.partition(":")[2].strip()
    if not name:
      raise ValueError(f"task {text!r}: expected detection:<generator> (the generated class it "
                       "trains on, e.g. detection:SD1_5) or detection:all")
    if name != DETECTION_ALL:
      name = generators.canonical_name(name)
      if generators.is_real_name(name):
        raise ValueError(f"task {text!r}: a detection task names a generator, not the real class")
    return Task(f"detection:{name}", "detection", generator=name)
  if text.startswith("openset"):
    rest = text[len("openset"):]
    fold = rest[1:] if rest.startswith(":") else rest
    if not fold.isdigit() or (not rest.startswith(":") and int(fold) >= OPENSET_FOLDS):
      raise ValueError(f"task {text!r}: expected openset0..openset{OPENSET_FOLDS - 1} or "
                       "openset:<fold>")
    return Task(f"openset:{int(fold)}", "openset", fold=int(fold))
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
  raise ValueError(f"unknown task {text!r}; expected standard, semantic1, semantic2, semantic3, "
                   "semantic:<class>, openset0..openset4, openset:<fold>, detection:<generator> "
                   "or group")


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


MINIBENCH_DIR = "workdir/minibench"  # the one place `prepare = "minibench"` builds the mini-bench


def builds_minibench(input_config) -> bool:
  """Whether this input config builds the mini-bench on first use: only at MINIBENCH_DIR, so that
  a data_dir pointing anywhere else gets the usual error instead of a mini-bench written there."""
  return (input_config.get("prepare") == "minibench"
          and os.path.abspath(input_config.data_dir) == os.path.abspath(MINIBENCH_DIR))


def prepare_minibench(data_dir: str, task: Task) -> None:
  """Builds the built-in mini-bench and the task's manifest where they are absent (quickstart)."""
  from data_prep import minibench, split  # data preparation, only needed for this convenience

  if not os.path.exists(os.path.join(data_dir, records.DATASET_JSON)):
    minibench.build(data_dir)
  path = manifest_path(data_dir, task.manifest_name)
  if not os.path.exists(path):
    ds = records.Dataset(data_dir)
    if task.protocol in ("standard", "detection"):
      made = split.standard_split(ds)
    elif task.protocol == "semantic":
      made = split.semantic_split(ds, task.semantic)
    elif task.protocol == "openset":
      made = split.openset_split(ds, task.fold)
    else:
      raise ValueError(f"task {task.name}: the mini-bench has no groups; run "
                       "`python -m data_prep.split --protocol group` on your own data")
    manifests.save_manifest(made, path)


def _split_command(data_dir: str, task: Task, official: bool = False) -> str:
  protocol = "standard" if task.protocol == "detection" else task.protocol
  command = f"python -m data_prep.split --data {data_dir} --protocol {protocol}"
  if task.protocol == "semantic":
    command += f" --semantic {task.semantic}"
  if task.protocol == "openset":
    command += f" --fold {task.fold}"
  if task.protocol == "group":
    command += " --test_groups N --val_groups N"
  return command + (" --official" if official else "")


def check_files(input_config, task: Task, before_build: bool = True) -> str | None:
  """The manifest path the run will read, after checking that the dataset and the manifest exist.

  File checks only, no pixels and no JAX, so that a wrong path fails within a second. Returns
  None when the mini-bench will be built first (builds_minibench) and `before_build`.
  """
  data_dir = input_config.data_dir
  if before_build and builds_minibench(input_config):
    return None
  if not os.path.exists(os.path.join(data_dir, records.DATASET_JSON)):
    what = (f"{records.DATASET_JSON} missing" if os.path.isdir(data_dir)
            else "the directory does not exist")
    raise FileNotFoundError(
        f"config.input.data_dir={data_dir!r} holds no dataset ({what}); build one with "
        "`python -m data_prep.ingest` or `python -m data_prep.minibench`")
  name = input_config.manifest or task.manifest_name
  path = manifest_path(data_dir, name)
  if not os.path.exists(path):
    official = name.endswith("_official")
    raise FileNotFoundError(f"manifest {path!r} not found; write it with "
                            f"`{_split_command(data_dir, task, official)}`")
  return path


def load(input_config, task: Task, classes: list[str] | None = None,
         any_protocol: bool = False) -> TaskData:
  """Opens the dataset and the manifest the input config names, checking they belong together.

  `classes` replaces the manifest's label map: a trained run tested on other data keeps its own
  classes, and records of generators it does not know get label -1 (not scored).
  `any_protocol` accepts a manifest of another protocol (testing a run on other splits).
  """
  data_dir = input_config.data_dir
  if builds_minibench(input_config):
    prepare_minibench(data_dir, task)
  path = check_files(input_config, task, before_build=False)
  dataset = records.Dataset(data_dir)
  manifest = manifests.load_manifest(path, dataset)
  expected = "standard" if task.protocol == "detection" else task.protocol
  if manifest.protocol != expected and not any_protocol:
    raise ValueError(f"config.input.manifest {path!r} is a {manifest.protocol} split, but the "
                     f"task {task.name} needs a {expected} split")
  if task.protocol == "detection" and manifest.protocol != "detection":
    manifest = detection_manifest(manifest, dataset, task.generator)
  fraction = float(input_config.get("train_fraction", 1.0))
  if fraction != 1.0:
    manifest = train_fraction(manifest, dataset, fraction,
                              int(input_config.get("train_fraction_seed", 0)))
  if classes is not None:
    manifest = dataclasses.replace(manifest, classes=list(classes))
  return TaskData(dataset, manifest, manifests.labels_for(manifest, dataset))


def detection_manifest(standard: manifests.Manifest, dataset: records.Dataset,
                       generator: str) -> manifests.Manifest:
  """The splits of task detection:<generator>, derived from a standard manifest.

  train and val keep the real images and the generator's (every generator's for "all"); test
  keeps every record, so the detector is tested on real against each generator, seen or not.
  Classes are DETECTION_CLASSES: every generated image is "fake" (manifests.labels_for).
  """
  names = dataset.column("generator").astype(str)
  fake = [c for c in standard.classes if not generators.is_real_name(c)]
  real = [c for c in standard.classes if generators.is_real_name(c)]
  if not real:
    raise ValueError(f"manifest {standard.path!r} has no real class (classes: "
                     f"{', '.join(standard.classes)}); detection needs real images")
  if generator == DETECTION_ALL:
    trained = fake
  elif generator in fake:
    trained = [generator]
  else:
    raise ValueError(f"task detection:{generator}: {generator!r} is not a generator of manifest "
                     f"{standard.path!r}; expected one of {', '.join(fake)} or all")
  keep = np.isin(names, real + trained)
  splits = {split: (positions if split == "test" else positions[keep[positions]])
            for split, positions in standard.splits.items()}
  classes = list(DETECTION_CLASSES)
  options = {**standard.options, "derived_from": standard.name or standard.path,
             "generators": trained}
  report = {"sizes": {k: int(len(v)) for k, v in splits.items()}}
  return dataclasses.replace(
      standard, protocol="detection", options=options, classes=classes, splits=splits,
      report=report, name=f"detection_{generator}",
      digest=manifests.split_digest(classes, splits))


def train_fraction(manifest: manifests.Manifest, dataset: records.Dataset, fraction: float,
                   seed: int = 0) -> manifests.Manifest:
  """The manifest with its train split cut to `fraction` of each class's records (at least one
  each), drawn by `seed`, for data-efficiency studies; val and test are untouched.

  The draw depends only on the split, the fraction and the seed, and a smaller fraction's records
  are a subset of a larger one's: each record gets one random rank per seed.
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"config.input.train_fraction={fraction}; expected a fraction in (0, 1]")
  train = manifest.splits["train"]
  labels = manifests.labels_for(manifest, dataset)[train]
  rank = np.random.default_rng(seed).permutation(len(train))
  keep = np.zeros(len(train), bool)
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    count = max(1, int(round(fraction * len(members))))
    keep[members[np.argsort(rank[members], kind="stable")[:count]]] = True
  splits = {**manifest.splits, "train": train[keep]}
  return dataclasses.replace(
      manifest, splits=splits, options={**manifest.options, "train_fraction": fraction,
                                        "train_fraction_seed": seed},
      digest=manifests.split_digest(manifest.classes, splits))
