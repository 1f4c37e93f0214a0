"""The open-set evaluator on a tiny mini-bench: every reported number against NumPy and
scikit-learn computed from images decoded one by one; reject classes; the config plumbing."""

import ml_collections
import numpy as np
import pytest
from sklearn import metrics as skm

from data_prep import split
from iab_jax import evaluators
from iab_jax.data import manifests, records
from iab_jax.evaluators import classification, open_set
from tests.evaluators import fake
from tests.test_metrics import brute_force_oscr


@pytest.fixture(scope="module")
def data(tiny_bench, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("openset") / "openset_fold0.json")
  manifests.save_manifest(split.openset_split(records.Dataset(tiny_bench), 0), path)
  return fake.load(tiny_bench, "openset0", manifest=path)


def _evaluator(method, data, **kwargs):
  return open_set.Evaluator(name="openset", method=method, data=data, mesh=fake.mesh(),
                            transform=fake.TRANSFORM, batch_size=8, reading={"worker_count": 0},
                            **kwargs)


def _expected(method, variables, data, positions, level):
  """The level's numbers straight from the definitions, with scikit-learn's AUROC."""
  scores = method.np_predict(variables, fake.images(data, positions, level))
  labels = data.labels[positions]
  known = labels >= 0
  closed = scores[:, :method.num_classes]
  confidence = closed.max(axis=1)
  correct = known & (closed.argmax(axis=1) == labels)
  generator = data.dataset.column("generator").astype(str)[positions]
  per_generator = {}
  for gen in sorted(set(generator[~known])):
    pick = known | (generator == gen)
    per_generator[gen] = {"auroc": skm.roc_auc_score(known[pick], confidence[pick]),
                          "num_images": int((generator == gen).sum())}
  return scores, {
      "closed_set_accuracy": correct.sum() / known.sum(),
      "auroc": skm.roc_auc_score(known, confidence),
      "oscr": brute_force_oscr(confidence, correct, known),
      "num_known": int(known.sum()), "num_unknown": int((~known).sum()),
      "per_unknown_generator": per_generator}


@pytest.mark.parametrize("reject_class", [False, True])
def test_every_number_equals_a_direct_computation(data, reject_class):
  method = fake.FakeMethod(data.classes, reject_class=reject_class)
  variables = method.variables()
  evaluator = _evaluator(method, data, levels=(0, 3))
  results = evaluator.run(variables, quiet=True)
  positions = np.concatenate([data.positions("test"), data.positions("test_unknown")])
  assert results["split"] == "test" and results["unknown_split"] == "test_unknown"
  assert results["num_examples"] == len(positions)
  assert sorted(results["levels"]) == ["0", "3"]
  for level in (0, 3):
    got = evaluator.scores(variables, level)
    np.testing.assert_array_equal(got["position"], positions)
    scores, want = _expected(method, variables, data, positions, level)
    assert got["scores"].shape == (len(positions), method.num_classes + reject_class)
    np.testing.assert_allclose(got["scores"], scores, rtol=1e-4, atol=1e-6)
    m = results["levels"][str(level)]
    for key in ("closed_set_accuracy", "auroc", "oscr"):
      assert m[key] == pytest.approx(want[key], abs=1e-9), key
    assert (m["num_known"], m["num_unknown"]) == (want["num_known"], want["num_unknown"])
    assert m["num_unknown"] == len(data.positions("test_unknown")) > 0
    assert set(m["per_unknown_generator"]) == set(data.manifest.options["unknown"])
    for gen, entry in want["per_unknown_generator"].items():
      assert m["per_unknown_generator"][gen]["auroc"] == pytest.approx(entry["auroc"], abs=1e-9)
      assert m["per_unknown_generator"][gen]["num_images"] == entry["num_images"]
    assert 0 <= m["oscr"] <= m["closed_set_accuracy"]
    # Not a degenerate case: several classes predicted, some right, confidence varies.
    closed = scores[:, :method.num_classes]
    assert len(set(closed.argmax(axis=1))) > 2 and 0 < m["closed_set_accuracy"] < 1
    assert 0.05 < m["auroc"] < 0.95
  if reject_class:
    # The reject column wins often, so reading it would change the closed-set numbers.
    assert (scores.argmax(axis=1) == method.num_classes).mean() > 0.2
    # The classification evaluator reads the same first T columns.
    test = classification.Evaluator(name="test", method=method, data=data, mesh=fake.mesh(),
                                    transform=fake.TRANSFORM, batch_size=8,
                                    reading={"worker_count": 0}).run(variables, quiet=True)
    assert test["levels"]["0"]["accuracy"] == pytest.approx(
        results["levels"]["0"]["closed_set_accuracy"])


def test_made_from_the_config_of_an_openset_task(data, tiny_bench):
  from configs import common

  method = fake.FakeMethod(data.classes)
  config = common.task_config("openset0", method="fake")
  config.input.data_dir, config.input.worker_count = tiny_bench, 0
  config.max_eval_examples = 12  # per split, evenly spread
  results = evaluators.run_all(ml_collections.ConfigDict({**config, "evals": {
      "openset": config.evals.openset}}), method=method, data=data, mesh=fake.mesh(),
      variables=method.variables(), transform=fake.TRANSFORM)
  m = results["openset"]["levels"]["0"]
  assert m["num_known"] == 12 and m["num_unknown"] == min(12, len(data.positions("test_unknown")))
  assert set(classification.scalars("openset", results["openset"])) == {
      "openset/level0/closed_set_accuracy", "openset/level0/auroc", "openset/level0/oscr"}


def test_needs_unknown_images(data):
  method = fake.FakeMethod(data.classes)
  evaluator = _evaluator(method, data, unknown_split="")
  with pytest.raises(ValueError, match="need known and unknown images"):
    evaluator.run(method.variables(), quiet=True)
  with pytest.raises(ValueError, match="no split 'nope'"):
    _evaluator(method, data, unknown_split="nope")
