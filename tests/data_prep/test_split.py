"""Tests of data_prep.split: stratified splits, disjointness, open-set folds, official splits."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_prep import split
from iab_jax.data import generators
from iab_jax.data import manifests
from iab_jax.data import records

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# generator -> semantic -> number of records. dalle3 has no cat (semantic task 1 has no training
# data for it); my_model is not in the registry. The sums of int(0.8 n) and, in cat, of
# int(0.9 n) are odd, so the official even cut of train has something to drop.
COUNTS = {
    "4o": {"cat": 13, "bedroom": 11, "FFHQ": 9, "dog": 4},
    "FLUX": {"cat": 10, "bedroom": 7, "FFHQ": 6},
    "SDXL": {"cat": 20, "bedroom": 12, "FFHQ": 9, "COCO": 9},
    "real": {"cat": 12, "bedroom": 10, "FFHQ": 10, "dog": 9},
    "mid-6.0": {"cat": 7, "bedroom": 8, "FFHQ": 4},
    "kling": {"cat": 6, "bedroom": 5, "FFHQ": 4},
    "dalle3": {"bedroom": 9, "FFHQ": 8},
    "my_model": {"cat": 5, "bedroom": 6, "FFHQ": 4},
}


def _png(seed):
  pixels = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, "PNG")
  return buf.getvalue()


def _record(generator, semantic, filename, data):
  return records.ImageRecord(
      image=data, key=f"{generator}/{semantic}/{filename}", generator=generator, label=-1,
      levels=generators.family_levels(generator), semantic=semantic, source="test", width=4,
      height=4, format="PNG", sha256=records.sha256_bytes(data), filename=filename)


def _write(root, recs, shuffle_seed=0):
  """Writes records in a shuffled order, so dataset order is not the official order."""
  classes = generators.class_order({r.generator for r in recs})
  for r in recs:
    r.label = classes.index(r.generator)
  order = np.random.default_rng(shuffle_seed).permutation(len(recs))
  records.write_dataset(str(root), [recs[i] for i in order], classes)
  return records.Dataset(str(root))


def _clean_records(counts=COUNTS):
  recs, seed = [], 0
  for gen, per in counts.items():
    for sem, n in per.items():
      for j in range(n):
        # Names like 0.png 1.png 10.png: string order differs from numeric order.
        recs.append(_record(gen, sem, f"{j}.png", _png(seed)))
        seed += 1
  return recs


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
  return _write(tmp_path_factory.mktemp("clean"), _clean_records())


@pytest.fixture(scope="module")
def dups(tmp_path_factory):
  """A dataset with a same-label copy, a cross-label copy and a cross-semantic copy."""
  recs, seed = [], 10_000
  for gen, per in {"SDXL": {"cat": 10, "dog": 5}, "FLUX": {"cat": 10}, "real": {"cat": 10, "dog": 5}
                   }.items():
    for sem, n in per.items():
      for j in range(n):
        recs.append(_record(gen, sem, f"{j}.png", _png(seed)))
        seed += 1
  sdxl_cat = [r for r in recs if r.key.startswith("SDXL/cat/")]
  recs.append(_record("SDXL", "cat", "copy.png", sdxl_cat[0].image))
  recs.append(_record("FLUX", "cat", "twin.png", sdxl_cat[1].image))
  recs.append(_record("SDXL", "dog", "again.png", sdxl_cat[2].image))
  return _write(tmp_path_factory.mktemp("dups"), recs)


def _keys(ds, positions):
  return set(ds.column("key")[np.asarray(positions, dtype=np.int64)].tolist())


def _per_class(ds, positions):
  gens = ds.column("generator")[np.asarray(positions, dtype=np.int64)]
  return {g: int((gens == g).sum()) for g in set(gens.tolist())}


def _assert_partition(ds, manifest, expected_total):
  parts = [np.asarray(v) for v in manifest["splits"].values()]
  everything = np.concatenate(parts)
  assert len(everything) == len(set(everything.tolist())) == expected_total
  sha = ds.column("sha256")
  seen = [set(sha[p].tolist()) for p in parts]
  for i in range(len(seen)):
    for j in range(i + 1, len(seen)):
      assert not seen[i] & seen[j]


# --------------------------------------------------------------------------------------------
# standard
# --------------------------------------------------------------------------------------------


def test_standard_exact_counts_per_class(clean):
  m = split.standard_split(clean)
  assert m["protocol"] == "standard" and m["classes"] == clean.classes
  for name, positions in m["splits"].items():
    assert positions == sorted(positions)
  for gen, per in COUNTS.items():
    n = sum(per.values())
    got = [_per_class(clean, m["splits"][s]).get(gen, 0) for s in ("train", "val", "test")]
    assert got == [int(0.8 * n), int(0.1 * n), n - int(0.8 * n) - int(0.1 * n)], gen
  assert m["report"]["per_class"]["train"]["SDXL"] == 40
  _assert_partition(clean, m, len(clean))


def test_standard_is_deterministic_and_seeded(clean):
  a, b = split.standard_split(clean), split.standard_split(clean)
  assert a == b
  c = split.standard_split(clean, seed=43)
  assert c["splits"]["test"] != a["splits"]["test"] and c["digest"] != a["digest"]
  assert c["report"]["per_class"] == a["report"]["per_class"]  # same counts, other records


def test_class_split_does_not_depend_on_other_classes(clean, tmp_path):
  fewer = _write(tmp_path, [r for r in _clean_records() if r.generator != "kling"], shuffle_seed=5)
  full, part = split.standard_split(clean), split.standard_split(fewer)
  for s in ("train", "val", "test"):
    kept = {k for k in _keys(clean, full["splits"][s]) if not k.startswith("kling/")}
    assert kept == _keys(fewer, part["splits"][s])


def test_standard_keeps_identical_images_together(dups):
  sha = dups.column("sha256")
  for seed in range(12):
    m = split.standard_split(dups, seed=seed)
    _assert_partition(dups, m, len(dups))
    where = {}
    for s, positions in m["splits"].items():
      for p in positions:
        where.setdefault(sha[p], set()).add(s)
    assert all(len(v) == 1 for v in where.values())


def test_cross_label_copies_stay_out_of_test(dups):
  keys = dups.column("key").tolist()
  twins = {keys.index("SDXL/cat/1.png"), keys.index("FLUX/cat/twin.png")}
  for seed in range(12):
    m = split.standard_split(dups, seed=seed)
    assert twins <= set(m["splits"]["train"])
  dup = m["report"]["duplicates"]
  assert dup["groups"] == 3 and dup["extra_copies"] == 3
  assert dup["cross_label_groups"] == 1
  assert set(dup["cross_label_examples"][0]["keys"]) == {"SDXL/cat/1.png", "FLUX/cat/twin.png"}
  assert any("byte-identical" in w for w in m["report"]["warnings"])


def test_ratios_are_checked(clean):
  with pytest.raises(ValueError, match="ratios"):
    split.standard_split(clean, ratios=(0.8, 0.1))


# --------------------------------------------------------------------------------------------
# semantic
# --------------------------------------------------------------------------------------------


def test_semantic_train_on_one_class_test_on_the_rest(clean):
  m = split.semantic_split(clean, "cat")
  sem, gens = clean.column("semantic"), clean.column("generator")
  train, val, test = (np.asarray(m["splits"][s]) for s in ("train", "val", "test"))
  assert set(sem[train]) == set(sem[val]) == {"cat"}
  assert "cat" not in set(sem[test])
  np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.flatnonzero(sem == "cat"))
  np.testing.assert_array_equal(test, np.flatnonzero(sem != "cat"))
  for gen, per in COUNTS.items():
    n = per.get("cat", 0)
    got = [(gens[train] == gen).sum(), (gens[val] == gen).sum()]
    assert got == [int(0.9 * n), n - int(0.9 * n)], gen
  assert m["report"]["classes_without_training_data"] == ["dalle3"]
  assert m["options"]["test_semantics"] == ["dog", "COCO", "FFHQ", "bedroom"]
  assert m["name"] == "semantic_cat"


def test_semantic_aliases_and_errors(clean):
  by_name = split.semantic_split(clean, "cat")
  for alias in (1, "1", "AnimalFace/cat", "AnimalFace_cat"):
    assert split.semantic_split(clean, alias) == by_name
  assert split.semantic_split(clean, 2)["options"]["semantic"] == "bedroom"
  assert split.semantic_split(clean, "3")["name"] == "semantic_FFHQ"
  with pytest.raises(ValueError, match="present: cat, dog, COCO, FFHQ, bedroom"):
    split.semantic_split(clean, "church")
  with pytest.raises(ValueError, match="task 4"):
    split.semantic_split(clean, 4)


def test_semantic_drops_test_copies_of_training_images(dups):
  m = split.semantic_split(dups, "cat")
  keys = dups.column("key")
  assert "SDXL/dog/again.png" not in _keys(dups, m["splits"]["test"])
  dropped = m["report"]["dropped"]["test image identical to a train/val image"]
  assert dropped == {"count": 1, "keys": ["SDXL/dog/again.png"]}
  assert {"SDXL/cat/1.png", "FLUX/cat/twin.png"} <= _keys(dups, m["splits"]["train"])
  _assert_partition(dups, m, len(keys) - 1)


# --------------------------------------------------------------------------------------------
# open-set
# --------------------------------------------------------------------------------------------


def test_openset_folds_partition_the_generators(clean):
  folds = split.openset_folds(clean.classes, 5, 42)
  flat = [g for f in folds for g in f]
  assert sorted(flat) == sorted(c for c in clean.classes if c != "real")
  assert sorted(len(f) for f in folds) == [1, 1, 1, 2, 2]
  assert folds != split.openset_folds(clean.classes, 5, 7)
  with pytest.raises(ValueError, match="7 generators"):
    split.openset_folds(clean.classes, 8, 42)


def test_openset_known_and_unknown(clean):
  standard = split.standard_split(clean)
  gens = clean.column("generator")
  for fold in range(5):
    m = split.openset_split(clean, fold)
    unknown = set(m["options"]["unknown"])
    assert m["classes"] == [c for c in clean.classes if c not in unknown]
    assert "real" in m["classes"] and unknown
    for s in ("train", "val", "test"):
      assert not unknown & set(gens[m["splits"][s]].tolist())
    assert set(gens[m["splits"]["test_unknown"]].tolist()) == unknown
    # Known classes split as in standard; unknown ones give the records standard tests on.
    tested = set(m["splits"]["test"]) | set(m["splits"]["test_unknown"])
    assert tested == set(standard["splits"]["test"])
    labels = manifests.labels_for(manifests.from_dict(m), clean)
    assert (labels[m["splits"]["test_unknown"]] == -1).all()
    assert (labels[m["splits"]["train"]] >= 0).all()
    assert m["name"] == f"openset_fold{fold}"


def test_openset_unknown_fraction_and_errors(clean):
  m = split.openset_split(clean, 0, unknown_fraction=0.5)
  per = _per_class(clean, m["splits"]["test_unknown"])
  assert per == {g: int(round(0.5 * sum(COUNTS[g].values()))) for g in m["options"]["unknown"]}
  with pytest.raises(ValueError, match="fold 5"):
    split.openset_split(clean, 5)
  with pytest.raises(ValueError, match="generators"):
    split.openset_split(clean, 0, num_folds=8)


def test_openset_drops_unknown_copies_of_known_images(dups):
  m = split.openset_split(dups, split.openset_folds(dups.classes, 2).index(["FLUX"]), num_folds=2)
  assert "FLUX/cat/twin.png" not in _keys(dups, m["splits"]["test_unknown"])
  assert m["report"]["dropped"]["unknown-class image identical to an image of another class"][
      "keys"] == ["FLUX/cat/twin.png"]


# --------------------------------------------------------------------------------------------
# official
# --------------------------------------------------------------------------------------------


def _reference_samples(ds):
  """The official sample list, built folder by folder: (dataset position, label, semantic)."""
  gens, sems = ds.column("generator").tolist(), ds.column("semantic").tolist()
  files = ds.column("filename").tolist()
  known = list(generators.OFFICIAL_MODEL_ORDER)
  models = [m for m in known if m in gens] + sorted(set(gens) - set(known))
  semantics = list(generators.SEMANTIC_ORDER) + sorted(set(sems) - set(generators.SEMANTIC_ORDER))
  samples = []
  for model in models:
    for sem in semantics:
      folder = {files[i]: i for i in range(len(gens)) if gens[i] == model and sems[i] == sem}
      for name in sorted(folder):
        samples.append((folder[name], ds.classes.index(model), sem))
  return samples


def _reference_finish(samples, train, val, test):
  np.random.shuffle(train)
  np.random.shuffle(val)
  np.random.shuffle(test)
  odd = len(train) % 2 == 1
  if odd:
    train = train[:-1]
  out = {name: [samples[i][0] for i in idx] for name, idx in
         (("train", train), ("val", val), ("test", test))}
  return out, odd


def _reference_standard(ds, seed=42):
  samples = _reference_samples(ds)
  np.random.seed(seed)
  by_label = {}
  for i, (_, label, _) in enumerate(samples):
    by_label.setdefault(label, []).append(i)
  train, val, test = [], [], []
  for idx in by_label.values():
    np.random.shuffle(idx)
    n_train, n_val = int(0.8 * len(idx)), int(0.1 * len(idx))
    train += idx[:n_train]
    val += idx[n_train:n_train + n_val]
    test += idx[n_train + n_val:]
  return _reference_finish(samples, train, val, test)


def _reference_semantic(ds, chosen, seed=42):
  samples = _reference_samples(ds)
  np.random.seed(seed)
  by_label = {}
  for i, (_, label, sem) in enumerate(samples):
    by_label.setdefault(label, {}).setdefault(sem, []).append(i)
  train, val, test = [], [], []
  for per_sem in by_label.values():
    for sem, idx in per_sem.items():
      np.random.shuffle(idx)
      if sem == chosen:
        n_train = int(0.9 * len(idx))
        train += idx[:n_train]
        val += idx[n_train:]
      else:
        test += idx
  return _reference_finish(samples, train, val, test)


def test_dataset_order_is_not_official(clean):
  order = [p for p, _, _ in _reference_samples(clean)]
  assert order != list(range(len(clean)))


@pytest.mark.parametrize("seed", [42, 3])
def test_official_standard_matches_reference(clean, seed):
  state = np.random.get_state()
  m = split.standard_split(clean, official=True, seed=seed)
  assert np.all(np.random.get_state()[1] == state[1])  # numpy's global RNG is left alone
  expected, odd = _reference_standard(clean, seed)
  assert odd or seed != 42  # the even cut was exercised
  for name in ("train", "val", "test"):
    assert m["splits"][name] == expected[name], name
  assert m["name"] == "standard_official" and m["options"]["official"] is True
  assert m["classes"] == clean.classes


@pytest.mark.parametrize("semantic", ["cat", "bedroom"])
def test_official_semantic_matches_reference(clean, semantic):
  m = split.semantic_split(clean, semantic, official=True)
  expected, odd = _reference_semantic(clean, semantic)
  assert odd or semantic != "cat"
  for name in ("train", "val", "test"):
    assert m["splits"][name] == expected[name], name
  assert m["name"] == f"semantic_{semantic}_official"


def test_official_reports_duplicates_across_splits(dups):
  m = split.standard_split(dups, official=True)
  dup = m["report"]["duplicates"]
  assert dup["groups"] == 3
  sha = dups.column("sha256")
  where = {}
  for s, positions in m["splits"].items():
    for p in positions:
      where.setdefault(sha[p], set()).add(s)
  assert dup["groups_across_splits"] == sum(len(v) > 1 for v in where.values())


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def test_cli_writes_default_manifests(clean, capsys):
  data = clean.root
  paths = split.main(["--data", data, "--protocol", "standard"])
  assert paths == [os.path.join(data, "splits", "standard.json")]
  out = capsys.readouterr().out
  assert "total" in out and "SDXL" in out and "wrote" in out
  loaded = manifests.load_manifest(paths[0], clean)
  assert loaded.digest == split.standard_split(clean)["digest"]
  assert split.main(["--data", data, "--protocol", "semantic", "--semantic", "2", "--quiet"]) == [
      os.path.join(data, "splits", "semantic_bedroom.json")]
  paths = split.main(["--data", data, "--protocol", "openset", "--fold", "all", "--quiet"])
  assert [os.path.basename(p) for p in paths] == [f"openset_fold{k}.json" for k in range(5)]
  with pytest.raises(SystemExit):
    split.main(["--data", data, "--protocol", "semantic"])
  with pytest.raises(SystemExit):
    split.main(["--data", data, "--protocol", "openset", "--official"])


def test_cli_subprocess_official(clean, tmp_path):
  out = str(tmp_path / "m.json")
  proc = subprocess.run(
      [sys.executable, "-m", "data_prep.split", "--data", clean.root, "--protocol", "semantic",
       "--semantic", "1", "--official", "--out", out],
      cwd=ROOT, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr
  assert "semantic_cat_official" in proc.stdout
  m = manifests.load_manifest(out, clean)
  expected, _ = _reference_semantic(clean, "cat")
  np.testing.assert_array_equal(m.splits["train"], expected["train"])
