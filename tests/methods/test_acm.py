"""The ACM detector: its module against a NumPy re-statement, the losses and their reach, the turns
of its two optimizers, its config checks, and a run through the real loop on a detection task."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import acm as acm_config
from iab_jax import main as main_lib, optimizers, runs
from iab_jax.methods import acm
from iab_jax.models import acm as acm_model

DIM = 12


def small_method(source="real"):
  config = acm_config.get_config("detection:mini_bicubic,runlocal")
  config.model.embed_dim = DIM
  config.acm.hidden, config.acm.bottleneck, config.acm.source = (10, 8), 4, source
  acm.Acm.check_config(config)
  return acm.Acm(config, ["real", "fake"])


def numpy_forward(params, f):
  """The module written out: dense layers, ReLU between, |f - D(E(f))|, a linear logit."""

  def mlp(layers, x, last_activation=False):
    names = sorted(layers, key=lambda n: int(n[len("dense"):]))
    for i, name in enumerate(names):
      x = x @ np.asarray(layers[name]["kernel"]) + np.asarray(layers[name]["bias"])
      if i + 1 < len(names) or last_activation:
        x = np.maximum(x, 0)
    return x

  ae = params["autoencoder"]
  code = mlp(ae["encoder"], f, last_activation=True)
  reconstruction = mlp(ae["decoder"], code)
  attribution = np.abs(f - reconstruction)
  return attribution, mlp(params["classifier"], attribution)[:, 0]


def batch(n=16, seed=0):
  rng = np.random.default_rng(seed)
  return {"features": {"clip": rng.normal(size=(n, DIM)).astype(np.float32)},
          "label": np.arange(n, dtype=np.int32) % 2}


def test_module_matches_numpy_and_predicts_real_then_fake():
  method = small_method()
  variables = method.init(jax.random.key(1))
  b = batch()
  attribution, logit = numpy_forward(jax.tree.map(np.asarray, variables["params"]),
                                     b["features"]["clip"])
  got_a, _, got_logit = method._forward(variables, b)
  np.testing.assert_allclose(got_a, attribution, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_logit, logit, rtol=1e-5, atol=1e-6)
  p = np.asarray(method.predict(variables, b))
  p_fake = 1 / (1 + np.exp(-logit))
  np.testing.assert_allclose(p, np.stack([1 - p_fake, p_fake], -1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(method.embed(variables, b), attribution, rtol=1e-5, atol=1e-6)
  # The widths the config names: encoder 12 -> 10 -> 8 -> 4, decoder mirrored, classifier 12 -> 1.
  shapes = jax.tree.map(lambda x: x.shape, variables["params"])
  assert shapes["autoencoder"]["encoder"]["dense2"]["kernel"] == (8, 4)
  assert shapes["autoencoder"]["decoder"]["dense2"]["kernel"] == (10, DIM)
  assert shapes["classifier"]["dense0"]["kernel"] == (DIM, 1)


@pytest.mark.parametrize("source", ["real", "fake"])
def test_losses_match_numpy_and_each_reaches_only_its_network(source):
  method = small_method(source)
  variables = method.init(jax.random.key(2))
  b = batch(seed=3)
  attribution, logit = numpy_forward(jax.tree.map(np.asarray, variables["params"]),
                                     b["features"]["clip"])
  label = b["label"]
  chosen = label == (0 if source == "real" else 1)
  expected_a = attribution[chosen].sum(-1).mean()
  y = (label == 1).astype(np.float64)
  expected_c = np.mean(np.maximum(logit, 0) - logit * y + np.log1p(np.exp(-np.abs(logit))))
  loss, (_, measured) = method.loss(variables, b, None, None)
  np.testing.assert_allclose(measured["attribution_loss"], expected_a, rtol=1e-5)
  np.testing.assert_allclose(measured["classify_loss"], expected_c, rtol=1e-5)
  np.testing.assert_allclose(loss, expected_a + expected_c, rtol=1e-5)
  np.testing.assert_allclose(measured["attribution_other"], attribution[~chosen].sum(-1).mean(),
                             rtol=1e-5)

  def part(name):
    return lambda params: method.loss({"params": params}, b, None, None)[1][1][name]

  grads_c = jax.grad(part("classify_loss"))(variables["params"])
  grads_a = jax.grad(part("attribution_loss"))(variables["params"])
  norm = lambda tree: float(optax.tree.norm(tree))
  assert norm(grads_c["autoencoder"]) == 0.0 and norm(grads_c["classifier"]) > 0
  assert norm(grads_a["classifier"]) == 0.0 and norm(grads_a["autoencoder"]) > 0


def test_the_networks_take_turns():
  """With alternate_every_steps=2, steps 0-1 move only the autoencoder, 2-3 only the classifier,
  and each group's Adam equals a plain Adam run on that group's own turns."""
  method = small_method()
  config = method.config
  config.optimizer.alternate_every_steps = 2
  tx = optimizers.make(config.optimizer, steps_per_epoch=10, total_steps=100)
  params = method.init(jax.random.key(4))["params"]
  state = tx.init(params)
  reference = {g: optax.adam(2e-4) for g in acm.GROUPS}
  ref_params = dict(params)
  ref_state = {g: reference[g].init(params[g]) for g in acm.GROUPS}
  grad_fn = jax.grad(lambda p, b: method.loss({"params": p}, b, None, None)[0])
  for step in range(6):
    b = batch(seed=10 + step)
    before = params
    updates, state = tx.update(grad_fn(params, b), state, params)
    params = optax.apply_updates(params, updates)
    turn = acm.GROUPS[(step // 2) % 2]
    for group in acm.GROUPS:
      moved = norm_diff(before[group], params[group])
      assert (moved > 0) == (group == turn), (step, group)
    g = grad_fn(ref_params, b)[turn]
    u, ref_state[turn] = reference[turn].update(g, ref_state[turn], ref_params[turn])
    ref_params = {**ref_params, turn: optax.apply_updates(ref_params[turn], u)}
  for group in acm.GROUPS:
    for got, want in zip(jax.tree.leaves(params[group]), jax.tree.leaves(ref_params[group])):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def norm_diff(a, b) -> float:
  return float(optax.tree.norm(jax.tree.map(lambda x, y: x - y, a, b)))


@pytest.mark.parametrize("change, message", [
    ({"task": "standard"}, "ACM is a real/fake detector"),
    ({"acm.source": "mini_nearest"}, "config.acm.source='mini_nearest'"),
    ({"acm.bottleneck": 0}, "positive layer widths"),
    ({"acm.activation": "swish"}, "config.acm.activation='swish'"),
    ({"optimizer.groups": {"classifier": {}}}, "config.optimizer.groups"),
    ({"optimizer.turn_order": ("classifier", "autoencoder")}, "config.optimizer.turn_order"),
])
def test_config_errors_name_the_key(change, message):
  config = acm_config.get_config("detection:mini_bicubic,runlocal")
  for key, value in change.items():
    *path, leaf = key.split(".")
    node = config
    for p in path:
      node = node[p]
    if isinstance(value, dict):
      node[leaf] = ml_collections.ConfigDict(value)
    else:
      node[leaf] = value
  with pytest.raises(ValueError, match=message.replace("(", r"\(")):
    acm.Acm.check_config(config)


def test_generator_sources_are_accepted():
  for source in ("real", "fake", "mini_bicubic"):
    config = acm_config.get_config("detection:mini_bicubic,runlocal")
    config.acm.source = source
    acm.Acm.check_config(config)
  assert small_method("mini_bicubic").source_label == 1
  from iab_jax import methods

  config = acm_config.get_config("detection:mini_bicubic,runlocal")
  config.acm.source = "mini_bicubic"
  assert methods.get("acm")(config, ["real", "fake"]).display_name == "ACM (source mini_bicubic)"
  config.acm.source = "real"
  assert methods.get("acm")(config, ["real", "fake"]).display_name == "ACM"


def test_runlocal_detection_run_through_the_loop(tiny_bench, tmp_path):
  """A detection:<generator> run trains on cached features alone (no image decoded in
  training), tests real against every generator at 7 levels, and writes the tables' input."""
  config = acm_config.get_config(f"detection:mini_bicubic,runlocal,data={tiny_bench}")
  config.feature_cache = str(tmp_path / "features")
  workdir = str(tmp_path / "run")
  results = main_lib.run(config, workdir)
  with open(os.path.join(workdir, runs.RESULTS_JSON)) as f:
    saved = json.load(f)
  assert saved["classes"] == ["real", "fake"] and saved["task"] == "detection:mini_bicubic"
  assert list(saved["evals"]) == ["detection"]
  levels = saved["evals"]["detection"]["levels"]
  assert sorted(levels, key=int) == [str(k) for k in range(7)]
  clean = levels["0"]
  assert clean["trained_on"] == ["mini_bicubic"]
  assert len(clean["per_generator"]) == 6
  for m in clean["per_generator"].values():
    assert 0.0 <= m["ap"] <= 1.0 and 0.0 <= m["accuracy"] <= 1.0
  assert results["checkpoint"]["step"] == 3


def test_it_detects_when_each_class_has_its_own_manifold():
  """The method's premise, made true: real features on one 3-d subspace of R^12 and generated
  ones on another. The autoencoder, fitted on the real class alone, reconstructs real features
  and not generated ones; the classifier on |f - D(E(f))| then tells them apart, and the
  attribution of the other class stays far above the learned one's."""
  method = small_method()
  method.config.optimizer.learning_rate = 1e-2
  tx = optimizers.make(method.config.optimizer, steps_per_epoch=10, total_steps=600)
  rng = np.random.default_rng(0)
  bases = [np.linalg.qr(rng.normal(size=(DIM, 3)))[0].T * 3 for _ in range(2)]

  def draw(n, seed):
    r = np.random.default_rng(seed)
    label = np.arange(n, dtype=np.int32) % 2
    codes = r.normal(size=(n, 3))
    f = np.stack([codes[i] @ bases[label[i]] for i in range(n)]) + 0.01 * r.normal(size=(n, DIM))
    return {"features": {"clip": f.astype(np.float32)}, "label": label}

  @jax.jit
  def step(params, state, b):
    (_, (_, measured)), grads = jax.value_and_grad(
        lambda p: method.loss({"params": p}, b, None, None), has_aux=True)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, measured

  params = method.init(jax.random.key(0))["params"]
  state = tx.init(params)
  for i in range(600):
    params, state, measured = step(params, state, draw(64, i))
  held_out = draw(256, 10_000)
  p_fake = np.asarray(method.predict({"params": params}, held_out))[:, 1]
  accuracy = np.mean((p_fake > 0.5) == (held_out["label"] == 1))
  _, (_, measured) = method.loss({"params": params}, held_out, None, None)
  assert accuracy > 0.95, accuracy
  assert measured["attribution_other"] > 3 * measured["attribution_loss"], measured
