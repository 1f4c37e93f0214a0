"""Optimizer configs: the paper's recipes as optax transformations and schedules."""

import numpy as np
import optax
import pytest

from iab_jax import optimizers


def test_step_decay_halves_every_five_epochs():  # FSD: Adam 1e-4, x0.5 every 5 epochs
  cfg = {"name": "adam", "learning_rate": 1e-4, "schedule": "step", "decay_every_epochs": 5,
         "decay_factor": 0.5}
  lr = optimizers.learning_rate_schedule(cfg, steps_per_epoch=10, total_steps=100)
  assert float(lr(0)) == pytest.approx(1e-4) and float(lr(49)) == pytest.approx(1e-4)
  assert float(lr(50)) == pytest.approx(5e-5) and float(lr(99)) == pytest.approx(5e-5)


def test_cosine_with_warmup():  # Omni-DFA: AdamW, cosine with 2 warm-up epochs
  cfg = {"name": "adamw", "learning_rate": 2e-5, "weight_decay": 0.01, "schedule": "cosine",
         "warmup_epochs": 2}
  lr = optimizers.learning_rate_schedule(cfg, steps_per_epoch=10, total_steps=200)
  assert float(lr(0)) == 0 and float(lr(10)) == pytest.approx(1e-5)
  assert float(lr(20)) == pytest.approx(2e-5)
  assert float(lr(200)) == pytest.approx(0, abs=1e-12)
  optimizers.make(cfg, 10, 200)


def test_adam_matches_optax():
  params = {"w": np.ones(3, np.float32)}
  grads = {"w": np.array([0.1, -0.2, 0.3], np.float32)}
  ours = optimizers.make({"name": "adam", "learning_rate": 1e-3}, 10, 100)
  ref = optax.adam(1e-3)
  a, _ = ours.update(grads, ours.init(params), params)
  b, _ = ref.update(grads, ref.init(params), params)
  np.testing.assert_allclose(a["w"], b["w"])


@pytest.mark.parametrize("cfg, message", [
    ({"name": "adam"}, "learning_rate is required"),
    ({"name": "lion", "learning_rate": 1}, "expected 'adam', 'adamw' or 'sgd'"),
    ({"learning_rate": 1, "schedule": "poly"}, "schedule='poly'"),
    ({"learning_rate": 1, "lr_decay": 2}, "unknown keys ['lr_decay']"),
])
def test_errors_name_the_key(cfg, message):
  with pytest.raises(ValueError, match=r"config\.optimizer") as e:
    optimizers.make(cfg, 10, 100)
  assert message in str(e.value)
