"""The grain pipeline and the pre-resized cache: shapes, determinism, sharding, resume, cache."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from iab_jax.data import cache, degradations, generators, pipeline, records, transforms

SPEC = "resize(32)|central_crop(32)|flip_lr|normalize('imagenet')"


def _png(rng, w, h):
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
  return buf.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("ds"))
  rng = np.random.default_rng(0)
  classes = ["SDXL", "FLUX", "real"]
  semantics = ["cat", "bedroom", "FFHQ"]

  def gen():
    for i in range(45):
      data = _png(rng, int(rng.integers(40, 70)), int(rng.integers(40, 70)))
      img = Image.open(io.BytesIO(data))
      yield records.ImageRecord(
          image=data, key=f"k{i}", generator=classes[i % 3], label=i % 3, levels=(0, 0, 0, 0),
          semantic=semantics[(i // 3) % 3], source="test", width=img.width, height=img.height,
          format="PNG", sha256=records.sha256_bytes(data))

  records.write_dataset(root, gen(), classes, records_per_shard=10)
  return records.Dataset(root)


def _make(ds, **kw):
  kw.setdefault("process_index", 0)
  kw.setdefault("process_count", 1)
  kw.setdefault("cache", None)
  labels = ds.column("label").astype(np.int32)
  positions = kw.pop("positions", np.arange(len(ds)))
  return pipeline.make_dataset(ds, positions, labels, kw.pop("spec", SPEC), **kw)


def test_shapes_and_dtypes(dataset):
  batch = next(iter(_make(dataset, batch_size=8, train=True)))
  assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["label"].dtype == np.int32 and batch["semantic"].dtype == np.int32
  assert batch["position"].dtype == np.int64 and batch["mask"].all()
  np.testing.assert_array_equal(batch["label"], dataset.column("label")[batch["position"]])
  sem = [generators.SEMANTIC_ORDER[s] for s in batch["semantic"]]
  assert sem == list(dataset.column("semantic")[batch["position"]])
  raw = next(iter(_make(dataset, batch_size=4, train=False, spec="resize(24)|central_crop(24)")))
  assert raw["image"].dtype == np.uint8 and raw["image"].shape == (4, 24, 24, 3)


def test_train_deterministic_epochs_differ(dataset):
  a = [b["position"] for b in _make(dataset, batch_size=5, train=True, seed=3, num_epochs=2)]
  b = [b["position"] for b in _make(dataset, batch_size=5, train=True, seed=3, num_epochs=2)]
  c = [b["position"] for b in _make(dataset, batch_size=5, train=True, seed=4, num_epochs=2)]
  assert len(a) == 18  # 2 epochs x 45 // 5
  np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
  assert not np.array_equal(np.concatenate(a), np.concatenate(c))
  first, second = np.concatenate(a[:9]), np.concatenate(a[9:])
  assert sorted(first) == sorted(second) == list(range(45))
  assert not np.array_equal(first, second)
  # Random ops draw the same numbers for the same seed.
  x = next(iter(_make(dataset, batch_size=5, train=True, seed=3)))["image"]
  y = next(iter(_make(dataset, batch_size=5, train=True, seed=3)))["image"]
  np.testing.assert_array_equal(x, y)


def test_eval_pads_with_mask_and_keeps_order(dataset):
  positions = np.arange(3, 40)
  batches = list(_make(dataset, positions=positions, batch_size=8, train=False,
                       spec="resize(16)|central_crop(16)"))
  assert len(batches) == pipeline.steps_per_epoch(37, 8, train=False) == 5
  pos = np.concatenate([b["position"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 37 and not mask[37:].any()
  np.testing.assert_array_equal(pos[mask], positions)


def test_process_shards_form_the_global_batch(dataset):
  full = list(_make(dataset, batch_size=6, train=True, seed=1))
  parts = [list(_make(dataset, batch_size=6, train=True, seed=1, process_index=p,
                      process_count=3)) for p in range(3)]
  assert all(len(p) == len(full) for p in parts)
  for step, batch in enumerate(full):
    local = np.concatenate([parts[p][step]["position"] for p in range(3)])
    assert sorted(local) == sorted(batch["position"])
  with pytest.raises(ValueError, match="divisible"):
    _make(dataset, batch_size=7, train=True, process_count=2)


def test_degradation_applied_to_the_original(dataset):
  level, spec = 4, "resize(24)|central_crop(24)"
  batch = next(iter(_make(dataset, batch_size=4, train=False, spec=spec, degradation=level)))
  t = transforms.parse(spec)
  for image, p in zip(batch["image"], batch["position"]):
    expected = t(degradations.degrade(records.decode(dataset.raw(p)), level))
    np.testing.assert_array_equal(image, expected)
  clean = next(iter(_make(dataset, batch_size=4, train=False, spec=spec)))
  assert not np.array_equal(clean["image"], batch["image"])


def test_iterator_state_resumes_exactly(dataset):
  it = iter(_make(dataset, batch_size=4, train=True, seed=5, num_epochs=2))
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it)["image"] for _ in range(4)]
  resumed = iter(_make(dataset, batch_size=4, train=True, seed=5, num_epochs=2))
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["image"], want)


def test_worker_processes_give_the_same_stream(dataset):
  local = [b["image"] for b in _make(dataset, batch_size=5, train=True, seed=2)]
  workers = [b["image"] for b in _make(dataset, batch_size=5, train=True, seed=2,
                                       worker_count=2)]
  assert len(local) == len(workers)
  for a, b in zip(local, workers):
    np.testing.assert_array_equal(a, b)


def test_cache_serves_the_same_pixels(dataset, tmp_path):
  out = str(tmp_path / "cache")
  built = cache.build(dataset, "resize(32)|central_crop(32)", out=out, jobs=1, quiet=True)
  assert len(built.shard_paths) == len(dataset.info["shards"])
  direct = list(_make(dataset, batch_size=9, train=True, seed=7))
  cached = list(_make(dataset, batch_size=9, train=True, seed=7, cache=out))
  for a, b in zip(direct, cached):
    np.testing.assert_array_equal(a["position"], b["position"])
    np.testing.assert_array_equal(a["image"], b["image"])
  # A cache cannot serve another prefix, nor degraded evaluation.
  with pytest.raises(ValueError, match="does not begin"):
    _make(dataset, batch_size=9, train=True, spec="resize(40)", cache=out)
  with pytest.raises(ValueError, match="degradation"):
    _make(dataset, batch_size=9, train=False, degradation=2, cache=out)


def test_cache_png_codec_resume_and_auto(dataset):
  spec = "resize(20)|central_crop(20)"
  built = cache.build(dataset, spec, codec="png", jobs=2, quiet=True)
  assert built.root.startswith(os.path.join(dataset.root, cache.CACHE_DIR))
  first = records.sha256_file(built.shard_paths[1])
  os.remove(built.shard_paths[1])
  mtime = os.path.getmtime(built.shard_paths[0])
  rebuilt = cache.build(dataset, spec, codec="png", jobs=1, quiet=True)
  assert records.sha256_file(rebuilt.shard_paths[1]) == first
  assert os.path.getmtime(rebuilt.shard_paths[0]) == mtime  # finished shards are kept
  found = cache.find(dataset, spec + "|flip_lr", "auto")
  assert found is not None and found.remaining(spec + "|flip_lr") == "flip_lr"
  assert cache.find(dataset, "resize(21)", "auto") is None
  with pytest.raises(ValueError, match="deterministic"):
    cache.build(dataset, "resize(20)|flip_lr", jobs=1, quiet=True)
  image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  for codec in cache.CODECS:
    np.testing.assert_array_equal(cache.decode(cache.encode(image, codec)), image)


def test_read_ahead_is_bounded_in_batches(dataset, monkeypatch):
  """grain's default read-ahead (hundreds of elements, here whole batches) is what let a 256^2
  run grow to 8.6 GB; the pipeline reads at most read_threads + prefetch_batches batches ahead."""
  import threading
  import time

  reads, lock = [], threading.Lock()
  original = pipeline.RecordsSource.__getitem__

  def counting(self, i):
    with lock:
      reads.append(i)
    return original(self, i)

  monkeypatch.setattr(pipeline.RecordsSource, "__getitem__", counting)
  it = iter(_make(dataset, batch_size=3, train=True, num_epochs=40, read_threads=1,
                  prefetch_batches=2))
  next(it)
  time.sleep(1.0)  # time for any read-ahead to happen
  bound = pipeline.buffered_batches(read_threads=1, prefetch_batches=2) + 1  # + the batch taken
  assert 3 <= len(reads) <= 3 * bound, len(reads)
  assert pipeline.buffered_batches(2, 2, worker_count=3, worker_buffer_batches=1) == 15


def test_reading_options_validated(dataset):
  for kw in ({"read_threads": 0}, {"prefetch_batches": 0}, {"worker_count": -1},
             {"sixteen_bit": "round"}):
    with pytest.raises(ValueError, match=next(iter(kw))):
      _make(dataset, batch_size=3, train=True, **kw)


def test_mixed_shapes_fail_with_one_line_naming_the_transform(dataset):
  """Images of 40-70 px through a transform without a fixed size: one clear error, not NumPy's."""
  it = iter(_make(dataset, batch_size=8, train=True, spec="normalize('half')"))
  with pytest.raises(pipeline.InputError) as raised:
    next(it)
  message = str(raised.value)
  assert "\n" not in message
  assert message.startswith("transform \"normalize('half')\" yields images of different shapes")
  assert message.count("(") >= 4 and "central_crop(256)" in message
  # A fixed-size ending serves the same records.
  assert next(iter(_make(dataset, batch_size=8, train=True,
                         spec="resize(20)|central_crop(20)")))["image"].shape == (8, 20, 20, 3)


def test_mixed_shapes_from_worker_processes_raise_the_same_error(dataset):
  it = iter(_make(dataset, batch_size=8, train=True, spec="flip_lr", worker_count=1))
  with pytest.raises(pipeline.InputError, match="different shapes"):
    next(it)


def test_without_images_the_stream_is_the_same_and_nothing_is_decoded(dataset, monkeypatch):
  """images=False (a method on cached features) yields the training stream's labels, positions
  and levels in the same order, and reads no record."""
  with_images = [b for _, b in zip(range(6), _make(dataset, batch_size=8, train=True, seed=3,
                                                   num_epochs=None))]
  monkeypatch.setattr(records, "decode", lambda *a, **k: pytest.fail("decoded an image"))
  without = [b for _, b in zip(range(6), _make(dataset, batch_size=8, train=True, seed=3,
                                               num_epochs=None, images=False))]
  for a, b in zip(with_images, without):
    assert "image" not in b and set(b) == set(a) - {"image"}
    for key in b:
      np.testing.assert_array_equal(a[key], b[key])
  with pytest.raises(ValueError, match="partners"):
    _make(dataset, batch_size=8, train=True, images=False, partners=1)
