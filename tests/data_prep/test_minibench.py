"""Tests of data_prep.minibench: contents, fidelity to the sources, determinism, learnability."""

import functools
import json
import time

import numpy as np
import pytest

from data_prep import minibench
from data_prep import split
from iab_jax.data import generators as generators_lib
from iab_jax.data import records

PSNR_FLOOR = minibench.PSNR_FLOOR_DB
SMALL = dict(patches_per_semantic=9, patch_size=32, seed=3)


@pytest.fixture(scope="module")
def default_bench(tmp_path_factory):
  """The default build (what the quickstart uses), made once for the tests that read it."""
  root = str(tmp_path_factory.mktemp("minibench") / "default")
  start = time.perf_counter()
  minibench.build(root, verbose=False)
  seconds = time.perf_counter() - start
  print(f"\ndefault mini-bench built in {seconds:.1f} s")
  return root, seconds


def _pixels(ds: records.Dataset) -> np.ndarray:
  return np.stack([np.asarray(records.decode(ds.raw(i))) for i in range(len(ds))])


# ----------------------------------------------------------------------------------------------
# The simulator's pieces.


def test_transposed_conv_with_bilinear_kernel_is_bilinear_interpolation():
  d = np.random.default_rng(0).uniform(0, 255, (2, 5, 7, 3))
  deconv = minibench.upsample_transposed_conv(d, minibench.bilinear_taps(3))
  bilinear = minibench.upsample_interpolate(d, minibench._triangle, 1)
  np.testing.assert_allclose(deconv, bilinear, atol=1e-9)


def test_pixel_shuffle_with_identity_mix_is_nearest():
  d = np.random.default_rng(1).uniform(0, 255, (2, 4, 6, 3))
  mix = np.broadcast_to(np.eye(3), (2, 2, 3, 3))
  np.testing.assert_allclose(minibench.upsample_pixel_shuffle(d, mix),
                             minibench.upsample_nearest(d))
  np.testing.assert_allclose(minibench.encode(minibench.upsample_nearest(d)), d)


# Triangle and Keys cubic with a = -1/2 reproduce a linear ramp exactly; a = -3/4 (the
# generators' choice, PyTorch's) and Lanczos only nearly.
@pytest.mark.parametrize("kernel,support,atol", [
    (minibench._triangle, 1, 1e-9),
    (functools.partial(minibench._keys_cubic, a=-0.5), 2, 1e-9),
    (minibench._keys_cubic, 2, 0.05),
    (minibench._lanczos3, 3, 0.02)])
def test_interpolators_keep_flat_and_ramp_images(kernel, support, atol):
  flat = np.full((1, 6, 6, 3), 77.0)
  np.testing.assert_allclose(minibench.upsample_interpolate(flat, kernel, support), 77.0)
  # Away from the edges, output 2i and 2i+1 sample the ramp at i - 1/4 and i + 1/4.
  ramp = np.broadcast_to(np.arange(16.0)[None, :, None, None], (1, 16, 16, 3))
  up = minibench.upsample_interpolate(ramp, kernel, support)[0, 8:24, 0, 0]
  np.testing.assert_allclose(up, np.arange(8, 24) / 2 - 0.25, atol=atol)


def test_generators_respect_the_psnr_floor_even_on_noise():
  # White noise is the worst case for a 2x encoder: the cap must still hold the bound.
  x = np.random.default_rng(2).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  for gen in minibench.GENERATORS:
    y, gain = gen.generate(x)
    assert y.shape == x.shape and y.dtype == np.uint8
    values = minibench.psnr(y, x)
    assert values.min() >= PSNR_FLOOR, (gen.name, values.min())
    assert np.isfinite(values).all(), f"{gen.name} returned its input unchanged"
    assert (gain < 1).all()  # noise needs the cap everywhere


def test_generator_parameters_are_fixed_by_their_own_seed():
  gen = minibench.GENERATORS[0]
  a, b = gen.params(), gen.params()
  np.testing.assert_array_equal(a["kernel"], b["kernel"])
  other = minibench.MiniGenerator("x", gen.upsample, gen.activation, gen.norm, seed=gen.seed + 1)
  assert not np.array_equal(a["kernel"], other.params()["kernel"])


# ----------------------------------------------------------------------------------------------
# The default build.


def test_default_build_is_complete(default_bench):
  root, seconds = default_bench
  assert seconds < 120, f"the default build took {seconds:.0f} s"
  ds = records.Dataset(root)
  gens = [g.name for g in minibench.GENERATORS]
  assert len(gens) >= 6
  assert ds.classes == generators_lib.class_order(["real", *gens])
  assert ds.classes[0] == "real"
  semantics = sorted(set(ds.column("semantic").tolist()))
  assert len(semantics) >= 3 and {"cat", "FFHQ"} <= set(semantics)
  assert set(semantics) <= set(generators_lib.SEMANTICS)
  for cls in ds.classes:
    for sem in semantics:
      assert ds.info["counts"][cls][sem] == 72, (cls, sem)
  assert len(ds) == 72 * len(semantics) * len(ds.classes)
  assert ds.verify(deep=True) == []

  labels = ds.column("label")
  generator = ds.column("generator")
  np.testing.assert_array_equal(labels, [ds.classes.index(g) for g in generator])
  keys = ds.column("key").tolist()
  assert len(set(keys)) == len(keys)
  # Distinct bytes everywhere: a generated image equal to its source would be a label clash.
  assert len(set(ds.column("sha256").tolist())) == len(ds)
  for i in (0, len(ds) // 2, len(ds) - 1):
    r = ds[i]
    assert r.key == f"{r.generator}/{r.semantic}/{r.filename}"
    assert r.source.startswith("minibench/") and r.format == "PNG"
    assert (r.width, r.height) == (64, 64)
    assert np.asarray(records.decode(r)).shape == (64, 64, 3)
    assert r.levels == (generators_lib.family_levels("real") if r.generator == "real"
                        else minibench.GENERATOR_LEVELS)


def test_every_generated_image_is_close_to_its_source(default_bench):
  root, _ = default_bench
  ds = records.Dataset(root)
  pixels = _pixels(ds)
  keys = ds.column("key").tolist()
  position = {k: i for i, k in enumerate(keys)}
  generator = ds.column("generator")
  extra = [json.loads(e) for e in ds.column("extra")]
  figures = {}
  for cls in ds.classes[1:]:
    rows = np.flatnonzero(generator == cls)
    sources = [position[extra[i]["source_key"]] for i in rows]  # KeyError: source not in dataset
    assert all(generator[s] == "real" for s in sources)
    assert all(keys[s].split("/", 1)[1] == keys[i].split("/", 1)[1] for i, s in zip(rows, sources))
    values = minibench.psnr(pixels[rows], pixels[sources])
    assert np.isfinite(values).all(), f"{cls} left an image unchanged"
    assert values.min() >= PSNR_FLOOR, (cls, values.min())
    stored = ds.info["minibench"]["generators"][cls]
    assert stored["psnr_min"] == pytest.approx(values.min(), abs=1e-3)
    figures[cls] = f"{values.min():.2f}/{values.mean():.2f}"
  print("\nPSNR min/mean (dB):", figures)


def test_default_build_supports_the_protocol_splits(default_bench):
  root, _ = default_bench
  ds = records.Dataset(root)
  for manifest in (split.standard_split(ds), split.semantic_split(ds, "cat"),
                   split.semantic_split(ds, "FFHQ")):
    per_class = manifest["report"]["per_class"]
    for name in ("train", "val", "test"):
      assert set(per_class[name]) == set(ds.classes), (manifest["name"], name)
    assert not manifest["report"]["warnings"], manifest["report"]["warnings"]


# ----------------------------------------------------------------------------------------------
# Determinism and the command line.


def test_builds_are_deterministic(tmp_path):
  a = minibench.build(str(tmp_path / "a"), verbose=False, **SMALL)
  b = minibench.build(str(tmp_path / "b"), verbose=False, **SMALL)
  assert a["fingerprint"] == b["fingerprint"]
  assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
  with open(tmp_path / "a" / records.DATASET_JSON) as fa, \
       open(tmp_path / "b" / records.DATASET_JSON) as fb:
    assert fa.read() == fb.read()
  c = minibench.build(str(tmp_path / "c"), verbose=False, **{**SMALL, "seed": 4})
  assert c["fingerprint"] != a["fingerprint"]  # the seed does pick the patches


def test_cli_builds_a_small_dataset_and_refuses_to_overwrite(tmp_path, capsys):
  out = str(tmp_path / "mb")
  argv = ["--out", out, "--patch_size", "32", "--patches_per_semantic", "6",
          "--semantics", "cat", "FFHQ", "COCO"]
  minibench.main(argv)
  text = capsys.readouterr().out
  assert "mini-bench: 126 images" in text and "mini_nearest" in text
  ds = records.Dataset(out)
  assert len(ds) == 6 * 3 * (len(minibench.GENERATORS) + 1)
  assert np.asarray(records.decode(ds.raw(len(ds) - 1))).shape == (32, 32, 3)
  with pytest.raises(SystemExit):
    minibench.main(argv)


# ----------------------------------------------------------------------------------------------
# Learnability: a small CNN attributes the images far above chance.


def test_small_cnn_separates_the_classes(default_bench):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax

  root, _ = default_bench
  ds = records.Dataset(root)
  x = _pixels(ds).astype(np.float32)
  y = ds.column("label").astype(np.int32)
  # Hold out whole source patches: no content seen in training is tested on.
  group = np.array([f"{s}/{f}" for s, f in zip(ds.column("semantic"), ds.column("filename"))])
  rng = np.random.default_rng(0)
  names = np.unique(group)
  held_out = np.isin(group, rng.permutation(names)[:len(names) // 5])

  class SmallCNN(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x):
      x = x / 127.5 - 1
      # Fingerprints live in the high frequencies: take the content's local mean out first.
      padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
      x = x - nn.avg_pool(padded, (3, 3), strides=(1, 1))
      for features, stride in ((16, 1), (32, 2), (32, 2), (64, 2)):
        x = nn.relu(nn.Conv(features, (3, 3), strides=stride)(x))
      x = jnp.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=-1)
      return nn.Dense(self.num_classes)(x)

  steps, batch, crop = 800, 64, 32
  model = SmallCNN(len(ds.classes))
  params = model.init(jax.random.key(0), x[:1, :crop, :crop])
  tx = optax.adam(optax.cosine_decay_schedule(3e-3, steps))
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, images, labels):
    def loss_fn(p):
      logits = model.apply(p, images)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  x_train, y_train = x[~held_out], y[~held_out]
  start = time.perf_counter()
  for _ in range(steps):
    rows = rng.integers(0, len(x_train), batch)
    # Crops at even offsets keep the 2x up-samplers' period-2 patterns in phase.
    top, left = 2 * rng.integers(0, (x.shape[1] - crop) // 2 + 1, 2)
    params, opt_state, loss = train_step(params, opt_state,
                                         x_train[rows, top:top + crop, left:left + crop],
                                         y_train[rows])
  predict = jax.jit(lambda p, images: model.apply(p, images).argmax(-1))
  x_test, y_test = x[held_out], y[held_out]
  predictions = np.concatenate([np.asarray(predict(params, x_test[i:i + 256]))
                                for i in range(0, len(x_test), 256)])
  accuracy = float(np.mean(predictions == y_test))
  chance = 1 / len(ds.classes)
  print(f"\nsmall CNN: held-out accuracy {accuracy:.3f} on {len(y_test)} images "
        f"(chance {chance:.3f}), {steps} steps in {time.perf_counter() - start:.1f} s, "
        f"final loss {float(loss):.3f}")
  assert accuracy >= 3 * chance
