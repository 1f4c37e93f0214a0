"""Optimizers and learning-rate schedules from config, with durations in epochs or steps.

A phase's `optimizer` ConfigDict names the optax transformation and its schedule, e.g.

  dict(name="adam", learning_rate=1e-3)                                   # the paper's default
  dict(name="adam", learning_rate=1e-4, schedule="step", decay_every_epochs=5, decay_factor=0.5)
  dict(name="adamw", learning_rate=2e-5, weight_decay=0.01, schedule="cosine", warmup_epochs=2)

Durations are written in epochs (what papers state) and turned into steps by one helper, so a
run with a different batch size or data set keeps the recipe's shape.

Parameter groups: `groups` maps top-level entries of the params (a model's submodules) to their
own settings, which override the phase's (e.g. another learning rate); parameters under no group
are not trained. With `alternate_every_steps` (or `alternate_every_epochs`) the groups take turns
in the order `turn_order` names them (a config does not keep its keys' order): only one group
updates in a turn, and the others' optimizer states stand
still (an Adam moment or a schedule of a frozen group does not advance), as a recipe that freezes
one network while the other trains states it (the ACM detector: autoencoder, then classifier).

  dict(name="adam", learning_rate=2e-4, groups={"autoencoder": {}, "classifier": {}},
       turn_order=("autoencoder", "classifier"), alternate_every_steps=1)
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

_KNOWN_KEYS = {"name", "learning_rate", "schedule", "warmup_epochs", "decay_every_epochs",
               "decay_factor", "weight_decay", "momentum", "nesterov", "b1", "b2", "eps",
               "grad_clip_norm", "end_learning_rate"}
_GROUP_KEYS = {"groups", "turn_order", "alternate_every_steps", "alternate_every_epochs"}


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
  return int(round(epochs * steps_per_epoch))


def learning_rate_schedule(cfg: Mapping[str, Any], steps_per_epoch: int, total_steps: int,
                           key: str = "optimizer"):
  lr = float(cfg["learning_rate"])
  kind = cfg.get("schedule", "constant")
  warmup = epochs_to_steps(cfg.get("warmup_epochs", 0), steps_per_epoch)
  if kind == "constant":
    schedule = optax.constant_schedule(lr)
  elif kind == "cosine":
    schedule = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1),
                                           alpha=cfg.get("end_learning_rate", 0.0) / lr)
  elif kind == "step":
    every = epochs_to_steps(cfg["decay_every_epochs"], steps_per_epoch)
    schedule = optax.exponential_decay(lr, every, cfg.get("decay_factor", 0.1), staircase=True)
  else:
    raise ValueError(f"config.{key}.schedule={kind!r}; expected 'constant', 'cosine' or 'step'")
  if warmup:
    schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), schedule], [warmup])
  return schedule


def make(cfg: Mapping[str, Any], steps_per_epoch: int, total_steps: int,
         key: str = "optimizer") -> optax.GradientTransformation:
  """The optax transformation a phase's optimizer config describes; `key` names it in errors."""
  cfg = dict(cfg)
  if cfg.get("groups"):
    return _grouped(cfg, steps_per_epoch, total_steps, key)
  for k in _GROUP_KEYS:
    if cfg.pop(k, None):
      raise ValueError(f"config.{key}.{k} needs config.{key}.groups")
  unknown = set(cfg) - _KNOWN_KEYS
  if unknown:
    raise ValueError(f"config.{key}: unknown keys {sorted(unknown)}; known: {sorted(_KNOWN_KEYS)}")
  if "learning_rate" not in cfg:
    raise ValueError(f"config.{key}.learning_rate is required")
  lr = learning_rate_schedule(cfg, steps_per_epoch, total_steps, key)
  name = cfg.get("name", "adam")
  betas = dict(b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999), eps=cfg.get("eps", 1e-8))
  if name == "adam":
    tx = optax.adam(lr, **betas)
    if cfg.get("weight_decay"):  # torch.optim.Adam's L2 penalty: added to the gradient
      tx = optax.chain(optax.add_decayed_weights(cfg["weight_decay"]), tx)
  elif name == "adamw":
    tx = optax.adamw(lr, weight_decay=cfg.get("weight_decay", 0.01), **betas)
  elif name == "sgd":
    tx = optax.sgd(lr, momentum=cfg.get("momentum", 0.0) or None,
                   nesterov=cfg.get("nesterov", False))
    if cfg.get("weight_decay"):
      tx = optax.chain(optax.add_decayed_weights(cfg["weight_decay"]), tx)
  else:
    raise ValueError(f"config.{key}.name={name!r}; expected 'adam', 'adamw' or 'sgd'")
  if cfg.get("grad_clip_norm"):
    tx = optax.chain(optax.clip_by_global_norm(cfg["grad_clip_norm"]), tx)
  return tx


def _grouped(cfg: dict[str, Any], steps_per_epoch: int, total_steps: int,
             key: str) -> optax.GradientTransformation:
  """Parameter groups (module docstring): one transformation per group, turns if asked."""
  groups = dict(cfg.pop("groups"))
  order = tuple(cfg.pop("turn_order", ()) or ())
  every_steps = int(cfg.pop("alternate_every_steps", 0) or 0)
  every_epochs = float(cfg.pop("alternate_every_epochs", 0) or 0)
  if every_steps and every_epochs:
    raise ValueError(f"config.{key}: alternate_every_steps and alternate_every_epochs are both "
                     "set; expected one")
  if every_steps < 0 or every_epochs < 0:
    raise ValueError(f"config.{key}.alternate_every_*: expected a positive length")
  every = every_steps or (epochs_to_steps(every_epochs, steps_per_epoch) if every_epochs else 0)
  if every_epochs and every < 1:
    raise ValueError(f"config.{key}.alternate_every_epochs={every_epochs} is under one step "
                     f"({steps_per_epoch} steps per epoch)")
  if every and sorted(order) != sorted(groups):
    raise ValueError(f"config.{key}.turn_order={order}; expected each of the groups "
                     f"({', '.join(sorted(groups))}) once, in the order they take turns")
  transforms = {}
  for name, overrides in groups.items():
    tx = make({**cfg, **dict(overrides or {})}, steps_per_epoch, total_steps,
              f"{key}.groups.{name}")
    transforms[name] = _take_turns(tx, order.index(name), len(groups), every) if every else tx
  transforms[_UNTRAINED] = optax.set_to_zero()

  def labels(params):
    missing = [name for name in groups if name not in params]
    if missing:
      raise ValueError(f"config.{key}.groups.{missing[0]}: the params have no entry "
                       f"{missing[0]!r} (they have {', '.join(params)})")
    return {k: (k if k in groups else _UNTRAINED) for k in params}

  return optax.multi_transform(transforms, labels)


_UNTRAINED = "__untrained__"  # the label of parameters under no group


class TurnState(NamedTuple):
  inner: Any
  count: jax.Array  # steps taken by the whole optimizer, every group's turn included


def _take_turns(tx: optax.GradientTransformation, turn: int, num_turns: int,
                every: int) -> optax.GradientTransformation:
  """tx applied only in its turn: steps [turn*every, (turn+1)*every) of every cycle of
  num_turns*every steps; otherwise zero updates and tx's state unchanged."""

  def init(params):
    return TurnState(tx.init(params), jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    active = (state.count // every) % num_turns == turn
    new_updates, new_inner = tx.update(updates, state.inner, params)
    updates = jax.tree.map(lambda u: jnp.where(active, u, jnp.zeros_like(u)), new_updates)
    inner = jax.tree.map(lambda new, old: jnp.where(active, new, old), new_inner, state.inner)
    return updates, TurnState(inner, state.count + 1)

  return optax.GradientTransformation(init, update)
