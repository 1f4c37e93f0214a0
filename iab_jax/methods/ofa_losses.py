"""OFA's training losses (Fei et al., AAAI 2026, eqs. 6-9): SupCon + memory bank, pair, real/recon.

Pure jnp with static shapes: dynamic counts (bank entries filled so far, positive pairs, sampled
negatives) are boolean masks, so one compiled step serves every batch.

  supcon          eq. 6, Khosla et al.'s supervised contrastive loss on L2-normalised fingerprints;
                  memory-bank entries are extra negatives in every anchor's denominator.
  bank_init/push  the memory bank: a FIFO ring of L2-normalised, stop_gradient'ed fingerprints.
  balanced_pairs  eq. 7's S: every positive pair i < j plus as many uniformly drawn negative pairs
                  (all of them if there are fewer).
  pair_loss       eq. 7, BCE-with-logits of the pair head over S.
  real_recon_loss eq. 8, BCE-with-logits of the real/recon head (reconstructed = 1, real = 0).

The paper's bank holds *past* fingerprints (eq. 6: "historical extracted fingerprints"), which is
the default order: loss with the bank as it is, then bank_push the batch. The authors' code
(train_contrastivev_base_real_noiser_fft_bank.py) pushes the batch first and then computes the
loss, so every anchor also finds its own (detached) copy and its positives' among the negatives,
exp(1 / tau) = e^50 at tau 0.02 in its denominator: call bank_push before supcon to reproduce it.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# A finite "minus infinity" for masked logits: exp of it underflows to 0 in float32 when any
# entry of the row is real, and nothing becomes NaN (nor its gradient) when none is.
_MASKED = -1e9


def l2_normalize(z: jax.Array, eps: float = 1e-12) -> jax.Array:
  """z / max(||z||, eps) over the last axis, as torch's F.normalize."""
  z = z.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(jnp.square(z), axis=-1, keepdims=True))
  return z / jnp.maximum(norm, eps)


def supcon(z: jax.Array, labels: jax.Array, tau: float = 0.02, bank: jax.Array | None = None,
           bank_valid: jax.Array | None = None, *, official: bool = False) -> jax.Array:
  """Supervised contrastive loss (eq. 6) of fingerprints z (N, d) with labels (N,).

  For anchor i with positives P_i = {p != i : y_p = y_i}:
    l_i = -1/|P_i| sum_{p in P_i} log( exp(z_i.z_p / tau) /
            (sum_{j != i} exp(z_i.z_j / tau) + sum_{m in bank, valid} exp(z_i.z_m / tau)) )
  on L2-normalised z and bank rows (bank (B, d), bank_valid (B,) bool, all valid if None). Bank
  entries are negatives only, whatever generator they came from.

  The loss is the mean of l_i over the anchors with at least one positive (the paper's 1/N where
  every anchor has one; an anchor alone with its label has no defined term). official=True takes
  the authors' mean over all N anchors instead, those without positives counting 0 (their
  mask.sum(1) + 1e-8): smaller by the fraction of such anchors. Which bank (before or after
  pushing this batch) is the caller's choice: see the module docstring.
  """
  z = l2_normalize(z)
  n = z.shape[0]
  not_self = ~jnp.eye(n, dtype=bool)
  positives = (labels[:, None] == labels[None, :]) & not_self
  sim = z @ z.T / tau
  logits = jnp.where(not_self, sim, _MASKED)
  if bank is not None:
    bank_sim = z @ l2_normalize(bank).T / tau
    if bank_valid is not None:
      bank_sim = jnp.where(bank_valid[None, :], bank_sim, _MASKED)
    logits = jnp.concatenate([logits, bank_sim], axis=1)
  log_denominator = jax.nn.logsumexp(logits, axis=1)
  log_prob = sim - log_denominator[:, None]
  num_positives = jnp.sum(positives, axis=1)
  mean_log_prob = (jnp.sum(jnp.where(positives, log_prob, 0.0), axis=1)
                   / jnp.maximum(num_positives, 1))
  if official:
    return -jnp.mean(mean_log_prob)
  has_positive = num_positives > 0
  return -(jnp.sum(jnp.where(has_positive, mean_log_prob, 0.0))
           / jnp.maximum(jnp.sum(has_positive), 1))


def bank_init(size: int, dim: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """An empty memory bank: (entries (size, dim) float32 zeros, valid (size,) False, ptr 0 int32).

  The authors fill theirs with random unit vectors but only ever read the filled rows; `valid`
  says which rows those are.
  """
  return (jnp.zeros((size, dim), jnp.float32), jnp.zeros((size,), bool),
          jnp.zeros((), jnp.int32))


def bank_push(bank: jax.Array, valid: jax.Array, ptr: jax.Array,
              z: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Writes the rows of z (N, d), L2-normalised and without gradient, into the FIFO ring bank.

  The rows go to positions ptr, ptr + 1, ... modulo B and the pointer moves on by N, as if pushed
  one at a time: with N > B only the last B rows stay. Returns (bank, valid, ptr).
  """
  size = bank.shape[0]
  entries = jax.lax.stop_gradient(l2_normalize(z)).astype(bank.dtype)
  n = entries.shape[0]
  kept = min(n, size)  # static: the rows that survive a push longer than the ring
  start = ptr + (n - kept)
  index = (start + jnp.arange(kept)) % size
  bank = bank.at[index].set(entries[n - kept:])
  valid = valid.at[index].set(True)
  return bank, valid, ((ptr + n) % size).astype(jnp.int32)


def balanced_pairs(labels: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """eq. 7's pair set S as (N, N) boolean masks over (i, j), i < j: (positives, negatives).

  positives: every pair with y_i = y_j. negatives: min(#positives, #pairs with y_i != y_j) of the
  pairs with y_i != y_j, drawn uniformly without replacement (the first of a random order), as
  the authors' random.sample over their pair list.
  """
  n = labels.shape[0]
  upper = jnp.triu(jnp.ones((n, n), bool), k=1)
  same = labels[:, None] == labels[None, :]
  positives = upper & same
  candidates = upper & ~same
  # A random order of the candidates (the others after them); a candidate is drawn when its rank
  # is below the number of positives.
  scores = jnp.where(candidates, jax.random.uniform(key, (n, n)), 2.0).reshape(-1)
  order = jnp.argsort(scores)
  rank = jnp.zeros((n * n,), jnp.int32).at[order].set(jnp.arange(n * n, dtype=jnp.int32))
  negatives = candidates & (rank.reshape(n, n) < jnp.sum(positives))
  return positives, negatives


def _bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Elementwise -[t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))], stable as torch's."""
  return jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def pair_loss(pair_logits_fn: Callable[[jax.Array, jax.Array], jax.Array], z: jax.Array,
              labels: jax.Array, key: jax.Array) -> jax.Array:
  """eq. 7: mean BCE-with-logits of pair_logits_fn(z_i, z_j) over balanced_pairs(labels, key).

  pair_logits_fn(za (..., d), zb (..., d)) -> (...,) logits, e.g. a bound PairHead; it is run on
  all N x N ordered pairs (static shape) and the loss keeps the (i < j) ones S selects. Target 1
  for the same label. z goes in as given (the paper's z is L2-normalised; the authors' code
  passes the raw fingerprints).
  """
  positives, negatives = balanced_pairs(labels, key)
  logits = pair_logits_fn(z[:, None, :], z[None, :, :]).astype(jnp.float32)
  losses = _bce_with_logits(logits, positives.astype(jnp.float32))
  selected = positives | negatives
  return jnp.sum(jnp.where(selected, losses, 0.0)) / jnp.maximum(jnp.sum(selected), 1)


def real_recon_loss(logits: jax.Array, is_reconstruction: jax.Array, *,
                    official: bool = False) -> jax.Array:
  """eq. 8: BCE-with-logits of the real/recon head, target 1 for reconstructions, 0 for reals.

  The mean over all N. official=True: the authors' bce(reals) + bce(reconstructions), the sum of
  the two groups' means (twice the default on their balanced batches; an empty group adds 0).
  """
  target = is_reconstruction.astype(jnp.float32)
  losses = _bce_with_logits(logits.astype(jnp.float32), target)
  if not official:
    return jnp.mean(losses)
  recon = is_reconstruction.astype(bool)

  def group_mean(mask):
    return jnp.sum(jnp.where(mask, losses, 0.0)) / jnp.maximum(jnp.sum(mask), 1)

  return group_mean(recon) + group_mean(~recon)
