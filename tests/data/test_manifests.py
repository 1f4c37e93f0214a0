"""Tests of the manifest format: round trip, atomic write, fingerprint check, labels."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from iab_jax.data import manifests
from iab_jax.data import records


def _png(seed):
  pixels = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, "PNG")
  return buf.getvalue()


def _dataset(root, generators, seed=0):
  """A dataset with one record per entry of `generators`; `seed` changes every image."""
  classes = sorted(set(generators))
  recs = []
  for i, gen in enumerate(generators):
    data = _png(1000 * seed + i)
    recs.append(records.ImageRecord(
        image=data, key=f"{gen}/cat/{i}.png", generator=gen, label=classes.index(gen),
        levels=(-1, -1, -1, -1), semantic="cat", source="test", width=4, height=4, format="PNG",
        sha256=records.sha256_bytes(data), filename=f"{i}.png"))
  records.write_dataset(str(root), recs, classes)
  return records.Dataset(str(root))


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
  return _dataset(tmp_path_factory.mktemp("ds"), ["a", "b", "c", "a", "b", "c", "a"])


def _make(ds, splits, classes=("a", "b", "c")):
  return manifests.make_manifest(name="standard", protocol="standard", options={"seed": 42},
                                 dataset_info=ds.info, classes=classes, splits=splits,
                                 report={"warnings": []})


def test_round_trip_keeps_order_and_fields(ds, tmp_path):
  splits = {"train": [5, 0, 3, 1], "val": [6], "test": [4, 2]}
  path = manifests.save_manifest(_make(ds, splits), str(tmp_path / "splits" / "m.json"))
  loaded = manifests.load_manifest(path, ds)
  assert loaded.protocol == "standard" and loaded.name == "standard"
  assert loaded.classes == ["a", "b", "c"]
  assert loaded.options == {"seed": 42}
  assert loaded.fingerprint == ds.info["fingerprint"] and loaded.num_records == len(ds)
  for name, positions in splits.items():
    assert loaded.splits[name].dtype == np.int64
    np.testing.assert_array_equal(loaded.splits[name], positions)  # order kept, not sorted
  assert loaded.digest == manifests.split_digest(["a", "b", "c"], splits)
  with open(path) as f:
    assert json.load(f)["splits"]["train"] == [5, 0, 3, 1]


def test_digest_names_the_split(ds):
  a = _make(ds, {"train": [0, 1], "test": [2]})
  b = _make(ds, {"train": [1, 0], "test": [2]})
  c = _make(ds, {"train": [0, 1], "test": [2]}, classes=("b", "a", "c"))
  assert len({a["digest"], b["digest"], c["digest"]}) == 3


def test_save_is_atomic_and_overwrites(ds, tmp_path):
  path = str(tmp_path / "m.json")
  manifests.save_manifest(_make(ds, {"train": [0]}), path)
  manifests.save_manifest(_make(ds, {"train": [1, 2]}), path)
  assert os.listdir(tmp_path) == ["m.json"]  # no temporary file left behind
  np.testing.assert_array_equal(manifests.load_manifest(path).splits["train"], [1, 2])


def test_fingerprint_mismatch_names_both(ds, tmp_path):
  other = _dataset(tmp_path / "other", ["a", "b", "c", "a", "b", "c", "a"], seed=1)
  path = manifests.save_manifest(_make(ds, {"train": [0]}), str(tmp_path / "m.json"))
  with pytest.raises(ValueError) as err:
    manifests.load_manifest(path, other)
  assert ds.info["fingerprint"] in str(err.value)
  assert other.info["fingerprint"] in str(err.value)
  manifests.load_manifest(path, ds)  # the right data passes


def test_positions_out_of_range_and_foreign_files_rejected(ds, tmp_path):
  path = manifests.save_manifest(_make(ds, {"train": [0, len(ds)]}), str(tmp_path / "m.json"))
  with pytest.raises(ValueError, match="outside"):
    manifests.load_manifest(path)
  with open(tmp_path / "x.json", "w") as f:
    json.dump({"splits": {}}, f)
  with pytest.raises(ValueError, match="not an iab_jax manifest"):
    manifests.load_manifest(str(tmp_path / "x.json"))


def test_labels_for_uses_manifest_classes(ds, tmp_path):
  path = manifests.save_manifest(_make(ds, {"train": [0]}, classes=("c", "a")),
                                 str(tmp_path / "m.json"))
  labels = manifests.labels_for(manifests.load_manifest(path, ds), ds)
  assert labels.dtype == np.int32
  # Generators a b c a b c a under classes (c, a): b is not a class of this run.
  np.testing.assert_array_equal(labels, [1, -1, 0, 1, -1, 0, 1])


def test_default_names():
  assert manifests.manifest_name("standard") == "standard"
  assert manifests.manifest_name("standard", official=True) == "standard_official"
  assert manifests.manifest_name("semantic", semantic="cat") == "semantic_cat"
  name = manifests.manifest_name("semantic", semantic="FFHQ", official=True)
  assert name == "semantic_FFHQ_official"
  assert manifests.manifest_name("openset", fold=3) == "openset_fold3"
  assert manifests.default_manifest_path("/d", "standard") == "/d/splits/standard.json"
  with pytest.raises(ValueError):
    manifests.manifest_name("openset")
  with pytest.raises(ValueError):
    manifests.manifest_name("detection")
