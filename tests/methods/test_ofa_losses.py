"""OFA's losses against independent references.

supcon: a float64 NumPy loop over anchors (eq. 6 as printed, bank entries as negatives), Khosla et
al.'s SupConLoss formula (the reference implementation's arithmetic: max-shifted logits, self
masked out, mean of log-probabilities over positives, temperature / base_temperature = 1) restated
in NumPy, and the authors' supervised_contrastive_loss_with_bank (bank pushed before the loss)
restated in NumPy. bank_push: ring positions written by hand. pair_loss: a NumPy loop over the
pairs balanced_pairs selects. real_recon_loss: torch's BCEWithLogitsLoss.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from iab_jax.methods import ofa_losses

TAU = 0.02


def _normalize(z):
  z = np.asarray(z, np.float64)
  return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def supcon_loop(z, labels, tau, bank=None, bank_valid=None):
  """eq. 6 anchor by anchor; anchors without positives are left out of the mean."""
  z = _normalize(z)
  bank = np.zeros((0, z.shape[1])) if bank is None else _normalize(bank)
  if bank_valid is not None:
    bank = bank[np.asarray(bank_valid)]
  terms = []
  for i in range(len(z)):
    others = [j for j in range(len(z)) if j != i]
    positives = [p for p in others if labels[p] == labels[i]]
    if not positives:
      continue
    denominator = sum(np.exp(z[i] @ z[j] / tau) for j in others)
    denominator += sum(np.exp(z[i] @ m / tau) for m in bank)
    terms.append(-np.mean([np.log(np.exp(z[i] @ z[p] / tau) / denominator) for p in positives]))
  return np.mean(terms)


def khosla_supcon(z, labels, tau):
  """Khosla et al.'s SupConLoss (one view, contrast_mode 'all', base_temperature = temperature)."""
  z = _normalize(z)
  labels = np.asarray(labels)[:, None]
  mask = (labels == labels.T).astype(np.float64)
  logits = z @ z.T / tau
  logits = logits - logits.max(axis=1, keepdims=True)
  logits_mask = 1.0 - np.eye(len(z))
  mask = mask * logits_mask
  exp_logits = np.exp(logits) * logits_mask
  log_prob = logits - np.log(exp_logits.sum(1, keepdims=True))
  mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
  return -(tau / tau) * mean_log_prob_pos.mean()


def authors_supcon_with_bank(z, labels, tau, bank_rows):
  """The authors' supervised_contrastive_loss_with_bank: bank_rows are the filled bank rows, which
  already hold this batch (pushed first); 1e-8 guards; the mean over every anchor."""
  z = _normalize(z)
  n = len(z)
  labels = np.asarray(labels)[:, None]
  logits_mask = 1.0 - np.eye(n)
  mask = (labels == labels.T) * logits_mask
  similarity = np.concatenate([z @ z.T, z @ _normalize(bank_rows).T], 1) / tau
  exp_sim = np.exp(similarity)
  total = ((exp_sim[:, :n] * logits_mask).sum(1, keepdims=True)
           + exp_sim[:, n:].sum(1, keepdims=True))
  log_prob = similarity[:, :n] - np.log(total + 1e-8)
  return -((mask * log_prob).sum(1) / (mask.sum(1) + 1e-8)).mean()


def _batch(seed, n=12, d=8, classes=3):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((n, d)).astype(np.float32),
          rng.integers(0, classes, n).astype(np.int32))


supcon = jax.jit(ofa_losses.supcon, static_argnames=("tau", "official"))


# ---------------------------------------------------------------------------------------------
# SupCon.


def test_supcon_without_bank_matches_loop_and_khosla():
  z, labels = _batch(0)
  got = float(supcon(z, labels, tau=TAU))
  np.testing.assert_allclose(got, supcon_loop(z, labels, TAU), rtol=1e-4)
  np.testing.assert_allclose(got, khosla_supcon(z, labels, TAU), rtol=1e-4)
  # Another temperature, and the scale of z is irrelevant (normalised inside).
  np.testing.assert_allclose(float(supcon(3 * z, labels, tau=0.5)),
                             khosla_supcon(z, labels, 0.5), rtol=1e-5)


def test_supcon_with_bank_and_invalid_entries():
  z, labels = _batch(1)
  bank = np.random.default_rng(2).standard_normal((10, 8)).astype(np.float32)
  valid = np.array([1, 1, 0, 1, 0, 0, 1, 1, 1, 0], bool)
  got = float(supcon(z, labels, tau=TAU, bank=bank, bank_valid=valid))
  np.testing.assert_allclose(got, supcon_loop(z, labels, TAU, bank, valid), rtol=1e-4)
  # All valid when bank_valid is None; an all-invalid bank is no bank.
  np.testing.assert_allclose(float(supcon(z, labels, tau=TAU, bank=bank)),
                             supcon_loop(z, labels, TAU, bank), rtol=1e-4)
  np.testing.assert_allclose(
      float(supcon(z, labels, tau=TAU, bank=bank, bank_valid=np.zeros(10, bool))),
      float(supcon(z, labels, tau=TAU)), rtol=1e-6)
  # Bank entries are negatives only: one identical to an anchor's positive raises the loss.
  assert got > float(supcon(z, labels, tau=TAU))


def test_supcon_anchors_without_positives():
  z, _ = _batch(3, n=6)
  labels = np.array([0, 0, 1, 1, 2, 3], np.int32)  # anchors 4 and 5 are alone
  default = float(supcon(z, labels, tau=TAU))
  np.testing.assert_allclose(default, supcon_loop(z, labels, TAU), rtol=1e-4)
  # The authors' mean over all anchors counts them as 0.
  np.testing.assert_allclose(float(supcon(z, labels, tau=TAU, official=True)), default * 4 / 6,
                             rtol=1e-5)
  # No positives at all: 0, and finite gradients.
  unique = np.arange(6, dtype=np.int32)
  assert float(supcon(z, unique, tau=TAU)) == 0.0
  grad = jax.jit(jax.grad(ofa_losses.supcon), static_argnums=2)
  assert np.all(np.isfinite(grad(z, unique, TAU)))
  g = grad(z, labels, TAU, np.zeros((4, 8), np.float32), np.zeros(4, bool))
  assert np.all(np.isfinite(g)) and np.any(g)


def test_official_order_reproduces_the_authors_bank_loss():
  """Push the batch first, then the loss: the authors' arithmetic, their own rows as negatives."""
  z, labels = _batch(4, n=9)
  old = np.random.default_rng(5).standard_normal((5, 8)).astype(np.float32)
  bank, valid, ptr = ofa_losses.bank_init(32, 8)
  bank, valid, ptr = ofa_losses.bank_push(bank, valid, ptr, old)
  pushed = ofa_losses.bank_push(bank, valid, ptr, z)
  official = float(supcon(z, labels, tau=TAU, bank=pushed[0], bank_valid=pushed[1], official=True))
  expected = authors_supcon_with_bank(z, labels, TAU, np.concatenate([old, z]))
  np.testing.assert_allclose(official, expected, rtol=1e-4)
  # The paper's order (past fingerprints only) gives a different, smaller loss.
  paper = float(supcon(z, labels, tau=TAU, bank=bank, bank_valid=valid))
  np.testing.assert_allclose(paper, supcon_loop(z, labels, TAU, old), rtol=1e-4)
  assert paper < official


# ---------------------------------------------------------------------------------------------
# Memory bank.


def test_bank_push_ring_order_and_wraparound():
  bank, valid, ptr = ofa_losses.bank_init(5, 2)
  assert bank.shape == (5, 2) and not np.any(valid) and int(ptr) == 0
  rows = np.arange(1, 17, dtype=np.float32).reshape(8, 2)
  unit = _normalize(rows)
  push = jax.jit(ofa_losses.bank_push)
  bank, valid, ptr = push(bank, valid, ptr, rows[:3])
  np.testing.assert_allclose(bank[:3], unit[:3], rtol=1e-6)
  assert valid.tolist() == [True, True, True, False, False] and int(ptr) == 3
  bank, valid, ptr = push(bank, valid, ptr, rows[3:6])  # wraps: rows 3, 4 -> slots 3, 4; 5 -> 0
  np.testing.assert_allclose(bank, unit[[5, 1, 2, 3, 4]], rtol=1e-6)
  assert np.all(valid) and int(ptr) == 1
  # Longer than the ring: the last 5 rows of the 7 pushed one at a time from slot 1.
  many = np.concatenate([rows[6:8], rows[:5]])  # 7 rows
  bank, valid, ptr = ofa_losses.bank_push(bank, valid, ptr, many)
  slots = {}
  for k, row in enumerate(many):
    slots[(1 + k) % 5] = row
  np.testing.assert_allclose(bank, _normalize([slots[s] for s in range(5)]), rtol=1e-6)
  assert int(ptr) == (1 + 7) % 5


def test_bank_entries_carry_no_gradient():
  z = np.random.default_rng(6).standard_normal((3, 4)).astype(np.float32)

  def through_bank(z):
    bank, valid, ptr = ofa_losses.bank_push(*ofa_losses.bank_init(4, 4), z)
    return jnp.sum(bank)

  assert not np.any(jax.grad(through_bank)(z))


# ---------------------------------------------------------------------------------------------
# Pair and real/recon losses.


def test_balanced_pairs():
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 2], np.int32)
  positives, negatives = jax.jit(ofa_losses.balanced_pairs)(labels, jax.random.key(0))
  positives, negatives = np.asarray(positives), np.asarray(negatives)
  all_pos = {(i, j) for i, j in itertools.combinations(range(8), 2) if labels[i] == labels[j]}
  all_neg = {(i, j) for i, j in itertools.combinations(range(8), 2) if labels[i] != labels[j]}
  assert set(zip(*np.nonzero(positives))) == all_pos  # 3 + 1 + 3 = 7
  drawn = set(zip(*np.nonzero(negatives)))
  assert len(drawn) == len(all_pos) == 7 and drawn <= all_neg
  # Fewer negatives than positives: all of them.
  few = np.array([0, 0, 0, 0, 1], np.int32)
  _, neg = ofa_losses.balanced_pairs(few, jax.random.key(1))
  assert int(np.sum(neg)) == 4
  # Uniform: over many keys every negative pair is drawn about 7/21 of the time.
  keys = jax.random.split(jax.random.key(2), 3000)
  counts = np.asarray(jnp.sum(jax.vmap(lambda k: ofa_losses.balanced_pairs(labels, k)[1])(keys),
                              axis=0))
  freq = np.array([counts[i, j] for i, j in sorted(all_neg)]) / 3000
  np.testing.assert_allclose(freq, 7 / 21, atol=0.035)


def _pair_logits_np(w, za, zb):
  return np.tanh(za @ w[0]) @ w[1] + 0.3 * np.sum(za * zb, -1) + (zb @ w[2])


def test_pair_loss_matches_a_loop_over_the_drawn_pairs():
  z, labels = _batch(7, n=10, d=4, classes=3)
  rng = np.random.default_rng(8)
  w = (rng.standard_normal((4, 4)), rng.standard_normal(4), rng.standard_normal(4))
  wj = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), w)

  def pair_logits_fn(za, zb):  # asymmetric, as the pair head
    return jnp.tanh(za @ wj[0]) @ wj[1] + 0.3 * jnp.sum(za * zb, -1) + zb @ wj[2]

  key = jax.random.key(9)
  got = float(jax.jit(ofa_losses.pair_loss, static_argnums=0)(pair_logits_fn, z, labels, key))
  positives, negatives = map(np.asarray, ofa_losses.balanced_pairs(labels, key))
  losses = []
  for i, j in zip(*np.nonzero(positives | negatives)):
    assert i < j
    x = _pair_logits_np(w, z[i].astype(np.float64), z[j].astype(np.float64))
    t = float(labels[i] == labels[j])
    p = 1 / (1 + np.exp(-x))
    losses.append(-(t * np.log(p) + (1 - t) * np.log(1 - p)))
  assert len(losses) == 2 * np.sum(positives)
  np.testing.assert_allclose(got, np.mean(losses), rtol=1e-5)
  # With the real head: finite, and gradients reach its parameters and z.
  from iab_jax.models.ofa_extractor import PairHead
  head = PairHead(hidden=8)
  params = head.init(jax.random.key(0), z[:1], z[:1])
  grads = jax.jit(jax.grad(lambda p, z: ofa_losses.pair_loss(
      lambda a, b: head.apply(p, a, b), z, labels, key), argnums=(0, 1)))(params, z)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_real_recon_loss_is_torchs_bce_with_logits():
  import torch
  rng = np.random.default_rng(10)
  logits = (3 * rng.standard_normal(10)).astype(np.float32)
  is_recon = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0], bool)
  bce = torch.nn.BCEWithLogitsLoss()
  t_logits, t_target = torch.from_numpy(logits), torch.from_numpy(is_recon.astype(np.float32))
  np.testing.assert_allclose(float(ofa_losses.real_recon_loss(logits, is_recon)),
                             float(bce(t_logits, t_target)), rtol=1e-6)
  # The authors' bce(reals, 0) + bce(reconstructions, 1).
  authors = bce(t_logits[~torch.from_numpy(is_recon)], t_target[~torch.from_numpy(is_recon)]) + (
      bce(t_logits[torch.from_numpy(is_recon)], t_target[torch.from_numpy(is_recon)]))
  np.testing.assert_allclose(float(ofa_losses.real_recon_loss(logits, is_recon, official=True)),
                             float(authors), rtol=1e-6)
  # Large logits stay finite.
  big = np.array([80.0, -80.0], np.float32)
  assert np.isfinite(float(ofa_losses.real_recon_loss(big, np.array([0, 1], bool))))
