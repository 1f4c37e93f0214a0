"""What a method's phases may state about their inputs, through the real loop on a tiny mini-bench:
a per-phase transform whose op draws the phase's label, multi-view examples, class-balanced
batches, a partner drawn from the training split, an unvalidated pretext phase, and a predict
that returns several named prediction rules."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from configs import quickstart
from iab_jax import main as main_lib, methods
from iab_jax.data import transforms
from iab_jax.methods import base, classifier

CROPS, CROP = 3, 32


def _rotate(img, rng):
  k = int(rng.integers(0, 4))
  return img.rotate(90 * k), {"rotation": np.int32(k)}


if "test_rotation" not in transforms.known_ops():
  transforms.register("test_rotation", size="keep", random=True, emits=("rotation",))(
      lambda: functools.partial(_rotate))


class Views(classifier.Classifier):
  """Phase "pretext": predict the rotation of 3 random crops (the label a transform op draws),
  not validated; phase "main": attribution of the crops' mean logits plus the partner's,
  balanced batches. predict: rules "model" and "uniform"."""

  prediction_rule = "model"

  def phases(self):
    views = f"random_crops({CROPS}, {CROP})|normalize('half')"
    return [base.Phase("pretext", 1, {"name": "adam", "learning_rate": 1e-3},
                       select_best=False, validate=False, label="rotation",
                       transform=f"test_rotation|{views}"),
            base.Phase("main", 2, {"name": "adam", "learning_rate": 3e-3}, sampler="balanced",
                       partners=1, transform=views)]

  def init(self, rng, images, pretrained=True):
    if images.ndim == 5:  # crops (N, V, h, w, 3) in training; a whole image in evaluation
      images = images[:, 0]
    return dict(self.model.init({"params": rng}, images, train=False))

  def _crop_logits(self, variables, images, rng):
    n, v = images.shape[:2]
    logits, state = self._logits(variables, images.reshape(n * v, *images.shape[2:]), True, rng)
    return logits.reshape(n, v, -1).mean(axis=1), state

  def loss(self, variables, batch, rng, phase):
    images = batch["image"]
    assert images.shape[1:] == (CROPS, CROP, CROP, 3), images.shape
    logits, state = self._crop_logits(variables, images, rng)
    if phase.name == "pretext":
      assert "partner_image" not in batch
      logits = logits[:, :4]
    else:
      assert batch["partner_image"].shape[1:] == (1, CROPS, CROP, CROP, 3)
      partner, state = self._crop_logits({**variables, **state}, batch["partner_image"][:, 0],
                                         rng)
      ce_partner = -jnp.take_along_axis(jax.nn.log_softmax(partner),
                                        batch["partner_label"][:, :1], 1)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["label"][:, None], 1)
    loss = ce.mean() + (ce_partner.mean() if phase.name == "main" else 0.0)
    return loss, (state, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])})

  def predict(self, variables, batch):
    probabilities = super().predict(variables, batch)
    return {"model": probabilities, "uniform": jnp.full_like(probabilities,
                                                            1 / probabilities.shape[-1])}


def test_phase_inputs_through_the_loop(tiny_bench, tmp_path, monkeypatch):
  monkeypatch.setitem(methods._REGISTRY, "views",
                      ("Views", "tests.trainers.test_phase_inputs:Views"))
  config = quickstart.get_config("standard")
  config.method = "views"
  config.input.data_dir, config.input.prepare = tiny_bench, ""
  config.log_every_steps = 1
  config.evals.test.levels = (0, 3)
  workdir = str(tmp_path / "run")
  results = main_lib.run(config, workdir)

  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  validated = [r["step"] for r in rows if "val/accuracy" in r]
  steps_per_epoch = min(r["step"] for r in rows if r.get("train/epoch") == 1.0)
  assert validated == [2 * steps_per_epoch, 3 * steps_per_epoch]  # the pretext epoch is not
  assert results["checkpoint"]["phase"] == 1
  for level in results["evals"]["test"]["levels"].values():
    assert level["prediction_rule"] == "model"
    assert set(level["rules"]) == {"model", "uniform"}
    assert level["rules"]["model"]["accuracy"] == level["accuracy"]
    # A uniform score's argmax is class 0: its accuracy is class 0's share of the test split.
    share = np.sum(level["confusion"][0]) / level["num_examples"]
    assert abs(level["rules"]["uniform"]["accuracy"] - share) < 1e-9


def _dataset(tiny_bench):
  from iab_jax import tasks

  config = quickstart.get_config("standard")
  config.input.data_dir, config.input.prepare = tiny_bench, ""
  return tasks.load(config.input, tasks.parse_task("standard"))


def test_balanced_batches_and_partners_from_the_training_split(tiny_bench):
  from iab_jax.data import pipeline

  data = _dataset(tiny_bench)
  train = data.positions("train")
  # Unequal classes: 3 images of class 0, 6-12 of the others.
  labels = data.labels[train]
  keep = np.concatenate([np.flatnonzero(labels == c)[:3 if c == 0 else 6 + c] for c in range(7)])
  train = np.sort(train[keep])
  batch_size = 14
  ds = pipeline.make_dataset(data.dataset, train, data.labels, "normalize('half')",
                             batch_size=batch_size, train=True, seed=3, num_epochs=2,
                             sampler="balanced", partners=2, process_index=0, process_count=1)
  batches = list(ds)
  assert len(batches) == 2 * len(train) // batch_size  # the epochs are one stream
  pool = set(train.tolist())
  for batch in batches:
    counts = np.bincount(batch["label"], minlength=7)
    assert counts.max() - counts.min() <= 1, counts  # 14 = 7 classes x 2, give or take a round
    assert batch["partner_image"].shape == (batch_size, 2, 64, 64, 3)
    assert batch["partner_label"].shape == (batch_size, 2)
    assert batch["partner_levels"].shape == (batch_size, 2, 4)
  # Each partner's image is a training record's, and its label that record's label.
  from iab_jax.data import records, transforms as T

  normalize = T.parse("normalize('half')")
  images = {p: normalize(records.decode(data.dataset.raw(p))) for p in pool}
  for batch in batches[:3]:
    for views, labels in zip(batch["partner_image"], batch["partner_label"]):
      for view, label in zip(views, labels):
        match = [p for p, image in images.items() if np.array_equal(image, view)]
        assert match and all(data.labels[p] == label for p in match)


def test_balanced_order_counts_and_determinism():
  from iab_jax.data import pipeline

  labels = np.array([0] * 20 + [1] * 3 + [2] * 7)
  order = pipeline.balanced_order(labels, 3, seed=1)
  assert len(order) == 90
  np.testing.assert_array_equal(order, pipeline.balanced_order(labels, 3, seed=1))
  assert not np.array_equal(order, pipeline.balanced_order(labels, 3, seed=2))
  for start in range(0, 90, 3):  # every round of 3 holds each class once
    assert sorted(labels[order[start:start + 3]]) == [0, 1, 2]
  # A small class is cycled through whole permutations: each of its images recurs equally.
  small = np.bincount(order[labels[order] == 1], minlength=30)[20:23]
  assert small.min() == small.max() == 10


def test_evaluation_randomness_is_seeded_per_record(tiny_bench):
  from iab_jax.data import pipeline

  data = _dataset(tiny_bench)
  test = data.positions("test")
  spec = "random_crops(2, 16)|normalize('half')"

  def views(positions, batch_size):
    out = {}
    for batch in pipeline.make_dataset(data.dataset, positions, data.labels, spec,
                                       batch_size=batch_size, train=False, seed=5,
                                       process_index=0, process_count=1):
      for p, image, m in zip(batch["position"], batch["image"], batch["mask"]):
        if m:
          out[int(p)] = image
    return out

  all_views = views(test, 8)
  some = views(test[3::4], 4)  # other companions, other batches: the same draw per record
  assert some and all(np.array_equal(all_views[p], v) for p, v in some.items())
  assert not np.array_equal(all_views[int(test[0])][0], all_views[int(test[0])][1])


def test_fork_and_random_crops():
  rng = np.random.default_rng(0)
  image = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
  crops = transforms.parse("random_crops(4, 8, 12)")
  out = crops(image, np.random.default_rng(1))
  assert out.shape == (4, 8, 12, 3) and out.dtype == np.uint8
  pixels = np.asarray(image)
  for crop in out:  # each view is a window of the image
    assert any(np.array_equal(pixels[t:t + 8, l:l + 12], crop)
               for t in range(33) for l in range(39))
  fork = transforms.parse("fork(b=\"central_crop(8)|normalize('unit')\", a='resize(4, 4)')")
  assert fork.spec == "fork(a='resize(4, 4)', b=\"central_crop(8)|normalize('unit')\")"
  views = fork(image)
  assert views["a"].shape == (4, 4, 3) and views["b"].dtype == np.float32
  np.testing.assert_allclose(views["b"], pixels[16:24, 21:29] / 255.0, atol=1e-7)
  assert not fork.is_random and transforms.parse("fork(a='flip_lr')").is_random
  assert transforms.parse("test_rotation|resize(8, 8)").emits == ("rotation",)
  image_out, emitted = transforms.parse("test_rotation").apply(image, np.random.default_rng(2))
  assert set(emitted) == {"rotation"} and 0 <= emitted["rotation"] < 4
