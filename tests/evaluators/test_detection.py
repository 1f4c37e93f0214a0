"""The detection evaluator and its metrics: AP, accuracy, F1 and the per-class accuracies against
scikit-learn (ties, a score of exactly the threshold, nothing predicted fake), the per-generator,
mean and pooled layout on synthetic scores, and runs on a tiny mini-bench through the real Runner
compared with scores computed image by image: an attributor, one with a reject class, a
real-vs-fake detection run, a run without a real class (skipped), the shared memo, the config."""

import dataclasses

import ml_collections
import numpy as np
import pytest
from sklearn import metrics as skm

from iab_jax import evaluators, features, metrics
from iab_jax.evaluators import classification, detection
from tests.evaluators import fake

KEYS = ("ap", "accuracy", "f1", "real_accuracy", "fake_accuracy")


def sklearn_detection(p_fake, is_fake, threshold=0.5):
  """The numbers as CNNDetection's and UnivFD's evaluation code computes them."""
  p_fake, is_fake = np.asarray(p_fake), np.asarray(is_fake, bool)
  pred = p_fake > threshold
  return {"ap": skm.average_precision_score(is_fake, p_fake),
          "accuracy": skm.accuracy_score(is_fake, pred),
          "f1": skm.f1_score(is_fake, pred, zero_division=0),
          "real_accuracy": skm.accuracy_score(is_fake[~is_fake], pred[~is_fake]),
          "fake_accuracy": skm.accuracy_score(is_fake[is_fake], pred[is_fake])}


def assert_matches(got, want):
  for key in KEYS:
    assert got[key] == pytest.approx(want[key], abs=1e-12), key


# ---------------------------------------------------------------------------------------------
# metrics.detection_metrics


@pytest.mark.parametrize("seed", range(6))
def test_metrics_equal_sklearn(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(5, 300))
  is_fake = rng.random(n) < rng.uniform(0.2, 0.8)
  is_fake[:2] = [True, False]
  p = np.clip(0.5 + 0.3 * (is_fake - 0.5) + rng.normal(0, 0.3, n), 0, 1)
  if seed % 2:  # coarse scores: many ties, some exactly at the threshold
    p = np.round(p * 4) / 4
    assert (p == 0.5).any()
  for threshold in (0.5, 0.3):
    got = metrics.detection_metrics(p, is_fake, threshold)
    assert_matches(got, sklearn_detection(p, is_fake, threshold))
    assert (got["num_real"], got["num_fake"]) == ((~is_fake).sum(), is_fake.sum())
  assert 0 < got["accuracy"] < 1 and 0 < got["ap"] < 1


def test_threshold_is_strict_and_f1_zero_when_nothing_is_predicted_fake():
  is_fake = np.array([False, True, True, False])
  m = metrics.detection_metrics(np.full(4, 0.5), is_fake)  # exactly 0.5 reads real
  assert (m["real_accuracy"], m["fake_accuracy"], m["accuracy"], m["f1"]) == (1, 0, 0.5, 0)
  assert m["ap"] == pytest.approx(0.5)  # one tie: precision 1/2 at recall 1
  m = metrics.detection_metrics(np.array([0.1, 0.9, 0.8, 0.2]), is_fake)
  assert (m["accuracy"], m["f1"], m["ap"]) == (1, 1, 1)


def test_metrics_errors():
  with pytest.raises(ValueError, match="need real and fake images; got 0 real and 3 fake"):
    metrics.detection_metrics([0.1, 0.2, 0.3], [True, True, True])
  with pytest.raises(ValueError, match="got 2 real and 0 fake"):
    metrics.detection_metrics([0.1, 0.2], [False, False])
  with pytest.raises(ValueError, match="empty"):
    metrics.detection_metrics([], [])
  with pytest.raises(ValueError, match="NaN"):
    metrics.detection_metrics([0.1, np.nan], [True, False])
  with pytest.raises(ValueError, match="equal 1-d shapes"):
    metrics.detection_metrics([0.1, 0.2, 0.3], [True, False])


# ---------------------------------------------------------------------------------------------
# detection.level_metrics on synthetic scores


def test_level_metrics_per_generator_mean_and_pooled():
  rng = np.random.default_rng(3)
  # Registry names in a scrambled order, an alias of the real class and an unregistered name.
  names = np.array(["SDXL"] * 30 + ["real"] * 40 + ["4o"] * 20 + ["my_gan"] * 25
                   + ["dall-e-3"] * 15)
  rng.shuffle(names)
  is_fake = names != "real"
  p = np.round(np.clip(0.5 + 0.4 * (is_fake - 0.5) + rng.normal(0, 0.3, names.size), 0, 1), 2)
  m = detection.level_metrics(p, names, ["SDXL", "my_gan"])
  # Generators in the registry's order, unregistered ones last; aliases kept as the records say.
  assert list(m["per_generator"]) == ["4o", "SDXL", "dall-e-3", "my_gan"]
  for gen, got in m["per_generator"].items():
    pick = (names == "real") | (names == gen)
    assert_matches(got, sklearn_detection(p[pick], is_fake[pick]))
    assert (got["num_real"], got["num_fake"]) == (40, (names == gen).sum())
  for key in KEYS:
    mean = np.mean([sklearn_detection(p[(names == "real") | (names == g)],
                                      is_fake[(names == "real") | (names == g)])[key]
                    for g in ("4o", "SDXL", "dall-e-3", "my_gan")])
    assert m[key] == m["mean"][key] == pytest.approx(mean, abs=1e-12)
  assert_matches(m["pooled"], sklearn_detection(p, is_fake))
  assert (m["num_real"], m["num_fake"], m["trained_on"]) == (40, 90, ["SDXL", "my_gan"])
  # The pooled AP is not the mean of the generators' APs: the two are different numbers.
  assert abs(m["pooled"]["ap"] - m["ap"]) > 1e-3


def test_level_metrics_needs_both_kinds_of_images():
  with pytest.raises(ValueError, match="got 0 real and 2 generated"):
    detection.level_metrics([0.1, 0.2], np.array(["4o", "SDXL"]), [])
  with pytest.raises(ValueError, match="got 2 real and 0 generated"):
    detection.level_metrics([0.1, 0.2], np.array(["real", "real"]), [])


def test_real_column():
  assert detection.real_column(["4o", "real", "SDXL"]) == 1
  assert detection.real_column(["real", "fake"]) == 0
  assert detection.real_column(["cats", "dogs"]) is None


# ---------------------------------------------------------------------------------------------
# The evaluator on a tiny mini-bench, through the classification evaluator's Runner.

EXAMPLES = 63  # records of the test split scored, evenly spread


@pytest.fixture(scope="module")
def data(tiny_bench):
  return fake.load(tiny_bench, "standard")


def _evaluator(method, data, **kwargs):
  return detection.Evaluator(name="detection", method=method, data=data, mesh=fake.mesh(),
                             transform=fake.TRANSFORM, batch_size=8, reading={"worker_count": 0},
                             max_examples=EXAMPLES, **kwargs)


def _check_level(evaluator, variables, level, m, p_fake, names, trained_on):
  """The evaluator's p_fake against p_fake computed image by image, and every number of its
  level against scikit-learn on the evaluator's p_fake (float32 near-ties may order apart)."""
  got = evaluator.p_fake(variables, level)
  np.testing.assert_array_equal(got["position"], evaluator.positions)
  np.testing.assert_allclose(got["p_fake"], p_fake, rtol=1e-4, atol=1e-6)
  p_fake = got["p_fake"]
  is_fake = names != "real"
  gens = sorted(set(names[is_fake]))
  assert sorted(m["per_generator"]) == gens and len(gens) > 2
  for gen in gens:
    pick = ~is_fake | (names == gen)
    want = sklearn_detection(p_fake[pick], is_fake[pick])
    for key in KEYS:
      assert m["per_generator"][gen][key] == pytest.approx(want[key], abs=1e-12), (gen, key)
  for key in KEYS:
    assert m[key] == pytest.approx(np.mean([m["per_generator"][g][key] for g in gens]))
  assert_matches(m["pooled"], sklearn_detection(p_fake, is_fake))
  assert (m["num_real"], m["num_fake"]) == ((~is_fake).sum(), is_fake.sum())
  assert m["trained_on"] == trained_on


@pytest.mark.parametrize("reject_class", [False, True])
def test_attributor_scored_as_a_detector(data, reject_class):
  method = fake.FakeMethod(data.classes, reject_class=reject_class)
  variables = method.variables()
  evaluator = _evaluator(method, data, levels=(0, 3))
  results = evaluator.run(variables, quiet=True)
  positions = features.spread(data.positions("test"), EXAMPLES)
  names = data.dataset.column("generator").astype(str)[positions]
  assert results["num_examples"] == EXAMPLES and results["real_class"] == "real"
  assert results["trained_on"] == [c for c in data.classes if c != "real"]
  assert sorted(results["levels"]) == ["0", "3"]
  assert results["mean_degraded_ap"] is None  # levels 1-6 were not all scored
  real = data.classes.index("real")
  for level in (0, 3):
    scores = method.np_predict(variables, fake.images(data, positions, level))
    assert scores.shape[1] == method.num_classes + reject_class
    # 1 - P(real): the reject column counts as generated.
    p_fake = 1.0 - scores[:, real]
    m = results["levels"][str(level)]
    _check_level(evaluator, variables, level, m, p_fake, names, results["trained_on"])
    assert 0.05 < m["pooled"]["ap"] < 0.999 and 0 < m["pooled"]["accuracy"] < 1
  if reject_class:  # the reject column matters: reading only the known ones would differ
    known = scores[:, :method.num_classes]
    assert not np.allclose(p_fake, 1 - known[:, real] / known.sum(axis=1), atol=1e-3)


def _detection_run_data(data, trained_on):
  """The standard split as a `detection:<generator>` run sees it: classes real and fake, the
  fake class trained on `trained_on`, every other generator's records labelled -1."""
  manifest = dataclasses.replace(data.manifest, protocol="detection", classes=["real", "fake"],
                                 options={"generators": trained_on})
  labels = np.where(data.dataset.column("generator").astype(str) == "real", 0, -1)
  return dataclasses.replace(data, manifest=manifest, labels=labels)


def test_detection_run_scores_generators_it_never_saw(data):
  gen = [c for c in data.classes if c != "real"][0]
  binary = _detection_run_data(data, [gen])
  method = fake.FakeMethod(binary.classes)
  variables = method.variables()
  evaluator = _evaluator(method, binary)
  results = evaluator.run(variables, quiet=True)
  positions = features.spread(data.positions("test"), EXAMPLES)
  names = data.dataset.column("generator").astype(str)[positions]
  assert (binary.labels[positions] == -1).sum() == (names != "real").sum() > 0
  p_fake = 1.0 - method.np_predict(variables, fake.images(data, positions))[:, 0]
  _check_level(evaluator, variables, 0, results["levels"]["0"], p_fake, names, [gen])
  assert results["trained_on"] == [gen]


def test_skipped_without_a_real_class(data):
  gens = [c for c in data.classes if c != "real"]
  manifest = dataclasses.replace(data.manifest, classes=gens)
  no_real = dataclasses.replace(data, manifest=manifest)
  method = fake.FakeMethod(gens)
  results = _evaluator(method, no_real).run(method.variables(), quiet=True)
  assert list(results) == ["skipped"] and "no class of real images" in results["skipped"]
  assert classification.scalars("detection", results) == {}


def test_reads_the_scores_the_test_eval_made(data, monkeypatch):
  method = fake.FakeMethod(data.classes)
  variables = method.variables()
  memo = {}
  test = classification.Evaluator(name="test", method=method, data=data, mesh=fake.mesh(),
                                  transform=fake.TRANSFORM, batch_size=8,
                                  reading={"worker_count": 0}, max_examples=EXAMPLES, memo=memo)
  test.run(variables, quiet=True)
  assert len(memo) == 1
  evaluator = _evaluator(method, data, memo=memo)

  def no_step(*args, **kwargs):
    raise AssertionError("the detection eval ran the model again")

  monkeypatch.setattr(evaluator.runner, "step", no_step)
  results = evaluator.run(variables, quiet=True)
  assert len(memo) == 1 and results["levels"]["0"]["num_real"] > 0


def test_made_from_the_config(data, tiny_bench):
  from configs import common

  method = fake.FakeMethod(data.classes)
  config = common.task_config("standard", method="fake")
  config.input.data_dir, config.input.worker_count = tiny_bench, 0
  config.max_eval_examples = EXAMPLES
  evals = {"detection": {"type": "detection", "split": "test", "levels": (0,),
                         "threshold": 0.7}}
  results = evaluators.run_all(ml_collections.ConfigDict({**config, "evals": evals}),
                               method=method, data=data, mesh=fake.mesh(),
                               variables=method.variables(), transform=fake.TRANSFORM)
  got = results["detection"]
  assert got["threshold"] == 0.7 and got["num_examples"] == EXAMPLES
  assert "detection/level0/accuracy" in classification.scalars("detection", got)
  with pytest.raises(ValueError, match="config.evals.bad"):
    evaluators.make("bad", {"type": "detection", "nope": 1}, method=method, data=data,
                    mesh=fake.mesh(), config=config, transform=fake.TRANSFORM)
