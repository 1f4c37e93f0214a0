"""Task names: the paper's sub-tasks and any of the ten semantic classes."""

import numpy as np
import pytest

from iab_jax import tasks


@pytest.mark.parametrize("text, name, semantic", [
    ("standard", "standard", None),
    ("semantic1", "semantic:cat", "cat"),
    ("semantic2", "semantic:bedroom", "bedroom"),
    ("semantic3", "semantic:FFHQ", "FFHQ"),
    ("semantic:Scene/church", "semantic:church", "church"),
    ("semantic:HumanFace_celebahq", "semantic:celebahq", "celebahq"),
])
def test_parse(text, name, semantic):
  task = tasks.parse_task(text)
  assert (task.name, task.semantic) == (name, semantic)
  assert task.manifest_name == ("standard" if semantic is None else f"semantic_{semantic}")


@pytest.mark.parametrize("text", ["semantic0", "semantic:", "openset", "Standard"])
def test_unknown(text):
  with pytest.raises(ValueError, match="task"):
    tasks.parse_task(text)


def test_missing_manifest_says_how_to_make_it(tiny_bench):
  from configs import common

  cfg = common.input_config(tiny_bench)
  with pytest.raises(FileNotFoundError, match="--protocol semantic --semantic dog"):
    tasks.load(cfg, tasks.parse_task("semantic:dog"))
  data = tasks.load(cfg, tasks.parse_task("semantic1"))
  assert data.classes[0] == "real" and len(data.positions("train")) > 0
  with pytest.raises(ValueError, match="no split 'holdout'"):
    data.positions("holdout")


@pytest.mark.parametrize("text, fold", [("openset0", 0), ("openset4", 4), ("openset:2", 2),
                                        ("openset:7", 7)])
def test_parse_openset(text, fold):
  task = tasks.parse_task(text)
  assert (task.name, task.protocol, task.fold) == (f"openset:{fold}", "openset", fold)
  assert task.manifest_name == f"openset_fold{fold}"
  assert tasks.parse_task(task.name) == task  # the canonical name parses to itself


@pytest.mark.parametrize("text", ["openset5", "openset:", "openset:x", "openset-1"])
def test_unknown_openset(text):
  with pytest.raises(ValueError, match="openset"):
    tasks.parse_task(text)


def test_openset_task_config_and_minibench_manifest(tiny_bench, tmp_path):
  import shutil

  from configs import common

  config = common.task_config("openset1", method="resnet50")
  assert config.task == "openset:1"
  assert config.evals.test.type == "classification" and config.evals.test.levels == tuple(range(7))
  assert dict(config.evals.openset) == {"type": "open_set", "split": "test",
                                        "unknown_split": "test_unknown", "levels": (0,)}
  with pytest.raises(ValueError, match="official"):
    common.task_config("openset1,official", method="resnet50")
  with pytest.raises(FileNotFoundError, match="--protocol openset --fold 1"):
    tasks.load(common.input_config(tiny_bench), tasks.parse_task("openset1"))

  # prepare_minibench writes the fold's manifest next to an existing dataset.
  root = str(tmp_path / "bench")
  shutil.copytree(tiny_bench, root, ignore=shutil.ignore_patterns("splits", "features"))
  task = tasks.parse_task("openset1")
  tasks.prepare_minibench(root, task)
  data = tasks.load(common.input_config(root), task)
  unknown = data.manifest.options["unknown"]
  assert unknown and not set(unknown) & set(data.classes) and "real" in data.classes
  for split in ("train", "val", "test"):
    assert (data.labels[data.positions(split)] >= 0).all()
  assert (data.labels[data.positions("test_unknown")] == -1).all()
  generator = data.dataset.column("generator").astype(str)
  assert set(generator[data.positions("test_unknown")]) == set(unknown)


@pytest.mark.parametrize("text, generator", [("detection:mini_bicubic", "mini_bicubic"),
                                             ("detection:sd-v1.5", "SD1_5"),
                                             ("detection:all", "all")])
def test_parse_detection(text, generator):
  task = tasks.parse_task(text)
  assert (task.protocol, task.generator, task.name) == ("detection", generator,
                                                        f"detection:{generator}")
  assert task.manifest_name == "standard"  # derived from the standard split


@pytest.mark.parametrize("text", ["detection", "detection:", "detection:real"])
def test_unknown_detection(text):
  with pytest.raises(ValueError, match="detection"):
    tasks.parse_task(text)


def test_detection_manifest_trains_on_one_generator_and_tests_on_all(tiny_bench):
  from configs import common

  standard = tasks.load(common.input_config(tiny_bench), tasks.parse_task("standard"))
  data = tasks.load(common.input_config(tiny_bench), tasks.parse_task("detection:mini_nearest"))
  assert data.classes == ["real", "fake"] and data.manifest.protocol == "detection"
  assert data.manifest.options["generators"] == ["mini_nearest"]
  names = data.dataset.column("generator").astype(str)
  for split in ("train", "val"):
    got = data.positions(split)
    want = standard.positions(split)
    want = want[np.isin(names[want], ["real", "mini_nearest"])]
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(data.positions("test"), standard.positions("test"))
  test = data.positions("test")
  np.testing.assert_array_equal(data.labels[test], (names[test] != "real").astype(np.int32))
  everything = tasks.load(common.input_config(tiny_bench), tasks.parse_task("detection:all"))
  np.testing.assert_array_equal(everything.positions("train"), standard.positions("train"))
  with pytest.raises(ValueError, match="'mini_missing' is not a generator"):
    tasks.load(common.input_config(tiny_bench), tasks.parse_task("detection:mini_missing"))
  # Its config tests by the detection eval alone; other tasks have it beside the test eval.
  config = common.task_config("detection:mini_nearest", method="resnet50")
  assert list(config.evals) == ["detection"] and config.evals.detection.levels == tuple(range(7))
  assert set(common.task_config("standard", method="resnet50").evals) == {"test", "detection"}


def test_train_fraction_is_stratified_nested_and_keeps_every_class(tiny_bench):
  from configs import common

  config = common.input_config(tiny_bench)
  full = tasks.load(config, tasks.parse_task("standard"))
  full_counts = np.bincount(full.labels[full.positions("train")])
  kept = {}
  for fraction in (0.001, 0.1, 0.5):
    config.train_fraction = fraction
    data = tasks.load(config, tasks.parse_task("standard"))
    train = data.positions("train")
    counts = np.bincount(data.labels[train], minlength=len(full_counts))
    np.testing.assert_array_equal(counts, np.maximum(1, np.round(fraction * full_counts)))
    assert set(train) <= set(full.positions("train"))
    np.testing.assert_array_equal(data.positions("test"), full.positions("test"))
    assert data.manifest.options["train_fraction"] == fraction
    kept[fraction] = set(train.tolist())
  assert kept[0.001] <= kept[0.1] <= kept[0.5]
  config.train_fraction_seed = 1
  assert set(tasks.load(config, tasks.parse_task("standard")).positions("train")) != kept[0.5]
  config.train_fraction = 1.5
  with pytest.raises(ValueError, match=r"config.input.train_fraction=1.5"):
    tasks.load(config, tasks.parse_task("standard"))
