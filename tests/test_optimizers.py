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


def test_parameter_groups_their_settings_and_untrained_parameters():
  params = {"a": np.ones(3, np.float32), "b": np.ones(2, np.float32), "c": np.ones(1, np.float32)}
  grads = {"a": np.full(3, 0.5, np.float32), "b": np.full(2, 2.0, np.float32),
           "c": np.ones(1, np.float32)}
  tx = optimizers.make({"name": "sgd", "learning_rate": 0.1,
                        "groups": {"a": {}, "b": {"learning_rate": 1.0}}}, 10, 100)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["a"], -0.05)
  np.testing.assert_allclose(updates["b"], -2.0)
  np.testing.assert_allclose(updates["c"], 0.0)  # under no group: not trained


def test_turns_in_epochs_follow_turn_order():
  params = {"x": np.ones(1, np.float32), "y": np.ones(1, np.float32)}
  grads = {"x": np.ones(1, np.float32), "y": np.ones(1, np.float32)}
  tx = optimizers.make({"name": "sgd", "learning_rate": 1.0, "groups": {"x": {}, "y": {}},
                        "turn_order": ("y", "x"), "alternate_every_epochs": 0.5}, 4, 100)
  state = tx.init(params)
  moved = []
  for _ in range(8):
    updates, state = tx.update(grads, state, params)
    moved.append("".join(k for k in ("x", "y") if updates[k][0] != 0))
  assert moved == ["y", "y", "x", "x", "y", "y", "x", "x"]  # 2-step turns, y first


@pytest.mark.parametrize("cfg, message", [
    ({"turn_order": ("x",), "alternate_every_steps": 1}, "turn_order"),
    ({"turn_order": ("x", "y"), "alternate_every_steps": 1, "alternate_every_epochs": 1},
     "both set"),
    ({"groups": {"z": {}}}, "groups.z: the params have no entry 'z'"),
])
def test_group_errors_name_the_key(cfg, message):
  cfg = {"name": "adam", "learning_rate": 1e-3, "groups": {"x": {}, "y": {}}, **cfg}
  params = {"x": np.ones(1, np.float32), "y": np.ones(1, np.float32)}
  with pytest.raises(ValueError, match=message):
    optimizers.make(cfg, 4, 100).init(params)


def test_turns_need_groups():
  with pytest.raises(ValueError, match="alternate_every_steps needs config.optimizer.groups"):
    optimizers.make({"name": "adam", "learning_rate": 1e-3, "alternate_every_steps": 1}, 4, 100)
