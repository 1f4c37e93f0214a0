"""The small command-line tools: build_cache and inspect, end to end on an ingested tree."""

import pytest

from data_prep import build_cache, inspect, split
from iab_jax.data import cache, records
from tests.data_prep.test_ingest import ingest_dataset, make_tree


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
