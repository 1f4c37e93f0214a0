"""The image-to-model evaluator on a tiny mini-bench: the drawn sets, the embeddings and every
AUC against NumPy and scikit-learn; pair scores a method overrides; frozen features; errors."""

import numpy as np
import pytest
from sklearn import metrics as skm

from iab_jax.evaluators import image_to_model
from tests.evaluators import fake


@pytest.fixture(scope="module")
def data(tiny_bench):
  return fake.load(tiny_bench, "standard")


def _evaluator(method, data, features=None, **kwargs):
  return image_to_model.Evaluator(name="i2m", method=method, data=data, mesh=fake.mesh(),
                                  transform=fake.TRANSFORM, batch_size=8,
                                  reading={"worker_count": 0}, features=features, **kwargs)


def _cosine(q, s):
  q = q / np.linalg.norm(q, axis=1, keepdims=True)
  s = s / np.linalg.norm(s, axis=1, keepdims=True)
  return q @ s.T


def _check(results, evaluator, data, method, pair_score, level=0):
  """Every number of `results` from NumPy: the sets, embeddings of directly decoded images,
  mean pair scores, scikit-learn AUCs."""
  generator = data.dataset.column("generator").astype(str)
  positions = evaluator.runner.data.positions(evaluator.split)  # "all" is added for it
  names = evaluator.classes
  assert results["classes"] == names
  embedding = {}
  for d in evaluator.draws:
    mine = positions[generator[positions] == d.name]
    assert set(d.support) | set(d.queries) <= set(mine) and not set(d.support) & set(d.queries)
    assert results["num_images"][d.name] == len(mine)
    assert results["support_size"][d.name] == len(d.support)
    assert results["num_queries"][d.name] == len(d.queries)
    for p, z in zip(np.concatenate([d.support, d.queries]),
                    method.np_embed(fake.images(data, np.concatenate([d.support, d.queries]),
                                                level))):
      embedding[int(p)] = z
  # The evaluator's embeddings are the direct ones.
  got = evaluator.embeddings(method.variables(), level)
  assert set(got) == set(embedding)
  for p, z in embedding.items():
    np.testing.assert_allclose(got[p], z, rtol=1e-4, atol=1e-5)
  # Query scores: mean pair score against each target's support set.
  scores = {}
  for t, target in enumerate(evaluator.draws):
    support = np.stack([embedding[int(p)] for p in target.support])
    for d in evaluator.draws:
      queries = np.stack([embedding[int(p)] for p in d.queries])
      scores[target.name, d.name] = pair_score(queries, support).mean(axis=1)
  m = results["levels"][str(level)]
  per_target, ovr = {}, {}
  for t in names:
    ovo = {}
    for o in names:
      if o == t:
        continue
      y = np.r_[np.ones(len(scores[t, t])), np.zeros(len(scores[t, o]))]
      ovo[o] = skm.roc_auc_score(y, np.r_[scores[t, t], scores[t, o]])
      assert m["auc_ovo"][t][o] == pytest.approx(ovo[o], abs=1e-6), (t, o)
    per_target[t] = np.mean(list(ovo.values()))
    assert m["auc_ovo_per_target"][t] == pytest.approx(per_target[t], abs=1e-6)
    rest = np.concatenate([scores[t, o] for o in names if o != t])
    ovr[t] = skm.roc_auc_score(np.r_[np.ones(len(scores[t, t])), np.zeros(len(rest))],
                               np.r_[scores[t, t], rest])
    assert m["auc_ovr"][t] == pytest.approx(ovr[t], abs=1e-6)
  for key, values in (("auc_ovo", per_target), ("auc_ovr", ovr)):
    values = list(values.values())
    assert m[f"{key}_mean"] == pytest.approx(np.mean(values), abs=1e-6)
    assert m[f"{key}_std"] == pytest.approx(np.std(values), abs=1e-6)
  # Not a degenerate case (every AUC alike), so the comparisons above mean something.
  assert len({round(v, 6) for row in m["auc_ovo"].values() for v in row.values()}) > 3
  return m


def test_every_number_equals_a_direct_computation(data):
  method = fake.FakeMethod(data.classes)
  evaluator = _evaluator(method, data, support=5, queries=3, levels=(0, 3))
  results = evaluator.run(method.variables(), quiet=True)
  generators = [c for c in data.classes if c != "real"]
  assert results["classes"] == generators and len(generators) == 6
  assert set(results["support_size"].values()) == {5}
  assert set(results["num_queries"].values()) == {3}
  assert (results["split"], results["support"], results["queries"], results["seed"]) == (
      "test", 5, 3, 0)
  for level in (0, 3):
    _check(results, evaluator, data, method, _cosine, level)
  # The same seed draws the same sets; another seed other sets.
  again = _evaluator(method, data, support=5, queries=3)
  assert all(np.array_equal(a.support, b.support) and np.array_equal(a.queries, b.queries)
             for a, b in zip(evaluator.draws, again.draws))
  other = _evaluator(method, data, support=5, queries=3, seed=1)
  assert any(not np.array_equal(a.support, b.support)
             for a, b in zip(evaluator.draws, other.draws))


def test_small_classes_keep_a_query_and_named_classes(data):
  method = fake.NegativeDistance(data.classes)
  classes = ("real", data.classes[2], data.classes[5])
  evaluator = _evaluator(method, data, classes=classes, support=100, queries=100)
  results = evaluator.run(method.variables(), quiet=True)
  assert results["classes"] == list(classes)
  for name in classes:
    n = results["num_images"][name]
    assert results["support_size"][name] == n - 1 and results["num_queries"][name] == 1
  with pytest.raises(AssertionError):  # one query per class: the AUCs are 0 or 1 ...
    _check(results, evaluator, data, method,
           lambda q, s: -((q[:, None] - s[None]) ** 2).sum(-1))
  m = results["levels"]["0"]
  assert set(m["auc_ovr"].values()) <= {0.0, 0.5, 1.0}


def test_own_pair_scores_and_frozen_features_over_all_records(data, tmp_path):
  method = fake.NegativeDistance(data.classes, uses_images=False, frozen=fake.frozen_spec())
  features = fake.provider(method, data, str(tmp_path))
  evaluator = _evaluator(method, data, features=features, split="all", support=8, queries=20)
  assert "all" not in data.manifest.splits  # the run's data is left as it was
  results = evaluator.run(method.variables(), quiet=True)
  assert results["split"] == "all" and set(results["num_images"].values()) == {96}
  m = _check(results, evaluator, data, method,
             lambda q, s: -((q[:, None] - s[None]) ** 2).sum(-1))
  # Cosine similarity would give other numbers: the method's pair score is the one used.
  embedding = evaluator.embeddings(method.variables(), 0)

  def stack(positions):
    return np.stack([embedding[int(p)] for p in positions])

  cosine = np.stack([np.concatenate([_cosine(stack(d.queries), stack(t.support)).mean(axis=1)
                                     for d in evaluator.draws]) for t in evaluator.draws], axis=1)
  query_class = np.concatenate([np.full(len(d.queries), i) for i, d in enumerate(evaluator.draws)])
  other = image_to_model.auc_tables(cosine, query_class, evaluator.classes)
  assert other["auc_ovo_mean"] != pytest.approx(m["auc_ovo_mean"], abs=1e-6)


def test_errors(data):
  with pytest.raises(ValueError, match="class 'x' has 1 image"):
    image_to_model.draw("x", np.array([5]), support=3, queries=3, seed=0)
  method = fake.NoEmbedding(data.classes)
  evaluator = _evaluator(method, data, support=2, queries=2)
  with pytest.raises(ValueError, match="Fake yields no embeddings"):
    evaluator.run(method.variables(), quiet=True)
  with pytest.raises(ValueError, match="not in split 'test'"):
    _evaluator(method, data, classes=("real", "nope"))
  with pytest.raises(ValueError, match="at least 2 classes"):
    _evaluator(method, data, classes=("real",))
  with pytest.raises(ValueError, match="support=0"):
    _evaluator(method, data, support=0)
