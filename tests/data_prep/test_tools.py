"""The small command-line tools: build_cache and inspect end to end on an ingested tree, and the
one-line user errors every data_prep tool gives."""

import os
import subprocess
import sys
import time

import pytest

from data_prep import build_cache, inspect, split
from iab_jax.data import cache, generators, records
from tests.data_prep.test_ingest import ROOT, ingest_dataset, make_tree, png_bytes


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("tools")
  make_tree(root / "src", per_folder=4)
  ingest_dataset(str(root / "src"), str(root / "data"))
  split.main(["--data", str(root / "data"), "--protocol", "standard", "--quiet"])
  return str(root / "data")


def test_build_cache_cli(data):
  assert build_cache.main(["--data", data, "--spec", "resize(16)|central_crop(16)", "--jobs", "1",
                           "--quiet"]) == 0
  found = cache.find(records.Dataset(data), "resize(16)|central_crop(16)|flip_lr", "auto")
  assert found is not None and found.info["num_records"] == len(records.Dataset(data))


def test_inspect_cli(data, capsys):
  assert inspect.main(["--data", data, "--manifest", "standard", "--split", "val",
                       "--transform", "resize(16)|central_crop(16)", "--verify"]) == 0
  out = capsys.readouterr().out
  assert "all checksums match" in out
  assert "real" in out and "1,2,5,22" in out
  assert "batch: image (32, 16, 16, 3) uint8" in out
  with pytest.raises(SystemExit, match="not in the manifest"):
    inspect.main(["--data", data, "--manifest", "standard", "--split", "nope"])


def test_inspect_shortcut_baseline(data, capsys):
  assert inspect.main(["--data", data, "--manifest", "standard", "--shortcut_baseline"]) == 0
  out = capsys.readouterr().out
  line = next(l for l in out.splitlines() if l.startswith("metadata-only baseline"))
  # make_tree: real is half JPEG, grok3 alone is larger: the metadata beats chance (25%).
  assert "test accuracy" in line and "vs chance 25.0%" in line
  assert "batch:" not in out  # the baseline reads no pixels


def _long_named(root):
  """A dataset whose class and semantic names are longer than the old fixed columns."""
  recs = []
  for i, (gen, sem) in enumerate([("a-generator-with-a-long-name", "ImageNet-1k"),
                                  ("a-generator-with-a-long-name", "classroom"),
                                  ("real", "ImageNet-1k")] * 3):
    data = png_bytes(i)
    recs.append(records.ImageRecord(
        image=data, key=f"{gen}/{sem}/{i}.png", generator=gen, label=-1,
        levels=generators.family_levels(gen), semantic=sem, source="t", width=40, height=32,
        format="PNG", sha256=records.sha256_bytes(data)))
  records.write_dataset(str(root), recs, generators.class_order({r.generator for r in recs}))
  return records.Dataset(str(root))


def test_counts_table_fits_long_names(tmp_path):
  table = inspect.counts_table(_long_named(tmp_path))
  header, *rows = table.splitlines()
  assert header.split() == ["label", "class", "levels", "ImageNet-1k", "classroom", "total"]
  assert rows[1].split() == ["1", "a-generator-with-a-long-name", "-1,-1,-1,-1", "3", "3", "6"]
  # Columns line up: every count ends where its header ends.
  for name in ("ImageNet-1k", "classroom", "total"):
    end = header.index(name) + len(name)
    assert all(row[end - 1] != " " and (len(row) == end or row[end] == " ") for row in rows)


def _run(tool, *args):
  start = time.perf_counter()
  done = subprocess.run([sys.executable, "-X", "importtime", "-m", f"data_prep.{tool}", *args],
                        cwd=ROOT, capture_output=True, text=True, check=False)
  elapsed = time.perf_counter() - start
  lines = [l for l in done.stderr.splitlines() if not l.startswith("import time:")]
  imported = {l.rsplit("|", 1)[-1].strip().split(".")[0] for l in done.stderr.splitlines()
              if l.startswith("import time:")}
  return done, lines, imported, elapsed


@pytest.fixture(scope="module")
def no_bedroom(tmp_path_factory):
  root = tmp_path_factory.mktemp("no_bedroom")
  recs = []
  for i, gen in enumerate(["real", "SDXL"] * 3):
    data = png_bytes(i)
    recs.append(records.ImageRecord(
        image=data, key=f"{gen}/cat/{i}.png", generator=gen, label=-1,
        levels=generators.family_levels(gen), semantic="cat", source="t", width=40, height=32,
        format="PNG", sha256=records.sha256_bytes(data)))
  records.write_dataset(str(root), recs, ["SDXL", "real"])
  return str(root)


def test_user_errors_are_one_line(tmp_path, no_bedroom):
  missing, empty = str(tmp_path / "missing"), str(tmp_path / "empty")
  os.makedirs(empty)
  a_file = str(tmp_path / "file.txt")
  with open(a_file, "w") as f:
    f.write("x")
  cases = [
      (("split", "--data", missing, "--protocol", "standard"),
       f"error: --data {missing}: no such directory; expected a dataset directory"),
      (("split", "--data", empty, "--protocol", "standard"),
       f"error: --data {empty} holds no dataset (dataset.json missing)"),
      (("split", "--data", no_bedroom, "--protocol", "semantic", "--semantic", "2"),
       "error: --semantic 2: semantic class bedroom (task 2) has no records in this dataset; "
       "present: cat"),
      (("split", "--data", no_bedroom, "--protocol", "semantic", "--semantic", "church"),
       "error: --semantic church: semantic class church has no records"),
      (("split", "--data", no_bedroom, "--protocol", "group", "--test_groups", "2"),
       f"error: --protocol group: {no_bedroom} has no groups"),
      (("inspect", "--data", missing), f"error: --data {missing}: no such directory"),
      (("inspect", "--data", empty), f"error: --data {empty} holds no dataset"),
      (("inspect", "--data", no_bedroom, "--manifest", "standard"),
       "error: --manifest standard: neither a file nor"),
      (("ingest", "--src", missing, "--out", str(tmp_path / "out")),
       f"error: --src {missing}: no such directory; expected the download"),
      (("ingest", "--src", a_file, "--out", str(tmp_path / "out")),
       f"error: --src {a_file}: not a directory"),
      (("ingest", "--src", empty, "--out", empty, "--merge"),
       f"error: --out {empty} has no ingest plan"),
      (("build_cache", "--data", empty), f"error: --data {empty} holds no dataset"),
      (("merge", "--out", str(tmp_path / "merged"), no_bedroom, missing),
       f"error: input {missing}: no such directory"),
  ]
  for args, expected in cases:
    done, lines, imported, elapsed = _run(*args)
    assert done.returncode == 2, (args, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, args
    assert len(lines) == 1 and lines[0].startswith(expected), (args, lines)
    # The checks run before anything heavy is imported, so the answer comes at once.
    assert not imported & {"jax", "jaxlib", "grain", "tensorflow", "torch"}, (args, imported)
    assert elapsed < 10, (args, elapsed)
  assert not os.path.exists(tmp_path / "out")


def test_pools_spawn_rather_than_fork(data, tmp_path, monkeypatch):
  """A fork copies the threads JAX or grain started in the parent (os.fork() warns about it):
  ingest and the cache build start their processes without os.fork."""
  import jax.numpy as jnp  # JAX's threads are alive in this process

  from data_prep import ingest

  jnp.ones(3).block_until_ready()

  def no_fork():
    raise AssertionError("os.fork() called")

  monkeypatch.setattr(os, "fork", no_fork)
  built = cache.build(records.Dataset(data), "resize(8)", out=str(tmp_path / "cache"), jobs=2,
                      quiet=True)
  assert built.info["num_records"] == len(records.Dataset(data))
  make_tree(tmp_path / "src", per_folder=1)
  ingest.run_worker(str(tmp_path / "src"), str(tmp_path / "out"), jobs=2, quiet=True)
  ingest.merge(str(tmp_path / "out"), quiet=True)
  assert len(records.Dataset(str(tmp_path / "out"))) > 0
