"""Multinomial L2 logistic regression on standardised features, fitted by L-BFGS in JAX.

CLIP-LR (Cioni et al.) classifies frozen CLIP embeddings with scikit-learn's
`StandardScaler` followed by `LogisticRegression(solver="lbfgs", penalty="l2", C=1,
max_iter=1000)`. This module is that head, on the accelerator and under one jax.jit:

  scaler   mean and standard deviation of every feature (ddof 0; a constant feature keeps
           scale 1, as sklearn's `_handle_zeros_in_scale` does)
  model    p(y | x) = softmax(z W + b), z = (x - mean) / scale, W (D, C), b (C,)
  fitted   minimises  sum_i -log p(y_i | x_i) + 0.5 / C * ||W||^2   (the bias unpenalised)

sklearn hands scipy's L-BFGS-B the same objective divided by the number of samples (its
`LinearModelLoss` averages the log-loss and scales the penalty to 1 / (C n)), stops when the
largest gradient entry of that averaged objective is <= tol (1e-4) or after max_iter iterations,
and starts from zeros with a memory of 10 pairs. We do the same with optax's L-BFGS and its zoom
line search (strong Wolfe conditions, at most 50 evaluations per search as sklearn's maxls=50).
The optimisation runs in float32, so it also stops when an iteration raises the loss or its line
search finds no step: there, float32 cannot resolve a better point.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class FitInfo:
  """What the fit reports: JSON-able scalars (see `as_dict`)."""
  iterations: int
  converged: bool  # the gradient criterion was met (not max_iter, not a stall)
  stalled: bool  # stopped: a step raised the loss beyond rounding, or found none (float32's limit)
  loss: float  # sklearn's objective: summed log-loss + 0.5 / C ||W||^2
  mean_loss: float  # the same divided by the number of samples (what is minimised)
  grad_max: float  # largest |gradient| entry of the averaged objective at the end

  def as_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def standard_scaler(x: jax.Array) -> dict[str, jax.Array]:
  """sklearn's StandardScaler statistics of x (N, D): {"mean", "scale"} (D,) float32.

  Two passes (mean, then the mean squared deviation), so large offsets do not cancel digits.
  """
  x = jnp.asarray(x, jnp.float32)
  mean = jnp.mean(x, axis=0)
  var = jnp.mean(jnp.square(x - mean), axis=0)
  scale = jnp.sqrt(var)
  # sklearn replaces scales below 10 * eps of the feature's magnitude by 1: the feature is constant.
  eps = jnp.finfo(jnp.float32).eps
  constant = scale < 10 * eps * jnp.maximum(jnp.abs(mean), 1.0)
  return {"mean": mean, "scale": jnp.where(constant, 1.0, scale)}


def standardise(scaler: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  return (jnp.asarray(x, jnp.float32) - scaler["mean"]) / scaler["scale"]


def logits(params: dict[str, jax.Array], z: jax.Array) -> jax.Array:
  """Class scores of standardised features z (N, D); params {"kernel" (D, C), "bias" (C,)}."""
  return jnp.dot(z, params["kernel"], precision=jax.lax.Precision.HIGHEST) + params["bias"]


def predict_proba(params: dict[str, jax.Array], z: jax.Array) -> jax.Array:
  return jax.nn.softmax(logits(params, z), axis=-1)


def mean_objective(params: dict[str, jax.Array], z: jax.Array, y: jax.Array,
                   inverse_c: float) -> jax.Array:
  """sklearn's objective divided by the number of samples n: mean log-loss + 0.5/(C n) ||W||^2."""
  n = z.shape[0]
  log_loss = optax.softmax_cross_entropy_with_integer_labels(logits(params, z), y).mean()
  return log_loss + 0.5 * inverse_c / n * jnp.sum(jnp.square(params["kernel"]))


@functools.partial(jax.jit, static_argnames=("num_classes", "memory", "max_linesearch_steps"))
def _fit(z, y, *, num_classes: int, inverse_c, max_iter, tol, memory: int,
         max_linesearch_steps: int):
  # inverse_c, max_iter and tol are traced: another value does not compile the fit again.
  dim = z.shape[1]
  params = {"kernel": jnp.zeros((dim, num_classes), jnp.float32),
            "bias": jnp.zeros((num_classes,), jnp.float32)}
  objective = functools.partial(mean_objective, z=z, y=y, inverse_c=inverse_c)
  # scipy's first step is a unit step along the steepest descent direction scaled to |g| = 1 at
  # most; optax's "one" initial guess with its preconditioner scaling does the same thing.
  solver = optax.lbfgs(memory_size=memory, linesearch=optax.scale_by_zoom_linesearch(
      max_linesearch_steps=max_linesearch_steps, initial_guess_strategy="one"))
  value_and_grad = optax.value_and_grad_from_state(objective)

  def grad_max(g):
    return jnp.max(jnp.abs(jnp.concatenate([g["kernel"].ravel(), g["bias"]])))

  value, grad = jax.value_and_grad(objective)(params)
  # carry: params, solver state, iteration, current value, its gradient's max entry, stalled
  init = (params, solver.init(params), jnp.int32(0), value, grad_max(grad), jnp.bool_(False))

  def not_done(carry):
    _, _, iteration, _, g_max, stalled = carry
    return (iteration < max_iter) & (g_max > tol) & ~stalled

  def step(carry):
    params, state, iteration, value, _, _ = carry
    value_now, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value_now, grad=grad,
                                   value_fn=objective)
    params = optax.apply_updates(params, updates)
    # The line search leaves the value and gradient at the accepted point in the state.
    new_value = optax.tree_utils.tree_get(state, "value")
    new_grad = optax.tree_utils.tree_get(state, "grad")
    # float32 resolves the loss to ~1e-7 of itself: near the optimum a good step may leave it
    # unchanged or raise it by a rounding error. Only a step that raises it by more, or a line
    # search that found no step at all, stops the fit here.
    moved = jnp.any(jnp.stack([jnp.any(u != 0) for u in jax.tree.leaves(updates)]))
    noise = 16 * jnp.finfo(jnp.float32).eps * jnp.abs(value)
    stalled = (new_value > value + noise) | ~moved
    return params, state, iteration + 1, new_value, grad_max(new_grad), stalled

  params, _, iterations, value, g_max, stalled = jax.lax.while_loop(not_done, step, init)
  return params, iterations, value, g_max, stalled


def fit(z: jax.Array, y: jax.Array, num_classes: int, *, C: float = 1.0, max_iter: int = 1000,
        tol: float = 1e-4, memory: int = 10, max_linesearch_steps: int = 50
        ) -> tuple[dict[str, jax.Array], FitInfo]:
  """Fits {"kernel", "bias"} on standardised features z (N, D) and integer labels y (N,).

  Returns the parameters and a FitInfo. The whole optimisation is one compiled program.
  """
  z = jnp.asarray(z, jnp.float32)
  y = jnp.asarray(y, jnp.int32)
  if z.ndim != 2 or y.shape != z.shape[:1]:
    raise ValueError(f"features {z.shape} and labels {y.shape}: expected (N, D) and (N,)")
  if C <= 0:
    raise ValueError(f"C={C}: the inverse regularisation strength must be positive")
  params, iterations, value, g_max, stalled = _fit(
      z, y, num_classes=num_classes, inverse_c=1.0 / C, max_iter=max_iter, tol=tol,
      memory=memory, max_linesearch_steps=max_linesearch_steps)
  n = z.shape[0]
  g_max, stalled = float(g_max), bool(stalled)
  info = FitInfo(iterations=int(iterations), converged=g_max <= tol, stalled=stalled,
                 loss=float(value) * n, mean_loss=float(value), grad_max=g_max)
  return params, info
