"""The metadata shortcut tools: the size audit's rule and the metadata-only baseline."""

import io

import numpy as np
import pytest
from PIL import Image

from iab_jax.data import manifests, records, shortcuts


def _image(seed, size, fmt):
  buf = io.BytesIO()
  pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  Image.fromarray(pixels).save(buf, fmt)
  return buf.getvalue()


# (generator, format, width, height, count): SDXL and FLUX share 64x64 PNG, real is 48x32 JPEG
# or 40x40 PNG, and FLUX also makes 40x40 PNG.
LAYOUT = [("SDXL", "PNG", 64, 64, 12), ("FLUX", "PNG", 64, 64, 4), ("FLUX", "PNG", 40, 40, 8),
          ("real", "JPEG", 48, 32, 10), ("real", "PNG", 40, 40, 6)]


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
  recs, seed = [], 0
  for gen, fmt, w, h, n in LAYOUT:
    for k in range(n):
      seed += 1
      data = _image(seed, (w, h), fmt)
      recs.append(records.ImageRecord(
          image=data, key=f"{gen}/cat/{seed}", generator=gen, label=-1, levels=(-1, -1, -1, -1),
          semantic="cat", source="t", width=w, height=h, format=fmt,
          sha256=records.sha256_bytes(data)))
  root = tmp_path_factory.mktemp("shortcuts")
  records.write_dataset(str(root), recs, ["FLUX", "SDXL", "real"])
  return records.Dataset(str(root))


def _manifest(ds, splits, classes=("FLUX", "SDXL", "real")):
  return manifests.from_dict(manifests.make_manifest(
      name="m", protocol="standard", options={}, dataset_info=ds.info, classes=classes,
      splits=splits, report={}))


def _reference_baseline(ds, train, test, classes):
  """The rule in plain Python: majority training label per (format, width, height)."""
  gens, fmts = ds.column("generator"), ds.column("format")
  ws, hs = ds.column("width"), ds.column("height")
  label = {c: i for i, c in enumerate(classes)}
  votes, overall = {}, [0] * len(classes)
  for p in train:
    if gens[p] in label:
      key = (fmts[p], ws[p], hs[p])
      votes.setdefault(key, [0] * len(classes))[label[gens[p]]] += 1
      overall[label[gens[p]]] += 1
  fallback = overall.index(max(overall))
  scored = [p for p in test if gens[p] in label]
  right = 0
  for p in scored:
    counts = votes.get((fmts[p], ws[p], hs[p]))
    pred = counts.index(max(counts)) if counts else fallback
    right += pred == label[gens[p]]
  return right / len(scored), sum(label[gens[p]] == fallback for p in scored) / len(scored)


def test_metadata_baseline_matches_its_rule(ds):
  rng = np.random.default_rng(0)
  order = rng.permutation(len(ds))
  train, test = sorted(order[:25].tolist()), sorted(order[25:].tolist())
  m = _manifest(ds, {"train": train, "val": [], "test": test})
  result = shortcuts.metadata_baseline(ds, m)
  want_acc, want_majority = _reference_baseline(ds, train, test, m.classes)
  assert result["accuracy"] == pytest.approx(want_acc)
  assert result["majority_rate"] == pytest.approx(want_majority)
  assert result["chance"] == pytest.approx(1 / 3)
  assert result["num_test"] == len(test) and result["num_train"] == len(train)
  assert result["features"] == ["format", "width", "height"]
  assert result["num_classes"] == 3 and result["test_split"] == "test"
  assert {"accuracy", "chance", "majority_rate", "num_groups", "num_test", "features"} <= set(
      result)
  # Here the metadata alone is a strong attributor: far above chance.
  assert result["accuracy"] > 0.5 > 1 / 3


def test_metadata_baseline_unseen_groups_and_unknown_labels(ds):
  sizes = list(zip(ds.column("format"), ds.column("width"), ds.column("height")))
  train = [p for p, s in enumerate(sizes) if s != ("JPEG", 48, 32)]
  test = [p for p, s in enumerate(sizes) if s == ("JPEG", 48, 32)]
  m = _manifest(ds, {"train": train, "test": test})
  result = shortcuts.metadata_baseline(ds, m)
  # JPEG 48x32 never appears in training: every test record gets the overall majority (FLUX or
  # SDXL: 12 each, the lower label wins), so none is right.
  assert result["unseen_test"] == len(test) and result["accuracy"] == 0.0
  assert result["majority_class"] == "FLUX"
  # Records of classes outside the manifest (open-set unknowns) are left out.
  m = _manifest(ds, {"train": train, "test": test + train[:5]}, classes=("SDXL", "real"))
  result = shortcuts.metadata_baseline(ds, m)
  gens = ds.column("generator")
  assert result["num_test"] == len(test) + sum(gens[p] != "FLUX" for p in train[:5])
  with pytest.raises(ValueError, match="no split 'test'"):
    shortcuts.metadata_baseline(ds, _manifest(ds, {"train": train}))
  assert "vs chance 33.3%" in shortcuts.format_baseline(
      shortcuts.metadata_baseline(ds, _manifest(ds, {"train": train, "test": test})))


def test_size_audit_rule():
  # Two balanced classes with one size each: the plain total-variation distance is only 0.5,
  # the normalised one 1.
  labels = ["a"] * 20 + ["b"] * 20
  audit = shortcuts.size_audit(["PNG"] * 40, [64] * 20 + [32] * 20, [64] * 20 + [32] * 20, labels)
  assert [g["distance"] for g in audit["flagged"]] == [1.0, 1.0]
  assert audit["metadata_accuracy"] == 1.0 and audit["majority_rate"] == 0.5
  # 23 balanced classes: a size shared by two of them is flagged, one shared by 19 is not.
  names = [f"g{i}" for i in range(23)]
  labels, widths = [], []
  for i, name in enumerate(names):
    labels += [name] * 10
    widths += [1024 if i < 2 else 512 if i < 4 else 256] * 10
  audit = shortcuts.size_audit(["PNG"] * len(labels), widths, widths, labels)
  flagged = {g["width"]: g for g in audit["flagged"]}
  assert set(flagged) == {1024, 512}
  assert flagged[1024]["distance"] == pytest.approx((1 - 2 / 23) / (1 - 1 / 23))
  assert flagged[1024]["classes"] == {"g0": 10, "g1": 10}
  assert shortcuts.size_warnings(audit)[0].startswith("size shortcut: the file format and size")
  # A group under 1% of the records, or under 10 records, is not flagged however pure.
  audit = shortcuts.size_audit(["PNG"] * 45, [8] * 9 + [64] * 36, [8] * 9 + [64] * 36,
                               ["a"] * 9 + ["a", "b"] * 18)
  assert audit["flagged"] == []
  # One class: nothing to tell apart.
  assert shortcuts.size_audit(["PNG"] * 3, [1, 2, 3], [1, 2, 3], ["a"] * 3)["flagged"] == []
