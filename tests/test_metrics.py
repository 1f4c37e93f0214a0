"""The NumPy metrics must equal scikit-learn's on the same predictions, ties included."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from sklearn import metrics as skm

from iab_jax import metrics


def random_case(n: int, num_classes: int, seed: int, *, decimals: int | None = 1,
                weights: np.ndarray | None = None, absent: tuple[int, ...] = ()):
  """Probabilities (rounded, so that many examples tie) and labels drawn with `weights`."""
  rng = np.random.default_rng(seed)
  probs = metrics.softmax(rng.normal(size=(n, num_classes)) * 1.5)
  if decimals is not None:
    probs = np.round(probs, decimals)
  if weights is None:
    weights = np.ones(num_classes)
  weights = np.asarray(weights, dtype=np.float64).copy()
  weights[list(absent)] = 0
  labels = rng.choice(num_classes, size=n, p=weights / weights.sum())
  return probs, labels


def sklearn_per_class(scores, labels, num_classes):
  """scikit-learn's one-vs-rest AUC and AP of each class, NaN where it cannot compute one."""
  auc, ap = np.full(num_classes, np.nan), np.full(num_classes, np.nan)
  for c in range(num_classes):
    y = labels == c
    if y.any():
      ap[c] = skm.average_precision_score(y, scores[:, c])
      if not y.all():
        auc[c] = skm.roc_auc_score(y, scores[:, c])
  return auc, ap


CASES = {
    "ties": dict(n=500, num_classes=5, seed=0),
    "heavy_ties": dict(n=400, num_classes=4, seed=1, decimals=0),
    "no_ties": dict(n=300, num_classes=6, seed=2, decimals=None),
    "imbalanced": dict(n=600, num_classes=5, seed=3, weights=[50, 10, 3, 1, 1]),
    "absent_class": dict(n=300, num_classes=5, seed=4, absent=(2,)),
    "two_classes": dict(n=200, num_classes=2, seed=5),
    "tiny": dict(n=3, num_classes=3, seed=6),
}


@pytest.mark.parametrize("case", CASES)
def test_per_class_auc_ap_match_sklearn(case):
  scores, labels = random_case(**CASES[case])
  c = scores.shape[1]
  auc, ap = metrics.per_class_auc_ap(scores, labels, c)
  want_auc, want_ap = sklearn_per_class(scores, labels, c)
  np.testing.assert_allclose(auc, want_auc, rtol=0, atol=1e-12)
  np.testing.assert_allclose(ap, want_ap, rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_macro_auc_ap_match_sklearn(case):
  scores, labels = random_case(**CASES[case])
  c = scores.shape[1]
  onehot = np.eye(c)[labels]
  if len(np.unique(labels)) == c:
    # sklearn's macro over indicator columns is one-vs-rest without renormalising the rows.
    want_auc = skm.roc_auc_score(onehot, scores, average="macro")
    want_ap = skm.average_precision_score(onehot, scores, average="macro")
  else:
    # sklearn raises (AUC) or counts 0 (AP) for the absent class; we leave it out of the mean.
    per_auc, per_ap = sklearn_per_class(scores, labels, c)
    want_auc, want_ap = np.nanmean(per_auc), np.nanmean(per_ap)
    assert np.isnan(per_auc).sum() == 1
  assert metrics.macro_auc_ovr(scores, labels, c) == pytest.approx(want_auc, abs=1e-12)
  assert metrics.macro_average_precision(scores, labels, c) == pytest.approx(want_ap, abs=1e-12)


def test_macro_auc_equals_sklearn_ovr_exactly_without_renormalising():
  # Exact probabilities (rows sum to 1) leave sklearn nothing to renormalise.
  rng = np.random.default_rng(7)
  scores = metrics.softmax(rng.normal(size=(400, 4)))
  labels = rng.integers(0, 4, size=400)
  want = skm.roc_auc_score(labels, scores, multi_class="ovr", average="macro")
  assert metrics.macro_auc_ovr(scores, labels, 4) == pytest.approx(want, abs=1e-12)


def test_auc_tie_counts_half():
  # One positive and one negative with equal scores: the pair is a coin flip.
  assert metrics.binary_roc_auc(np.array([0.3, 0.3]), np.array([True, False])) == 0.5
  assert metrics.binary_roc_auc(np.array([0.9, 0.1]), np.array([True, False])) == 1.0
  assert metrics.binary_roc_auc(np.array([0.1, 0.9]), np.array([True, False])) == 0.0


def test_ap_ties_enter_together():
  # The top threshold takes both tied examples (precision 1/2), whatever their order.
  for positive in ([True, False, False], [False, True, False]):
    ap = metrics.binary_average_precision(np.array([0.8, 0.8, 0.1]), np.array(positive))
    assert ap == pytest.approx(0.5)
    assert ap == pytest.approx(skm.average_precision_score(positive, [0.8, 0.8, 0.1]))


def test_undefined_auc_and_ap():
  scores = np.array([[0.9, 0.1], [0.6, 0.4]])
  labels = np.array([0, 0])
  # Class 0 has no negatives and class 1 no positives: no class has a ROC curve.
  assert np.isnan(metrics.macro_auc_ovr(scores, labels, 2))
  # The per-class AP of class 0 is defined (every example is positive)...
  assert metrics.per_class_auc_ap(scores, labels, 2)[1][0] == pytest.approx(1.0)
  # ...but the macro mean skips it, as the official metrics skip any class whose one-vs-rest
  # target holds a single value.
  assert np.isnan(metrics.macro_average_precision(scores, labels, 2))
  assert np.isnan(metrics.binary_average_precision(np.array([0.1, 0.2]), np.array([False, False])))


def official_macro(scores, labels, num_classes):
  """The official benchmark's macro AUC and AP, with scikit-learn: a class whose one-vs-rest
  target holds a single value is skipped; NaN when every class is."""
  onehot = np.eye(num_classes)[labels]
  aucs, aps = [], []
  for c in range(num_classes):
    if len(np.unique(onehot[:, c])) < 2:
      continue
    aucs.append(skm.roc_auc_score(onehot[:, c], scores[:, c]))
    aps.append(skm.average_precision_score(onehot[:, c], scores[:, c]))
  return (np.mean(aucs) if aucs else np.nan), (np.mean(aps) if aps else np.nan)


@pytest.mark.parametrize("case", [*CASES, "one_label", "one_label_of_one"])
def test_macro_means_skip_classes_as_the_official_code(case):
  if case == "one_label":
    scores, _ = random_case(n=50, num_classes=4, seed=9)
    labels = np.full(50, 2)
  elif case == "one_label_of_one":
    scores, labels = np.ones((5, 1)), np.zeros(5, dtype=int)
  else:
    scores, labels = random_case(**CASES[case])
  c = scores.shape[1]
  want_auc, want_ap = official_macro(scores, labels, c)
  m = metrics.classification_metrics(scores, labels, classes=[f"c{i}" for i in range(c)])
  for got, want in ((m["auc_macro"], want_auc), (m["ap_macro"], want_ap)):
    if np.isnan(want):
      assert got is None
    else:
      assert got == pytest.approx(want, abs=1e-12)
  for got, want in ((metrics.macro_auc_ovr(scores, labels, c), want_auc),
                    (metrics.macro_average_precision(scores, labels, c), want_ap)):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
  if case.startswith("one_label"):
    assert m["auc_macro"] is None and m["ap_macro"] is None
    assert "one class" in m["auc_ap_note"]
  json.dumps(m, allow_nan=False)


def test_confusion_and_accuracy_match_sklearn():
  scores, labels = random_case(n=700, num_classes=6, seed=8, absent=(4,))
  pred = np.argmax(scores, axis=1)
  got = metrics.confusion_matrix(labels, pred, 6)
  assert got.dtype == np.int64 and got.shape == (6, 6)
  np.testing.assert_array_equal(got, skm.confusion_matrix(labels, pred, labels=range(6)))
  assert metrics.accuracy(pred, labels) == pytest.approx(skm.accuracy_score(labels, pred))


def test_softmax_is_stable_and_normalised():
  logits = np.array([[1000.0, 1000.0, -1000.0], [1.0, 2.0, 3.0]])
  p = metrics.softmax(logits)
  assert np.all(np.isfinite(p))
  np.testing.assert_allclose(p.sum(axis=1), 1.0)
  np.testing.assert_allclose(p[0], [0.5, 0.5, 0.0])
  e = np.exp([1.0, 2.0, 3.0])
  np.testing.assert_allclose(p[1], e / e.sum())


def test_grouped_accuracy():
  correct = np.array([1, 0, 1, 1, 0, 1], dtype=bool)
  groups = np.array(["b", "a", "b", "a", "c", "b"])
  acc, count = metrics.grouped_accuracy(correct, groups)
  assert list(acc) == ["a", "b", "c"]
  assert acc == {"a": 0.5, "b": 1.0, "c": 0.0}
  assert count == {"a": 2, "b": 3, "c": 1}
  assert all(type(k) is str for k in acc)


@pytest.mark.parametrize("case", ["ties", "imbalanced", "absent_class", "two_classes"])
def test_classification_metrics_match_sklearn(case):
  scores, labels = random_case(**CASES[case])
  n, c = scores.shape
  classes = [f"class_{i}" for i in range(c)]
  rng = np.random.default_rng(11)
  semantics = rng.choice(["bedroom", "zebra", "cat", "FFHQ"], size=n)
  m = metrics.classification_metrics(scores, labels, classes=classes, semantics=semantics)
  assert set(m) == {"num_examples", "accuracy", "auc_macro", "ap_macro", "auc_ap_note",
                    "confusion", "per_class_accuracy", "per_semantic_accuracy",
                    "per_semantic_count"}
  if case == "absent_class":
    assert m["auc_ap_note"] == ("1 of 5 classes have no examples and are left out of the macro "
                                "means: class_2")
  else:
    assert m["auc_ap_note"] is None
  json.dumps(m, allow_nan=False)  # plain Python types only, no NaN

  pred = np.argmax(scores, axis=1)
  assert m["num_examples"] == n
  assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
  np.testing.assert_array_equal(m["confusion"], skm.confusion_matrix(labels, pred, labels=range(c)))
  per_auc, per_ap = sklearn_per_class(scores, labels, c)
  assert m["auc_macro"] == pytest.approx(np.nanmean(per_auc), abs=1e-12)
  assert m["ap_macro"] == pytest.approx(np.nanmean(per_ap), abs=1e-12)

  recall = skm.recall_score(labels, pred, labels=range(c), average=None, zero_division=0)
  for i, name in enumerate(classes):
    if (labels == i).any():
      assert m["per_class_accuracy"][name] == pytest.approx(recall[i])
    else:
      assert m["per_class_accuracy"][name] is None

  # Registry order first (cat, FFHQ, bedroom), names the registry does not know after.
  assert list(m["per_semantic_accuracy"]) == ["cat", "FFHQ", "bedroom", "zebra"]
  assert list(m["per_semantic_count"]) == ["cat", "FFHQ", "bedroom", "zebra"]
  for name in m["per_semantic_accuracy"]:
    sel = semantics == name
    assert m["per_semantic_count"][name] == int(sel.sum())
    assert m["per_semantic_accuracy"][name] == pytest.approx(
        skm.accuracy_score(labels[sel], pred[sel]))


def test_classification_metrics_perfect_and_all_wrong():
  labels = np.array([0, 1, 2, 2, 1, 0, 2])
  perfect = np.eye(3)[labels] * 0.8 + 0.1
  m = metrics.classification_metrics(perfect, labels, classes=["r", "a", "b"])
  assert m["accuracy"] == 1.0 and m["auc_macro"] == 1.0 and m["ap_macro"] == 1.0
  assert m["per_class_accuracy"] == {"r": 1.0, "a": 1.0, "b": 1.0}
  assert m["per_semantic_accuracy"] == {} and m["per_semantic_count"] == {}
  wrong = np.eye(3)[(labels + 1) % 3] * 0.8 + 0.1
  m = metrics.classification_metrics(wrong, labels, classes=["r", "a", "b"])
  assert m["accuracy"] == 0.0
  assert np.trace(np.array(m["confusion"])) == 0
  per_auc, _ = sklearn_per_class(wrong, labels, 3)
  assert m["auc_macro"] == pytest.approx(np.mean(per_auc))


def test_classification_metrics_argmax_tie_takes_first():
  scores = np.array([[0.5, 0.5], [0.5, 0.5]])
  m = metrics.classification_metrics(scores, np.array([0, 1]), classes=["a", "b"])
  assert m["confusion"] == [[1, 0], [1, 0]]
  assert m["accuracy"] == 0.5
  assert m["auc_macro"] == 0.5


def test_classification_metrics_undefined_auc_is_none():
  m = metrics.classification_metrics(np.array([[0.7, 0.3]]), np.array([0]), classes=["a", "b"])
  assert m["auc_macro"] is None
  assert m["ap_macro"] is None  # one class in the labels: the official means are NaN too
  assert m["auc_ap_note"].startswith("undefined: the labels hold one class only (a)")
  assert m["per_class_accuracy"] == {"a": 1.0, "b": None}
  json.dumps(m, allow_nan=False)


def test_large_input_is_fast():
  rng = np.random.default_rng(0)
  scores = metrics.softmax(rng.normal(size=(100_000, 32))).astype(np.float32)
  labels = rng.integers(0, 32, size=100_000)
  start = time.perf_counter()
  metrics.classification_metrics(scores, labels, classes=[str(i) for i in range(32)],
                                 semantics=rng.choice(["cat", "dog"], size=100_000))
  # A Python loop over the examples takes tens of seconds; the vectorised code well under 1 s.
  assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("scores, labels, match", [
    (np.zeros((3, 2)), np.array([0, 1]), "shape"),
    (np.zeros((2, 3)), np.array([0, 1]), "shape"),
    (np.zeros(2), np.array([0, 1]), "shape"),
    (np.zeros((2, 2)), np.array([0, 2]), r"\[0, 2\)"),
    (np.zeros((2, 2)), np.array([-1, 0]), r"\[0, 2\)"),
    (np.zeros((2, 2)), np.array([0.0, 1.0]), "integers"),
    (np.zeros((0, 2)), np.zeros(0, dtype=int), "empty"),
    (np.array([[np.nan, 0.0], [0.0, 1.0]]), np.array([0, 1]), "NaN"),
    (np.zeros((2, 2)), np.array([[0, 1]]), "1-d"),
])
def test_classification_metrics_rejects_bad_input(scores, labels, match):
  with pytest.raises(ValueError, match=match):
    metrics.classification_metrics(scores, labels, classes=["a", "b"])


def test_other_bad_inputs():
  with pytest.raises(ValueError, match="semantics"):
    metrics.classification_metrics(np.zeros((2, 2)), np.array([0, 1]), classes=["a", "b"],
                                   semantics=["cat"])
  with pytest.raises(ValueError, match="shape"):
    metrics.accuracy(np.array([0, 1]), np.array([0]))
  with pytest.raises(ValueError, match="zero examples"):
    metrics.accuracy(np.array([]), np.array([]))
  with pytest.raises(ValueError, match="pred"):
    metrics.confusion_matrix(np.array([0, 1]), np.array([0, 5]), 2)
  with pytest.raises(ValueError, match="shape"):
    metrics.binary_roc_auc(np.array([0.1, 0.2]), np.array([True]))
  with pytest.raises(ValueError, match="shape"):
    metrics.grouped_accuracy(np.array([True]), np.array(["a", "b"]))


# ---------------------------------------------------------------------------------------------
# Open-set: AUROC of known against unknown, and OSCR.


def brute_force_oscr(confidence, correct, is_known):
  """A threshold at every distinct confidence (and above all), CCR against FPR, trapezoids."""
  points = [(0.0, 0.0)]
  for t in sorted(set(confidence.tolist()), reverse=True):
    accepted = confidence >= t
    points.append(((accepted & ~is_known).sum() / (~is_known).sum(),
                   (accepted & correct).sum() / is_known.sum()))
  area = 0.0
  for (f0, c0), (f1, c1) in zip(points, points[1:]):
    area += (f1 - f0) * (c0 + c1) / 2
  return area


def pairwise_oscr(confidence, correct, is_known):
  """The same area as a pair count: correct known above unknown, a tie counting one half."""
  k = confidence[correct][:, None]
  u = confidence[~is_known][None, :]
  return float(((k > u) + 0.5 * (k == u)).sum() / (is_known.sum() * (~is_known).sum()))


def open_set_case(seed, n=300, decimals=1):
  rng = np.random.default_rng(seed)
  is_known = rng.random(n) < 0.6
  confidence = np.round(rng.random(n) + 0.3 * is_known, decimals)  # ties with decimals=1
  correct = is_known & (rng.random(n) < 0.7)
  return confidence, correct, is_known


@pytest.mark.parametrize("seed, decimals", [(0, 1), (1, 1), (2, 6), (3, 2)])
def test_oscr_matches_brute_force_threshold_sweep(seed, decimals):
  confidence, correct, is_known = open_set_case(seed, decimals=decimals)
  got = metrics.oscr(confidence, correct, is_known)
  assert got == pytest.approx(brute_force_oscr(confidence, correct, is_known), abs=1e-12)
  assert got == pytest.approx(pairwise_oscr(confidence, correct, is_known), abs=1e-12)
  # Shuffling the examples changes nothing (ties enter together).
  order = np.random.default_rng(seed).permutation(len(confidence))
  assert metrics.oscr(confidence[order], correct[order], is_known[order]) == pytest.approx(got)


def test_oscr_hand_made_cases():
  is_known = np.array([True, True, True, True, False, False])
  correct = np.array([True, True, True, False, False, False])
  # Every known example above every unknown one: OSCR = closed-set accuracy (3/4).
  confidence = np.array([0.9, 0.8, 0.7, 0.95, 0.2, 0.1])
  assert metrics.oscr(confidence, correct, is_known) == pytest.approx(0.75)
  # Every unknown above: 0.
  assert metrics.oscr(-confidence, correct, is_known) == pytest.approx(0.0)
  # One constant confidence says nothing: half the closed-set accuracy.
  assert metrics.oscr(np.ones(6), correct, is_known) == pytest.approx(0.375)
  # One unknown between the correct ones: CCR is 1/4 when it is accepted, 3/4 after the second.
  confidence = np.array([0.9, 0.5, 0.3, 0.95, 0.6, 0.1])
  assert metrics.oscr(confidence, correct, is_known) == pytest.approx((1 / 4 + 3 / 4) / 2)
  fpr, ccr = metrics.oscr_curve(confidence, correct, is_known)
  assert fpr[0] == ccr[0] == 0 and fpr[-1] == 1 and ccr[-1] == pytest.approx(0.75)


def test_oscr_of_random_confidence_is_half_the_accuracy():
  rng = np.random.default_rng(0)
  n = 20000
  is_known = rng.random(n) < 0.5
  correct = is_known & (rng.random(n) < 0.8)
  got = metrics.oscr(rng.random(n), correct, is_known)
  assert got == pytest.approx(0.5 * correct.sum() / is_known.sum(), abs=0.01)


def test_oscr_bad_inputs():
  with pytest.raises(ValueError, match="known and unknown"):
    metrics.oscr(np.ones(3), np.ones(3, bool), np.ones(3, bool))
  with pytest.raises(ValueError, match="unknown example as correctly"):
    metrics.oscr(np.ones(2), np.array([True, True]), np.array([True, False]))
  with pytest.raises(ValueError, match="NaN"):
    metrics.oscr(np.array([np.nan, 1.0]), np.array([True, False]), np.array([True, False]))


@pytest.mark.parametrize("seed, decimals", [(0, 1), (5, 6)])
def test_open_set_auroc_matches_sklearn(seed, decimals):
  confidence, _, is_known = open_set_case(seed, decimals=decimals)
  assert metrics.open_set_auroc(confidence, is_known) == pytest.approx(
      skm.roc_auc_score(is_known, confidence), abs=1e-12)
  assert np.isnan(metrics.open_set_auroc(confidence[is_known], is_known[is_known]))
