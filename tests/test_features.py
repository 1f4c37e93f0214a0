"""The frozen-feature cache: exact features, reuse without rebuilding, resume after a kill."""

import glob
import os

import jax.numpy as jnp
import numpy as np
import pytest

from iab_jax import features, sharding, tasks
from iab_jax.data import records, transforms
from iab_jax.methods import base

TRANSFORM = "resize(32)|central_crop(32)|normalize('unit')"


def _weights():
  return {"w": np.arange(15, dtype=np.float32).reshape(3, 5) / 7.0}


def _apply(variables, images):
  # A stand-in frozen network: channel means through a fixed linear map, plus a nonlinearity so
  # that a wrong row order or a wrong image would show.
  return jnp.tanh(images.mean(axis=(1, 2)) @ variables["w"] + images[:, 0, 0, :1])


def _spec(builds: list):
  def build():
    builds.append(1)
    return _apply, _weights()
  return base.FrozenFeatures(name="toy", transform=TRANSFORM, identity="toy(seed=0)", dim=5,
                             build=build)


@pytest.fixture(scope="module")
def data(tiny_bench):
  from ml_collections import ConfigDict

  return tasks.load(ConfigDict({"data_dir": tiny_bench, "manifest": "", "prepare": ""}),
                    tasks.parse_task("standard"))


def _direct(data, positions, level):
  """The features computed image by image, without the cache or the pipeline."""
  transform = transforms.parse((f"degrade({level})|" if level else "") + TRANSFORM)
  images = np.stack([transform(records.decode(data.dataset.raw(int(p))),
                               np.random.default_rng(0)) for p in positions])
  return np.asarray(_apply(_weights(), jnp.asarray(images)))


def _extract(data, root, extractors, level=0, chunk_batches=2, split="test"):
  return features.features_for(_spec_holder["spec"], data=data, split=split, level=level,
                               root=root, extractors=extractors, batch_size=8, reading={},
                               chunk_batches=chunk_batches)


_spec_holder = {}


def test_features_equal_direct_computation_and_are_reused(data, tmp_path):
  builds = []
  _spec_holder["spec"] = _spec(builds)
  mesh = sharding.make_mesh()
  table = _extract(data, str(tmp_path), features.Extractors(mesh), level=3)
  positions = data.positions("test")
  np.testing.assert_allclose(table.lookup(positions), _direct(data, positions, 3),
                             rtol=1e-5, atol=1e-6)
  # Shuffled lookups give the same rows.
  order = np.random.default_rng(0).permutation(len(positions))
  np.testing.assert_array_equal(table.lookup(positions[order]), table.lookup(positions)[order])
  with pytest.raises(KeyError, match="not in the feature cache"):
    table.lookup(data.positions("train")[:1])
  assert builds == [1]
  # A second run (a new process would have new extractors) reads the cache: nothing is built.
  again = _extract(data, str(tmp_path), features.Extractors(mesh), level=3)
  np.testing.assert_array_equal(np.asarray(again.values), np.asarray(table.values))
  assert builds == [1]
  # Another level or split is another entry.
  other = _extract(data, str(tmp_path), features.Extractors(mesh), level=0)
  assert other.directory != table.directory and builds == [1, 1]


class _Killed(Exception):
  pass


def test_a_killed_extraction_resumes_after_its_last_chunk(data, tmp_path, monkeypatch):
  said = []
  monkeypatch.setattr(features.console, "say", lambda m, *a: said.append(m % a if a else m))
  builds = []
  _spec_holder["spec"] = _spec(builds)
  mesh = sharding.make_mesh()

  class Dying(features.Extractors):
    calls = 0

    def __call__(self, spec, images):
      Dying.calls += 1
      if Dying.calls == 4:  # dies after three complete chunks of one batch each
        raise _Killed
      return super().__call__(spec, images)

  with pytest.raises(_Killed):
    _extract(data, str(tmp_path), Dying(mesh), split="train", chunk_batches=1)
  directory, = glob.glob(os.path.join(str(tmp_path), "toy-train-L0-*"))
  assert len(glob.glob(os.path.join(directory, "chunk-*.npy"))) == 3
  assert not os.path.exists(os.path.join(directory, features.DONE_JSON))
  said.clear()
  table = _extract(data, str(tmp_path), features.Extractors(mesh), split="train",
                   chunk_batches=1)
  assert any("extracting 508 of 532 images (resuming after 24)" in m for m in said), said
  positions = data.positions("train")
  np.testing.assert_allclose(table.lookup(positions), _direct(data, positions, 0),
                             rtol=1e-5, atol=1e-6)
  assert not glob.glob(os.path.join(directory, "chunk-*.npy"))


def test_spread_keeps_every_class_of_a_sorted_split():
  positions = np.arange(100)
  picked = features.spread(positions, 10)
  assert len(picked) == 10 and picked[0] == 0 and picked[-1] == 99
  np.testing.assert_array_equal(features.spread(positions, 0), positions)

