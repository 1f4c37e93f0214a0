"""Optimizers and learning-rate schedules from config, with durations in epochs or steps.

A phase's `optimizer` ConfigDict names the optax transformation and its schedule, e.g.

  dict(name="adam", learning_rate=1e-3)                                   # the paper's default
  dict(name="adam", learning_rate=1e-4, schedule="step", decay_every_epochs=5, decay_factor=0.5)
  dict(name="adamw", learning_rate=2e-5, weight_decay=0.01, schedule="cosine", warmup_epochs=2)

Durations are written in epochs (what papers state) and turned into steps by one helper, so a
run with a different batch size or data set keeps the recipe's shape.
"""

from __future__ import annotations

from typing import Any, Mapping

import optax

_KNOWN_KEYS = {"name", "learning_rate", "schedule", "warmup_epochs", "decay_every_epochs",
               "decay_factor", "weight_decay", "momentum", "nesterov", "b1", "b2", "eps",
               "grad_clip_norm", "end_learning_rate"}


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
