"""Every method's `runlocal` config end to end on a tiny mini-bench: standard and semantic tasks.

runlocal trains a few steps and scores a few batches at all seven degradation levels, with random
initialisation where a pretrained file is absent and the large backbones shrunk by config; these
tests check that each method runs through the real loop (input pipeline, jitted steps, frozen
feature cache, checkpoints, evaluators) and writes complete results, not that it learns (the
mini-bench sweep measures that).
"""

import importlib
import json
import os

import numpy as np
import pytest

from iab_jax import main as main_lib, runs

METHODS = ("dct_cnn", "clip_lr", "hifi_net", "defl", "fsd", "dna_det", "repmix", "patch_forensics",
           "patchcraft", "ssp", "embedding_lr")
TASKS = ("standard", "semantic1")


def run_method(method: str, task: str, data_dir: str, workdir: str, extra: str = ""):
  config = importlib.import_module(f"configs.{method}").get_config(
      f"{task},runlocal,data={data_dir}{extra}")
  config.feature_cache = os.path.join(os.path.dirname(workdir), "features")
  return config, main_lib.run(config, workdir)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("method", METHODS)
def test_runlocal(method, task, tiny_bench, tmp_path):
  workdir = str(tmp_path / "run")
  config, results = run_method(method, task, tiny_bench, workdir)
  with open(os.path.join(workdir, runs.RESULTS_JSON)) as f:
    saved = json.load(f)
  assert saved["method"] == method and saved["task"] == config.task
  levels = saved["evals"]["test"]["levels"]
  assert sorted(levels, key=int) == [str(k) for k in range(7)]
  for level in levels.values():
    assert 0.0 <= level["accuracy"] <= 1.0
    assert level["num_examples"] == config.max_eval_examples
    assert np.isfinite(level["accuracy"])
  assert len(saved["classes"]) == 7
  assert results["checkpoint"]["step"] >= 1


def test_attribute_computes_the_frozen_features_the_cache_holds(tiny_bench, tmp_path):
  """`iab_jax.attribute` on arbitrary images computes a frozen backbone's features itself; on
  the test split's own images its probabilities equal those from the cached features."""
  import jax

  from iab_jax import evaluators, features, sharding, tasks
  from iab_jax.attribute import Attributor
  from iab_jax.data import records

  workdir = str(tmp_path / "run")
  config, _ = run_method("clip_lr", "standard", tiny_bench, workdir)
  attributor = Attributor(workdir)
  data = tasks.load(config.input, tasks.parse_task(config.task))
  positions = features.spread(data.positions("test"), config.max_eval_examples)[:8]
  probabilities = attributor.predict([records.decode(data.dataset.raw(int(p)))
                                      for p in positions])
  provider = evaluators.provider(attributor.method, data=data, config=config,
                                 mesh=attributor.mesh)
  cached = {name: table.lookup(positions) for name, table in
            provider.tables("test", 0, config.max_eval_examples).items()}
  expected = jax.jit(attributor.method.predict)(sharding.to_host(attributor.variables),
                                                {"features": cached})
  np.testing.assert_allclose(probabilities, np.asarray(expected), rtol=1e-4, atol=1e-5)
  assert probabilities.shape == (8, 7)


@pytest.mark.parametrize("method", ("patchcraft", "patch_forensics"))
def test_attribute_takes_several_views_and_the_headline_rule(method, tiny_bench, tmp_path):
  """`iab_jax.attribute` feeds a method whose evaluation transform makes several views
  (PatchCraft's rich and poor tiles) and scores by the method's headline prediction rule
  (PatchForensics' patch vote) exactly as predict does on the transformed images."""
  import jax

  from iab_jax import tasks
  from iab_jax.attribute import Attributor
  from iab_jax.data import pipeline, records, transforms

  workdir = str(tmp_path / "run")
  config, _ = run_method(method, "standard", tiny_bench, workdir)
  attributor = Attributor(workdir)
  data = tasks.load(config.input, tasks.parse_task(config.task))
  images = [records.decode(data.dataset.raw(int(p))) for p in data.positions("test")[:4]]
  probabilities = attributor.predict(images)
  transform = transforms.parse(attributor.method.transforms()[1])
  batch = {"image": pipeline.stack_tree([transform(image) for image in images])}
  scores = jax.jit(attributor.method.predict)(attributor.variables, batch)
  if attributor.method.prediction_rule:
    assert set(scores) == {"vote", "average"} and attributor.method.prediction_rule == "vote"
  np.testing.assert_allclose(probabilities, np.asarray(attributor.method.headline(scores)),
                             rtol=1e-5, atol=1e-6)
  assert probabilities.shape == (4, 7)
  # `iab_jax.evaluate --evals detection` restores such a run too (its example is several views)
  # and scores it by the same headline rule: p_fake = 1 - P(real) of the run's own test scores.
  from iab_jax import evaluate as evaluate_lib

  evaluate_lib.select_evals(config, "detection")
  detection = evaluate_lib.evaluate(config, workdir, "detection")["evals"]["detection"]
  with open(os.path.join(workdir, runs.RESULTS_JSON)) as f:
    own = json.load(f)["evals"]["detection"]
  assert detection["levels"]["0"]["per_generator"] == own["levels"]["0"]["per_generator"]


@pytest.mark.parametrize("method", ("dct_cnn", "embedding_lr"))
def test_any_method_trains_on_a_detection_task(method, tiny_bench, tmp_path):
  """`configs/<method>.py:detection:<generator>`: a two-class run (real, fake) on the real images
  and one generator's, tested real against every generator by the detection eval."""
  workdir = str(tmp_path / "run")
  config, _ = run_method(method, "detection:mini_nearest", tiny_bench, workdir)
  with open(os.path.join(workdir, runs.RESULTS_JSON)) as f:
    saved = json.load(f)
  assert saved["classes"] == ["real", "fake"] and list(saved["evals"]) == ["detection"]
  clean = saved["evals"]["detection"]["levels"]["0"]
  assert clean["trained_on"] == ["mini_nearest"] and len(clean["per_generator"]) == 6
  assert sorted(saved["evals"]["detection"]["levels"], key=int) == [str(k) for k in range(7)]
