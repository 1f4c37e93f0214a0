"""One-for-All through the real loop: simulator run -> extractor run that names it -> open-set run
that names the extractor; exact resumes of both training runs, memory bank and data position
included; the fingerprint batch's layout and what each frozen network receives."""

import importlib
import json
import os

import jax
import numpy as np
import pytest

from iab_jax import checkpointing, main as main_lib, runs
from iab_jax.trainers import supervised


def _config(name: str, task: str, data_dir: str, **overrides):
  config = importlib.import_module(f"configs.{name}").get_config(
      f"{task},runlocal,data={data_dir}")
  config.max_steps_per_epoch = 0  # the runs below are stated in steps
  for key, value in overrides.items():
    target = config
    *path, leaf = key.split(".")
    for part in path:
      target = target[part]
    target[leaf] = value
  return config


@pytest.fixture(scope="module")
def openset_bench(tiny_bench):
  """The tiny mini-bench with open-set fold 0 written next to its other manifests."""
  from data_prep import split
  from iab_jax.data import manifests, records

  made = split.openset_split(records.Dataset(tiny_bench), 0)
  manifests.save_manifest(made, manifests.default_manifest_path(tiny_bench, "openset", fold=0))
  return tiny_bench


@pytest.fixture(scope="module")
def chain(openset_bench, tmp_path_factory):
  root = tmp_path_factory.mktemp("ofa")
  sim_dir, ofa_dir = str(root / "sim"), str(root / "ofa")
  sim = main_lib.run(_config("ofa_simulator", "standard", openset_bench, num_steps=4,
                             checkpoint_every_steps=2), sim_dir)
  ofa = main_lib.run(_config("ofa", "standard", openset_bench, num_steps=4,
                             checkpoint_every_steps=2, **{"simulator.workdir": sim_dir}), ofa_dir)
  return {"root": root, "sim_dir": sim_dir, "ofa_dir": ofa_dir, "sim": sim, "ofa": ofa}


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_simulator_trains_on_real_images_only(chain):
  logged = [m for m in _metrics(chain["sim_dir"]) if "train/mse" in m]
  assert [m["step"] for m in logged] == [1, 2, 3, 4]
  assert all(np.isfinite(m["train/mse"]) and m["train/lpips"] >= 0 for m in logged)
  assert chain["sim"]["checkpoint"]["step"] == 4
  assert chain["sim"]["evals"] == {}


def test_extractor_run_names_its_simulator_and_is_verified_image_to_model(chain):
  from iab_jax.methods import ofa_simulator

  results = chain["ofa"]
  i2m = results["evals"]["image_to_model"]
  assert i2m  # the evaluator's own numbers are checked in tests/evaluators
  # The extractor run keeps the simulator run's weights, frozen, in its "simulator" collection.
  _, sim_vars, _ = ofa_simulator.restore_simulator(chain["sim_dir"], None)
  _, model = _latest_model(chain["ofa_dir"])
  kept = model["model_state"]["simulator"]
  for a, b in zip(jax.tree.leaves(kept["params"]), jax.tree.leaves(sim_vars["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  memory = model["model_state"]["memory"]
  # 4 steps x 2 sets x 2 reconstructions pushed into a 16-entry ring: full, wrapped once.
  assert int(np.sum(memory["valid"])) == 16
  assert int(memory["ptr"]) == (4 * 2 * 2) % 16


def test_open_set_run_on_the_extractor_run(chain, openset_bench):
  config = _config("ofa", "openset0", openset_bench, **{"extractor.workdir": chain["ofa_dir"]})
  config.reject.num_epochs = 1
  config.num_epochs = 1
  results = main_lib.run(config, str(chain["root"] / "open0"))
  assert results["protocol"] == "openset"
  assert "openset" in results["evals"]
  level = results["evals"]["openset"]["levels"]["0"]
  assert 0.0 <= level["auroc"] <= 1.0 and 0.0 <= level["oscr"] <= 1.0
  assert level["num_unknown"] > 0
  # iab_jax.attribute names the reject column "unknown".
  from iab_jax.attribute import Attributor

  attributor = Attributor(str(chain["root"] / "open0"))
  assert attributor.labels == [*results["classes"], "unknown"]
  images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
  probabilities = attributor.predict(list(images))
  assert probabilities.shape == (3, len(results["classes"]) + 1)
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def _crash_after_save(monkeypatch, at_step):
  class Crash(Exception):
    pass

  real_save = checkpointing.Checkpoints.save

  def save(self, step, *args, **kwargs):
    real_save(self, step, *args, **kwargs)
    if step == at_step:
      raise Crash

  monkeypatch.setattr(checkpointing.Checkpoints, "save", save)
  return Crash, real_save


def _latest_model(workdir):
  """(step, the model item as saved: params and every other collection) of a run's latest
  checkpoint."""
  import orbax.checkpoint as ocp

  ckpt = checkpointing.Checkpoints(os.path.join(workdir, runs.CHECKPOINTS), asynchronous=False)
  try:
    step = ckpt.latest_step()
    return step, ckpt.manager.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore()))["model"]
  finally:
    ckpt.close()


@pytest.mark.parametrize("which", ["ofa_simulator", "ofa"])
def test_killed_run_resumes_exactly(which, chain, openset_bench, tmp_path, monkeypatch):
  workdir = str(tmp_path / which)
  reference_dir = chain["sim_dir"] if which == "ofa_simulator" else chain["ofa_dir"]
  extra = {} if which == "ofa_simulator" else {"simulator.workdir": chain["sim_dir"]}
  config = _config(which, "standard", openset_bench, num_steps=4, checkpoint_every_steps=2,
                   **extra)
  crash, real_save = _crash_after_save(monkeypatch, 2)
  with pytest.raises(crash):
    main_lib.run(config, workdir)
  monkeypatch.setattr(checkpointing.Checkpoints, "save", real_save)
  resumed = main_lib.run(config, workdir)
  assert resumed["checkpoint"]["step"] == 4
  step_a, model_a = _latest_model(reference_dir)
  step_b, model_b = _latest_model(workdir)
  assert step_a == step_b == 4
  # Every variable, the memory bank and the batch statistics included, is what the uninterrupted
  # run ended with: the resumed run read the same batches and drew the same architectures.
  leaves_a = jax.tree_util.tree_leaves_with_path(model_a)
  leaves_b = dict(jax.tree_util.tree_leaves_with_path(model_b))
  assert len(leaves_a) == len(leaves_b)
  for path, a in leaves_a:
    np.testing.assert_array_equal(np.asarray(a), np.asarray(leaves_b[path]),
                                  err_msg=jax.tree_util.keystr(path))


def test_phase_classes_select_the_training_records(tiny_bench):
  from iab_jax import tasks
  from iab_jax.methods import base

  config = _config("ofa_simulator", "standard", tiny_bench)
  data = tasks.load(config.input, tasks.parse_task("standard"))
  train = data.positions("train")
  phase = base.Phase("p", 1, {}, select_best=False, validate=False, classes=("real",))
  chosen = supervised.phase_training_positions(phase, data, train)
  real = data.classes.index("real")
  assert len(chosen) == int(np.sum(data.labels[train] == real)) > 0
  assert np.all(data.labels[chosen] == real)
  with pytest.raises(ValueError, match="'photos'"):
    supervised.phase_training_positions(
        base.Phase("p", 1, {}, select_best=False, validate=False, classes=("photos",)), data, train)
  with pytest.raises(ValueError, match="num_epochs=1"):
    base.Phase("p", 2, {}, num_steps=5)
