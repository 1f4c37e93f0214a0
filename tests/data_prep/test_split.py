"""Tests of data_prep.split: stratified splits, disjointness, open-set folds, official splits."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_prep import sources, split
from iab_jax.data import generators
from iab_jax.data import manifests
from iab_jax.data import records
from tests.data_prep.test_ingest import (EDGE_CAP, ingest_dataset, make_edge_tree,
                                         official_loader)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# generator -> semantic -> number of records. dalle3 has no cat (semantic task 1 has no training
# data for it); my_model is not in the registry (and no folder the official code opens). The
# sums of int(0.8 n), over all records and over the cats of the official classes, are odd, so
# the official even cut of train has something to drop.
COUNTS = {
    "4o": {"cat": 13, "bedroom": 11, "FFHQ": 9, "dog": 4},
    "FLUX": {"cat": 10, "bedroom": 7, "FFHQ": 6},
    "SDXL": {"cat": 20, "bedroom": 12, "FFHQ": 9, "COCO": 9},
    "real": {"cat": 12, "bedroom": 10, "FFHQ": 10, "dog": 9},
    "mid-6.0": {"cat": 7, "bedroom": 8, "FFHQ": 4},
    "kling": {"cat": 7, "bedroom": 5, "FFHQ": 4},
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
        # Names like x_p0_i0.png x_p1_i0.png x_p10_i0.png, which the official selection rules
        # keep: string order differs from numeric order.
        recs.append(_record(gen, sem, f"x_p{j}_i0.png", _png(seed)))
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
        recs.append(_record(gen, sem, f"x_p{j}_i0.png", _png(seed)))
        seed += 1
  sdxl_cat = [r for r in recs if r.key.startswith("SDXL/cat/")]
  recs.append(_record("SDXL", "cat", "copy_p90_i0.png", sdxl_cat[0].image))
  recs.append(_record("FLUX", "cat", "twin_p91_i0.png", sdxl_cat[1].image))
  recs.append(_record("SDXL", "dog", "again_p92_i0.png", sdxl_cat[2].image))
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
  twins = {keys.index("SDXL/cat/x_p1_i0.png"), keys.index("FLUX/cat/twin_p91_i0.png")}
  for seed in range(12):
    m = split.standard_split(dups, seed=seed)
    assert twins <= set(m["splits"]["train"])
  dup = m["report"]["duplicates"]
  assert dup["groups"] == 3 and dup["extra_copies"] == 3
  assert dup["cross_label_groups"] == 1
  assert set(dup["cross_label_examples"][0]["keys"]) == {"SDXL/cat/x_p1_i0.png",
                                                         "FLUX/cat/twin_p91_i0.png"}
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
  assert "SDXL/dog/again_p92_i0.png" not in _keys(dups, m["splits"]["test"])
  dropped = m["report"]["dropped"]["test image identical to a train/val image"]
  assert dropped == {"count": 1, "keys": ["SDXL/dog/again_p92_i0.png"]}
  assert {"SDXL/cat/x_p1_i0.png", "FLUX/cat/twin_p91_i0.png"} <= _keys(dups,
                                                                       m["splits"]["train"])
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
  assert "FLUX/cat/twin_p91_i0.png" not in _keys(dups, m["splits"]["test_unknown"])
  assert m["report"]["dropped"]["unknown-class image identical to an image of another class"][
      "keys"] == ["FLUX/cat/twin_p91_i0.png"]


# --------------------------------------------------------------------------------------------
# group
# --------------------------------------------------------------------------------------------

GROUPS = [f"prompt_{g:02d}" for g in range(20)]


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
  """20 prompt groups of real/SDXL/FLUX images, kling in six of them only; an SDXL image in two
  groups; a cross-label copy inside prompt_05; two records without a group."""
  recs, seed = [], 50_000
  for g, group in enumerate(GROUPS):
    for gen in ("real", "SDXL", "FLUX") + (("kling",) if g < 6 else ()):
      for k in range(2):
        seed += 1
        rec = _record(gen, "cat", f"{group}_{k}_p{g}_i{k}.png", _png(seed))
        rec.group = group
        recs.append(rec)
  by_key = {r.key: r for r in recs}
  twin = _record("SDXL", "cat", "dup_p11_i1.png", by_key["SDXL/cat/prompt_03_0_p3_i0.png"].image)
  twin.group = "prompt_11"
  cross = _record("real", "cat", "cross.png", by_key["FLUX/cat/prompt_05_1_p5_i1.png"].image)
  cross.group = "prompt_05"
  recs += [twin, cross, _record("real", "cat", "free_0.png", _png(1)),
           _record("real", "cat", "free_1.png", _png(2))]
  return _write(tmp_path_factory.mktemp("grouped"), recs)


def _sides_of_groups(ds, m):
  groups = ds.column("group")
  sides = {}
  for name, positions in m["splits"].items():
    for p in positions:
      sides.setdefault(groups[p], set()).add(name)
  return sides


def test_group_split_keeps_groups_whole(grouped):
  m = split.group_split(grouped, 4, 3, seed=0)
  assert m["name"] == "group" and m["protocol"] == "group"
  assert m["classes"] == grouped.classes
  sides = _sides_of_groups(grouped, m)
  assert set(sides) == set(GROUPS)  # the two records without a group are in no split
  assert all(len(v) == 1 for v in sides.values())
  assert m["report"]["num_groups"] == {"train": 13, "val": 3, "test": 4}
  test_groups, val_groups = m["options"]["test_groups"], m["options"]["val_groups"]
  assert len(test_groups) == 4 and len(val_groups) == 3
  assert {g for g, v in sides.items() if v == {"test"}} == set(test_groups)
  assert m["options"]["seed"] == 0 and m["options"]["requested"] == {"test": "4", "val": "3"}
  per_group = m["report"]["per_group"]
  assert set(per_group["test"]) == set(test_groups)
  assert sum(per_group["test"].values()) == m["report"]["sizes"]["test"]
  sha = grouped.column("sha256")
  seen = [set(sha[np.asarray(p, dtype=np.int64)].tolist()) for p in m["splits"].values()]
  assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
  assert any("2 records have no group" in w for w in m["report"]["warnings"])
  assert split.group_split(grouped, 4, 3, seed=0) == m
  assert split.group_split(grouped, 4, 3, seed=1)["options"]["test_groups"] != test_groups
  # --val_groups defaults to as many groups as test.
  assert split.group_split(grouped, 5, seed=0)["report"]["num_groups"] == {
      "train": 10, "val": 5, "test": 5}


def test_group_split_balances_classes(grouped):
  """kling lives in 6 of 20 groups: a blind draw of 4 test groups misses it one time in five."""
  for seed in range(12):
    m = split.group_split(grouped, 4, 3, seed=seed)
    for side in ("train", "val", "test"):
      assert m["report"]["per_class"][side].get("kling", 0) > 0, (seed, side)
    assert not any("missing" in w for w in m["report"]["warnings"]), seed
  # When whole groups cannot balance a class, the report says so.
  m = split.group_split(grouped, "prompt_10,prompt_11", "prompt_12")
  assert "classes missing from val: kling (whole groups cannot balance them)" in m[
      "report"]["warnings"]


def test_group_split_named_groups(grouped):
  m = split.group_split(grouped, "prompt_01, prompt_02", "prompt_03")
  assert m["options"]["test_groups"] == ["prompt_01", "prompt_02"]
  assert m["options"]["val_groups"] == ["prompt_03"]
  m = split.group_split(grouped, ["prompt_07"], 2, seed=3)
  assert m["options"]["test_groups"] == ["prompt_07"] and len(m["options"]["val_groups"]) == 2
  assert split.parse_group_request("7,") == ["7"] and split.parse_group_request("7") == 7
  with pytest.raises(split.SplitError, match="no group named 'prompt_99'"):
    split.group_split(grouped, "prompt_99")
  with pytest.raises(split.SplitError, match="named for both test and val"):
    split.group_split(grouped, "prompt_01", "prompt_01")
  with pytest.raises(split.SplitError, match="leave none of the 20 groups to train on"):
    split.group_split(grouped, 10, 10)
  with pytest.raises(split.SplitError, match="at least one group"):
    split.group_split(grouped, 0, 2)


def test_group_split_duplicates_never_straddle(grouped):
  keys = grouped.column("key").tolist()
  twin = {keys.index("SDXL/cat/prompt_03_0_p3_i0.png"), keys.index("SDXL/cat/dup_p11_i1.png")}
  cross = {keys.index("FLUX/cat/prompt_05_1_p5_i1.png"), keys.index("real/cat/cross.png")}
  straddled = 0
  for seed in range(12):
    m = split.group_split(grouped, 4, 3, seed=seed)
    where = {p: name for name, positions in m["splits"].items() for p in positions}
    sides = _sides_of_groups(grouped, m)
    if sides["prompt_03"] != sides["prompt_11"]:
      straddled += 1
      # The earlier side (train, val, test) keeps the image; the other copy is dropped.
      kept = [p for p in twin if p in where]
      assert len(kept) == 1
      first = min(sides["prompt_03"] | sides["prompt_11"], key=("train", "val", "test").index)
      assert where[kept[0]] == first
      assert m["report"]["dropped"][
          "image identical to one on an earlier side (train, val, test)"]["count"] >= 1
    if sides["prompt_05"] != {"train"}:  # a cross-label pair is never scored
      assert not cross & set(where)
  assert straddled  # the seeds exercised it


def test_group_split_needs_groups(clean):
  with pytest.raises(split.SplitError, match="has no groups"):
    split.group_split(clean, 2)


def test_group_cli(grouped, capsys):
  paths = split.main(["--data", grouped.root, "--protocol", "group", "--test_groups", "4",
                      "--val_groups", "prompt_00,prompt_01", "--seed", "5"])
  assert paths == [os.path.join(grouped.root, "splits", "group.json")]
  out = capsys.readouterr().out
  assert "group: protocol group, seed 5" in out
  assert "val groups: prompt_00, prompt_01" in out
  loaded = manifests.load_manifest(paths[0], grouped)
  assert loaded.protocol == "group" and loaded.options["val_groups"] == ["prompt_00", "prompt_01"]
  assert manifests.manifest_name("group") == "group"
  with pytest.raises(SystemExit):
    split.main(["--data", grouped.root, "--protocol", "group"])
  with pytest.raises(SystemExit, match="error: --test_groups prompt_77: no group named"):
    split.main(["--data", grouped.root, "--protocol", "group", "--test_groups", "prompt_77"])


# --------------------------------------------------------------------------------------------
# official
# --------------------------------------------------------------------------------------------


def _reference_samples(ds, tree):
  """The official sample list of the folder tree the dataset's records form, written under
  `tree` (each record at {model folder}/{semantic folder}/{file name}, the folders as ingest
  recorded them or, for records without, its generator and semantic class), as the official
  loader (test_ingest.official_loader) lists it: [(dataset position, label, semantic)]."""
  position = {}
  extras = ds.column("extra")
  for i in range(len(ds)):
    rec = ds[i]
    extra = json.loads(extras[i])
    folder = os.path.join(str(tree), extra.get("model_folder", rec.generator),
                          extra.get("semantic_folder", generators.SEMANTICS[rec.semantic][0]))
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, rec.filename)
    assert not os.path.exists(path)
    with open(path, "wb") as f:
      f.write(rec.image)
    position[os.path.relpath(path, str(tree)).replace(os.sep, "/")] = i
  return [(position[path], label, sem) for path, label, sem in official_loader(
      str(tree), cap=sources.MAX_PER_FOLDER)]


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


def _reference_standard(samples, seed=42):
  """stratified_split_by_label as the official code does it (80/10/10)."""
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


def _reference_semantic(samples, chosen, seed=42):
  """split_dataset_trainval_by_label_semantics with get_dataloader's train_ratio default, 0.8."""
  np.random.seed(seed)
  by_label = {}
  for i, (_, label, sem) in enumerate(samples):
    by_label.setdefault(label, {}).setdefault(sem, []).append(i)
  train, val, test = [], [], []
  for per_sem in by_label.values():
    for sem, idx in per_sem.items():
      np.random.shuffle(idx)
      if sem == chosen:
        n_train = int(0.8 * len(idx))
        train += idx[:n_train]
        val += idx[n_train:]
      else:
        test += idx
  return _reference_finish(samples, train, val, test)


def test_dataset_order_is_not_official(clean, tmp_path):
  order = [p for p, _, _ in _reference_samples(clean, tmp_path)]
  assert order != sorted(order)


@pytest.mark.parametrize("seed", [42, 3])
def test_official_standard_matches_reference(clean, seed, tmp_path):
  state = np.random.get_state()
  m = split.standard_split(clean, official=True, seed=seed)
  assert np.all(np.random.get_state()[1] == state[1])  # numpy's global RNG is left alone
  expected, odd = _reference_standard(_reference_samples(clean, tmp_path), seed)
  assert odd or seed != 42  # the even cut was exercised
  for name in ("train", "val", "test"):
    assert m["splits"][name] == expected[name], name
  assert m["name"] == "standard_official" and m["options"]["official"] is True
  # my_model is no folder the official code opens: it is left out, and its class too.
  assert m["classes"] == [c for c in clean.classes if c != "my_model"]
  left = m["report"]["official_left_out"]["in a model folder the official code does not open"]
  assert left["count"] == sum(COUNTS["my_model"].values())
  assert left["by_folder"] == {"my_model": 15}


@pytest.mark.parametrize("semantic", ["cat", "bedroom"])
def test_official_semantic_matches_reference(clean, semantic, tmp_path):
  m = split.semantic_split(clean, semantic, official=True)
  expected, odd = _reference_semantic(_reference_samples(clean, tmp_path), semantic)
  assert odd or semantic != "cat"
  for name in ("train", "val", "test"):
    assert m["splits"][name] == expected[name], name
  assert m["name"] == f"semantic_{semantic}_official"
  assert m["options"]["ratios"] == [0.8, 0.2]
  # The code's 8:2, not the paper's 9:1: SDXL has 20 cats, so 16 train and 4 val.
  if semantic == "cat":
    gens = clean.column("generator")
    assert [(gens[m["splits"][s]] == "SDXL").sum() for s in ("train", "val")] == [16, 4]


@pytest.mark.parametrize("layout", ["tree", "folders"])
def test_official_split_of_any_tree_matches_the_official_loader(tmp_path, monkeypatch, layout):
  """Edge-case file names, alias and unknown model folders, folders the loader never lists."""
  monkeypatch.setattr(sources, "MAX_PER_FOLDER", EDGE_CAP)
  make_edge_tree(str(tmp_path / "src"))
  ds = ingest_dataset(str(tmp_path / "src"), str(tmp_path / "data"), layout=layout)
  samples = official_loader(str(tmp_path / "src"), cap=EDGE_CAP)
  extras = [json.loads(e) for e in ds.column("extra")]
  position = {f"{e['model_folder']}/{e['semantic_folder']}/{name}": i
              for i, (e, name) in enumerate(zip(extras, ds.column("filename")))}
  samples = [(position[path], label, sem) for path, label, sem in samples]
  for seed in (42, 7):
    m = split.standard_split(ds, official=True, seed=seed)
    expected, _ = _reference_standard(samples, seed)
    for name in ("train", "val", "test"):
      assert m["splits"][name] == expected[name], (seed, name)
  m = split.semantic_split(ds, "cat", official=True)
  expected, _ = _reference_semantic(samples, "cat")
  for name in ("train", "val", "test"):
    assert m["splits"][name] == expected[name], name
  left = m["report"]["official_left_out"]
  assert left["in a model folder the official code does not open"]["by_folder"] == {
      "FLUX2_KLEIN": 1, "Real": 1, "sd-v2.1": 1}
  assert "FLUX2_KLEIN" not in m["classes"] and "SD2_1" in m["classes"]
  if layout == "folders":  # ingest kept these; the official loader never lists them
    assert left["outside its semantic class's official folder"]["count"] == 2
    # The image files of official folders that the rules refuse: 6 SDXL, 1 mid-6.0, 1 real
    # (.webp), 9 SD3; and 3 more SD3 files over the cap.
    assert left["file name refused by the official selection rules"]["count"] == 17
    assert left[f"over the official {EDGE_CAP}-file cap of its folder"]["count"] == 3
  assert any(w.startswith("left out ") and "model folder the official code does not open" in w
             for w in m["report"]["warnings"])
  assert "left out" in split.summary(m)


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
  assert ("warning: left out 15 records the official loader would not load: 15 in a model folder "
          "the official code does not open (my_model 15)") in proc.stdout
  m = manifests.load_manifest(out, clean)
  expected, _ = _reference_semantic(_reference_samples(clean, tmp_path / "tree"), "cat")
  np.testing.assert_array_equal(m.splits["train"], expected["train"])
