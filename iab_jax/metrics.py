"""Classification metrics of the benchmark's evaluation, in NumPy.

An attribution eval ends with an (N, C) array of class probabilities on the host; these functions
turn it into the numbers a results JSON keeps for each degradation level: accuracy, the confusion
matrix, macro one-vs-rest ROC AUC, macro average precision and accuracy per class and per semantic
class. ROC AUC and AP are written here rather than taken from scikit-learn so that the package
does not need it at run time; tests/test_metrics.py holds them equal to scikit-learn's.

Everything is vectorised over examples (one sort per class serves both AUC and AP), so 100k x 32
scores take a fraction of a second.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from iab_jax.data import generators


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
  """Softmax over `axis`, shifted by the max so large logits do not overflow."""
  logits = np.asarray(logits)
  if not np.issubdtype(logits.dtype, np.floating):
    logits = logits.astype(np.float64)
  shifted = logits - np.max(logits, axis=axis, keepdims=True)
  e = np.exp(shifted)
  return e / np.sum(e, axis=axis, keepdims=True)


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of predictions equal to the labels."""
  pred, labels = np.asarray(pred), np.asarray(labels)
  if pred.shape != labels.shape:
    raise ValueError(f"pred has shape {pred.shape} but labels {labels.shape}")
  if pred.size == 0:
    raise ValueError("accuracy of zero examples is undefined")
  return float(np.mean(pred == labels))


def confusion_matrix(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
  """(C, C) int64 counts, rows the true class and columns the predicted one, as scikit-learn."""
  labels = _check_labels(labels, num_classes, "labels")
  pred = _check_labels(pred, num_classes, "pred")
  if pred.shape != labels.shape:
    raise ValueError(f"pred has shape {pred.shape} but labels {labels.shape}")
  flat = np.bincount(labels * num_classes + pred, minlength=num_classes * num_classes)
  return flat.reshape(num_classes, num_classes).astype(np.int64)


def _auc_and_ap(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
  """ROC AUC and average precision of one score column against a boolean target, one sort.

  AUC is the Mann-Whitney statistic: the chance that a random positive scores above a random
  negative, a tie counting one half, which average ranks give exactly. AP is scikit-learn's
  sum_n (R_n - R_{n-1}) P_n over the distinct score values taken as thresholds, highest first:
  examples that tie on a score enter together, so the order among them does not matter.
  Either is NaN where undefined: AUC without positives or without negatives, AP without positives.
  """
  positive = np.asarray(positive, dtype=bool)
  n = positive.size
  n_pos = int(positive.sum())
  n_neg = n - n_pos
  if n_pos == 0:
    return float("nan"), float("nan")
  # Ties are handled per run of equal scores below, so the sort need not be stable.
  order = np.argsort(scores)
  s, pos = scores[order], positive[order]
  # Runs of equal scores in ascending order: [starts[i], ends[i]).
  starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))
  ends = np.append(starts[1:], n)
  pos_in_run = np.add.reduceat(pos.astype(np.int64), starts)

  auc = float("nan")
  if n_neg:
    mean_rank = (starts + ends + 1) / 2.0  # a tie shares the mean of the 1-based ranks it spans
    u = np.dot(pos_in_run, mean_rank) - n_pos * (n_pos + 1) / 2.0
    auc = float(u / (n_pos * n_neg))

  # Thresholds from the highest score down: a threshold predicts its run and every run above it.
  tp = np.cumsum(pos_in_run[::-1])
  predicted = n - starts[::-1]
  recall = tp / n_pos
  ap = float(np.sum(np.diff(recall, prepend=0.0) * (tp / predicted)))
  return auc, ap


def _check_binary(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  scores, positive = np.asarray(scores), np.asarray(positive)
  if scores.ndim != 1 or scores.shape != positive.shape:
    raise ValueError(f"scores {scores.shape} and positive {positive.shape} must be equal 1-d shapes")
  if scores.size == 0:
    raise ValueError("scores is empty: metrics of zero examples are undefined")
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores contain NaN or infinity")
  return scores, positive


def binary_roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
  """ROC AUC of one score against a boolean target; NaN without both positives and negatives."""
  return _auc_and_ap(*_check_binary(scores, positive))[0]


def binary_average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
  """Average precision as scikit-learn defines it; NaN without positives."""
  return _auc_and_ap(*_check_binary(scores, positive))[1]


def per_class_auc_ap(scores: np.ndarray, labels: np.ndarray,
                     num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """One-vs-rest ROC AUC and AP of each class, (C,) each, NaN where undefined for the class."""
  scores, labels = _check_scores(scores, labels, num_classes)
  pairs = [_auc_and_ap(scores[:, c], labels == c) for c in range(num_classes)]
  return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def _nanmean_or_nan(values: np.ndarray) -> float:
  defined = values[~np.isnan(values)]
  return float(defined.mean()) if defined.size else float("nan")


def _scored_classes(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Classes with both positives and negatives in `labels`: the ones the macro means average.

  The official metrics skip a class whose one-vs-rest target holds a single value, i.e. a class
  absent from the labels and, when the labels hold one class only, that class too.
  """
  support = np.bincount(labels, minlength=num_classes)
  return (support > 0) & (support < labels.size)


def macro_auc_ovr(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
  """Macro one-vs-rest ROC AUC over the classes that have both positives and negatives.

  A class absent from the labels (or the only one present) has no ROC curve. scikit-learn raises
  there, but a small split or a subset of a test split may well miss a generator, and the other
  classes' numbers are still meaningful, so such classes are left out of the mean, as the
  official code leaves them out. NaN when no class is left.
  """
  return _nanmean_or_nan(per_class_auc_ap(scores, labels, num_classes)[0])


def macro_average_precision(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
  """Macro average precision over the classes that have both positives and negatives.

  As the official code: a class absent from the labels is left out, and so is the only class
  when the labels hold a single one (its AP would be 1 whatever the scores). NaN when no class
  is left.
  """
  scores, labels = _check_scores(scores, labels, num_classes)
  ap = per_class_auc_ap(scores, labels, num_classes)[1]
  return _nanmean_or_nan(np.where(_scored_classes(labels, num_classes), ap, np.nan))


def grouped_accuracy(correct: np.ndarray,
                     groups: np.ndarray) -> tuple[dict[Any, float], dict[Any, int]]:
  """Accuracy and example count per group, keys in sorted order of the group values."""
  correct, groups = np.asarray(correct), np.asarray(groups)
  if correct.ndim != 1 or correct.shape != groups.shape:
    raise ValueError(f"correct {correct.shape} and groups {groups.shape} must be equal 1-d shapes")
  names, inverse = np.unique(groups, return_inverse=True)
  counts = np.bincount(inverse, minlength=len(names))
  hits = np.bincount(inverse, weights=correct.astype(np.float64), minlength=len(names))
  # .item() turns NumPy scalars into Python ones, so the dicts go straight to JSON.
  keys = [n.item() for n in names]
  return ({k: float(h / n) for k, h, n in zip(keys, hits, counts)},
          {k: int(n) for k, n in zip(keys, counts)})


def _none_if_nan(x: float) -> float | None:
  return None if np.isnan(x) else float(x)


def classification_metrics(scores: np.ndarray, labels: np.ndarray, *, classes: Sequence[str],
                           semantics: np.ndarray | Sequence[str] | None = None) -> dict[str, Any]:
  """The metrics of one eval (one degradation level) as a JSON-serialisable dict.

  Args:
    scores: (N, C) class probabilities. AUC and AP rank examples by each column, so pass
      probabilities, not logits, for numbers comparable with other methods.
    labels: (N,) integer labels in [0, C).
    classes: the C class names, in label order.
    semantics: optional (N,) semantic class name of each example ('cat', 'FFHQ', ...).

  Returns:
    num_examples, accuracy, auc_macro and ap_macro (macro means over the classes that have both
    positives and negatives, as the official code; None when no class has, e.g. when the labels
    hold a single class), auc_ap_note (None, or why AUC and AP are undefined or which classes they
    leave out), confusion (rows true, columns predicted), per_class_accuracy (None for a class
    without examples), and per_semantic_accuracy / per_semantic_count when `semantics` is given
    (empty dicts otherwise), semantic classes in the registry's order.
  """
  num_classes = len(classes)
  scores, labels = _check_scores(scores, labels, num_classes)
  # np.argmax takes the first maximum, so a tie goes to the lower label.
  pred = np.argmax(scores, axis=1)
  confusion = confusion_matrix(labels, pred, num_classes)
  auc, ap = per_class_auc_ap(scores, labels, num_classes)
  scored = _scored_classes(labels, num_classes)
  auc, ap = np.where(scored, auc, np.nan), np.where(scored, ap, np.nan)
  support = confusion.sum(axis=1)
  per_class = {
      name: (float(confusion[c, c] / support[c]) if support[c] else None)
      for c, name in enumerate(classes)
  }
  per_semantic, per_semantic_count = {}, {}
  if semantics is not None:
    semantics = np.asarray(semantics).astype(str)
    if semantics.shape != labels.shape:
      raise ValueError(f"semantics has shape {semantics.shape}, expected {labels.shape}")
    acc, count = grouped_accuracy(pred == labels, semantics)
    rank = {name: i for i, name in enumerate(generators.SEMANTIC_ORDER)}
    for name in sorted(acc, key=lambda n: (rank.get(n, len(rank)), n)):
      per_semantic[name] = acc[name]
      per_semantic_count[name] = count[name]
  return {
      "num_examples": int(labels.size),
      "accuracy": float(np.trace(confusion) / labels.size),
      "auc_macro": _none_if_nan(_nanmean_or_nan(auc)),
      "ap_macro": _none_if_nan(_nanmean_or_nan(ap)),
      "auc_ap_note": _auc_ap_note(support, classes),
      "confusion": confusion.tolist(),
      "per_class_accuracy": per_class,
      "per_semantic_accuracy": per_semantic,
      "per_semantic_count": per_semantic_count,
  }


def _auc_ap_note(support: np.ndarray, classes: Sequence[str]) -> str | None:
  """Why macro AUC/AP are undefined, or which classes they leave out; None when all are scored."""
  present = np.flatnonzero(support)
  if len(present) == 1:
    return (f"undefined: the labels hold one class only ({classes[present[0]]}), so no class has "
            "both positives and negatives (the official code's means are NaN here)")
  absent = [classes[c] for c in np.flatnonzero(support == 0)]
  if absent:
    shown = ", ".join(absent[:10]) + (", ..." if len(absent) > 10 else "")
    return (f"{len(absent)} of {len(classes)} classes have no examples and are left out of the "
            f"macro means: {shown}")
  return None


def _check_labels(labels: np.ndarray, num_classes: int, what: str) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"{what} must be 1-d, got shape {labels.shape}")
  if labels.size == 0:
    raise ValueError(f"{what} is empty: metrics of zero examples are undefined")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{what} must be integers, got dtype {labels.dtype}")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  lo, hi = int(labels.min()), int(labels.max())
  if lo < 0 or hi >= num_classes:
    raise ValueError(f"{what} must lie in [0, {num_classes}), found values in [{lo}, {hi}]")
  return labels.astype(np.int64)


def _check_scores(scores: np.ndarray, labels: np.ndarray,
                  num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  scores = np.asarray(scores)
  labels = _check_labels(labels, num_classes, "labels")
  if scores.ndim != 2 or scores.shape != (labels.size, num_classes):
    raise ValueError(f"scores must have shape (num_examples, num_classes) = "
                     f"({labels.size}, {num_classes}), got {scores.shape}")
  if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(scores.dtype, np.complexfloating):
    raise ValueError(f"scores must be real numbers, got dtype {scores.dtype}")
  # A NaN would silently sort to one end and become argmax; a diverged model should be noticed.
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores contain NaN or infinity")
  return scores, labels


# ---------------------------------------------------------------------------------------------
# Open-set attribution: known classes against generators never seen in training.


def _check_open_set(confidence, is_known, correct_known=None):
  confidence = np.asarray(confidence, dtype=np.float64)
  is_known = np.asarray(is_known, dtype=bool)
  if confidence.ndim != 1 or confidence.shape != is_known.shape:
    raise ValueError(f"confidence {confidence.shape} and is_known {is_known.shape} must be equal "
                     "1-d shapes")
  if not np.all(np.isfinite(confidence)):
    raise ValueError("confidence contains NaN or infinity")
  if correct_known is None:
    return confidence, is_known
  correct_known = np.asarray(correct_known, dtype=bool)
  if correct_known.shape != confidence.shape:
    raise ValueError(f"correct_known {correct_known.shape} must have the shape of confidence "
                     f"{confidence.shape}")
  if np.any(correct_known & ~is_known):
    raise ValueError("correct_known marks an unknown example as correctly classified")
  return confidence, is_known, correct_known


def open_set_auroc(confidence: np.ndarray, is_known: np.ndarray) -> float:
  """ROC AUC of telling known-class examples (positive) from unknown ones by the confidence of
  being known; a tie counts one half. NaN without both known and unknown examples."""
  confidence, is_known = _check_open_set(confidence, is_known)
  if confidence.size == 0:
    return float("nan")
  return _auc_and_ap(confidence, is_known)[0]


def oscr_curve(confidence: np.ndarray, correct_known: np.ndarray,
               is_known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(false positive rate, correct classification rate), one point per threshold.

  A threshold t accepts every example with confidence >= t. CCR(t) = known examples that are
  accepted and correctly classified / known examples; FPR(t) = accepted unknown examples /
  unknown examples. The thresholds are +inf (nothing accepted: the point (0, 0)) and each
  distinct confidence from the highest down, so examples that tie enter together and the
  segment between two points is the straight line a random order among them would give on
  average. Both rates only grow along the arrays.
  """
  confidence, is_known, correct_known = _check_open_set(confidence, is_known, correct_known)
  n_known, n_unknown = int(is_known.sum()), int((~is_known).sum())
  if n_known == 0 or n_unknown == 0:
    raise ValueError(f"OSCR needs known and unknown examples; got {n_known} known and "
                     f"{n_unknown} unknown")
  order = np.argsort(-confidence, kind="stable")
  s = confidence[order]
  # The last example of each run of equal confidences, highest confidence first.
  ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))
  correct = np.cumsum(correct_known[order])[ends]
  false_pos = np.cumsum(~is_known[order])[ends]
  fpr = np.concatenate([[0.0], false_pos / n_unknown])
  ccr = np.concatenate([[0.0], correct / n_known])
  return fpr, ccr


def oscr(confidence: np.ndarray, correct_known: np.ndarray, is_known: np.ndarray) -> float:
  """Open-Set Classification Rate (Dhamija et al., NeurIPS 2018), the area under the CCR-vs-FPR
  curve of `oscr_curve` (trapezoids), as the OSCR code of POSE and of Vaze et al. integrates it.

  At FPR = 1 the curve reaches the closed-set accuracy, so OSCR <= closed-set accuracy: equal when
  every known example is more confident than every unknown one, half of it for a confidence that
  says nothing. Equivalently, the chance that a random correctly classified known example is
  more confident than a random unknown one (a tie counting one half), times the closed-set
  accuracy. Their code walks the examples one by one in sorted order, so where a known and an
  unknown example tie its value depends on the sort; here ties count one half.

  Args:
    confidence: (N,) confidence of being of a known class (e.g. the largest known-class
      probability), for known and unknown examples.
    correct_known: (N,) True where a known example's closed-set prediction is its label (False
      for every unknown example).
    is_known: (N,) True for examples of known classes.
  """
  fpr, ccr = oscr_curve(confidence, correct_known, is_known)
  return float(np.sum(np.diff(fpr) * (ccr[1:] + ccr[:-1]) / 2.0))


# ---------------------------------------------------------------------------------------------
# Detection: real against generated images, by a score of being generated.


def detection_metrics(p_fake: np.ndarray, is_fake: np.ndarray,
                      threshold: float = 0.5) -> dict[str, Any]:
  """The detection numbers of the ACM paper's tables (and of CNNDetection and UnivFD, whose
  evaluation code they follow), generated ("fake") being the positive class.

  Args:
    p_fake: (N,) score of being generated, e.g. 1 - P(real).
    is_fake: (N,) True for generated images, False for real ones.
    threshold: an image is predicted fake iff p_fake > threshold, strictly, as CNNDetection's
      and UnivFD's `y_pred > 0.5`: a score of exactly 0.5 counts as real.

  Returns:
    ap (average precision, scikit-learn's average_precision_score), accuracy (over all images),
    f1 (scikit-learn's f1_score of the fake class; 0 when no image is predicted fake, as its
    zero_division=0), real_accuracy and fake_accuracy (accuracy over each class's images alone),
    num_real, num_fake.

  Raises:
    ValueError: shapes differ, a score is not finite, or either class has no image (AP and the
      per-class accuracies would be undefined).
  """
  p_fake, is_fake = _check_binary(np.asarray(p_fake, np.float64), np.asarray(is_fake, bool))
  num_fake = int(is_fake.sum())
  num_real = int(is_fake.size - num_fake)
  if not num_fake or not num_real:
    raise ValueError(f"detection metrics need real and fake images; got {num_real} real and "
                     f"{num_fake} fake")
  predicted = p_fake > threshold
  true_pos = int((predicted & is_fake).sum())
  false_pos = int((predicted & ~is_fake).sum())
  false_neg = num_fake - true_pos
  return {
      "ap": _auc_and_ap(p_fake, is_fake)[1],
      "accuracy": float((predicted == is_fake).mean()),
      # 2 TP / (2 TP + FP + FN) is the harmonic mean of precision and recall, and 0 when nothing
      # is predicted fake (FN > 0 there, since there are fakes): sklearn's zero_division=0.
      "f1": float(2 * true_pos / (2 * true_pos + false_pos + false_neg)),
      "real_accuracy": float((num_real - false_pos) / num_real),
      "fake_accuracy": float(true_pos / num_fake),
      "num_real": num_real,
      "num_fake": num_fake,
  }
