"""Checkpoints keep the latest (to resume) and the best by validation accuracy (to test)."""

import os

import grain
import jax
import jax.numpy as jnp
import numpy as np

from iab_jax import checkpointing


def _state(value):
  return {"params": {"w": jnp.full((3,), value, jnp.float32)}, "step": jnp.int32(value)}


def _steps(directory):
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def test_latest_and_best_survive(tmp_path):
  ckpt = checkpointing.Checkpoints(str(tmp_path), asynchronous=False)
  vals = {1: 0.5, 2: 0.8, 3: 0.6, 4: 0.7}
  for step, val in vals.items():
    ckpt.save(step, _state(step), None, {"epoch": step}, metrics={"val_accuracy": val})
  # A mid-epoch save has no metrics: kept while latest, never chosen as best.
  ckpt.save(5, _state(5), None, {"epoch": 4, "step_in_epoch": 3})
  ckpt.wait()
  assert ckpt.best_step() == 2 and ckpt.latest_step() == 5
  assert _steps(tmp_path) == [2, 5]
  restored = ckpt.restore(2, _state(0))
  np.testing.assert_array_equal(restored["params"]["w"], [2, 2, 2])
  assert ckpt.meta(5) == {"epoch": 4, "step_in_epoch": 3}
  ckpt.save(6, _state(6), None, {"epoch": 5}, metrics={"val_accuracy": 0.9})
  ckpt.wait()
  assert ckpt.best_step() == 6 and _steps(tmp_path) == [6]
  ckpt.close()


def test_ties_keep_the_earlier_best(tmp_path):
  ckpt = checkpointing.Checkpoints(str(tmp_path), asynchronous=False)
  for step, val in {1: 0.7, 2: 0.7, 3: 0.6}.items():
    ckpt.save(step, _state(step), None, {}, metrics={"val_accuracy": val})
  ckpt.wait()
  assert ckpt.best_step() in (1, 2)
  assert ckpt.latest_step() == 3
  ckpt.close()


def test_iterator_position_is_saved(tmp_path):
  ds = grain.MapDataset.range(100).seed(3).shuffle().batch(4).to_iter_dataset()
  it = iter(ds)
  for _ in range(5):
    next(it)
  ckpt = checkpointing.Checkpoints(str(tmp_path), asynchronous=False)
  ckpt.save(5, _state(5), it, {"epoch": 0}, metrics={"val_accuracy": 0.1})
  ckpt.wait()
  expected = [next(it).tolist() for _ in range(3)]
  fresh = iter(ds)
  ckpt.restore(5, _state(0), fresh)
  assert [next(fresh).tolist() for _ in range(3)] == expected
  ckpt.close()


def test_restore_onto_shardings(tmp_path):
  mesh = jax.make_mesh((1,), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  ckpt = checkpointing.Checkpoints(str(tmp_path), asynchronous=False)
  ckpt.save(1, _state(1), None, {}, metrics={"val_accuracy": 0.1})
  ckpt.wait()
  target = jax.device_put(_state(0), sharding)
  restored = ckpt.restore(1, target)
  assert restored["params"]["w"].sharding == sharding
  ckpt.close()


def test_model_restores_alone_without_the_optimizer(tmp_path):
  ckpt = checkpointing.Checkpoints(str(tmp_path), asynchronous=False)
  state = {"params": {"w": jnp.full((3,), 2.0)}, "model_state": {"batch_stats": {"m": jnp.ones(2)}},
           "opt_state": (jnp.zeros(3), {"mu": jnp.zeros(3)}), "step": jnp.int32(7)}
  ckpt.save(7, state, None, {"epoch": 1}, metrics={"val_accuracy": 0.5})
  ckpt.wait()
  # An evaluation knows the model but not the optimizer that trained it.
  target = {"params": {"w": jnp.zeros(3)}, "model_state": {"batch_stats": {"m": jnp.zeros(2)}}}
  model = ckpt.restore_model(7, target)
  np.testing.assert_array_equal(model["params"]["w"], [2, 2, 2])
  np.testing.assert_array_equal(model["model_state"]["batch_stats"]["m"], [1, 1])
  assert set(model) == {"params", "model_state"}
  full = ckpt.restore(7, state)
  assert int(full["step"]) == 7 and set(full) == set(state)
  ckpt.close()


def test_a_checkpoint_of_another_model_is_one_line(tmp_path):
  """Restoring into a model of another class count (or method, or size) names the first array
  that differs, instead of Orbax's report."""
  import pytest

  from iab_jax import errors

  ckpt = checkpointing.Checkpoints(str(tmp_path), asynchronous=False)
  state = {"params": {"head": {"kernel": jnp.zeros((4, 7))}}, "model_state": {},
           "step": jnp.int32(1)}
  ckpt.save(1, state, None, {"epoch": 1})
  ckpt.wait()
  fits = {"params": {"head": {"kernel": jnp.zeros((4, 7))}}, "model_state": {}}
  np.testing.assert_array_equal(ckpt.restore_model(1, fits)["params"]["head"]["kernel"],
                                np.zeros((4, 7)))
  other_classes = {"params": {"head": {"kernel": jnp.zeros((4, 23))}}, "model_state": {}}
  with pytest.raises(errors.UserError, match=r"params/head/kernel is \(4, 7\) in the checkpoint "
                     r"and \(4, 23\) in the model"):
    ckpt.restore_model(1, other_classes)
  other_method = {"params": {"fc": {"kernel": jnp.zeros((4, 7))}}, "model_state": {}}
  with pytest.raises(errors.UserError, match="params/fc/kernel is absent in the checkpoint"):
    ckpt.restore_model(1, other_method)
  ckpt.close()
