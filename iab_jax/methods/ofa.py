"""One-for-All (Fei et al., AAAI 2026): generator fingerprints learned without a generated image.

A frozen simulator (iab_jax/methods/ofa_simulator.py, trained on real images by an
`ofa_simulator` run that config.simulator.workdir names) reconstructs real images through
randomly drawn decoder architectures. The extractor learns to tell those architectures apart:

  image in [-1, 1] -> frozen DnCNN denoiser (Corvi et al., valid convolutions) residual / 256
  -> log(1 + |FFT2|) per channel -> ResNet-50 (ImageNet) -> 128-d fingerprint z
  (iab_jax/models/ofa_extractor.py).

Phase `fingerprint` (num_steps, real training images only). A batch holds (sets + 1) * set_size
real images (8 x 16 + 16 = 144 by default):
  (a) "multiple sets": set i (the i-th set_size images) is reconstructed by its own freshly
      drawn architecture, label i; the last set_size images stay real, label `sets`;
  (b) "single set": those last set_size real images are encoded once and decoded by `sets`
      other architectures, labels 0..sets-1, with the originals as label `sets`.
Per view: supervised contrastive loss (temperature 0.02; (a) also against a memory bank of past
fingerprints, negatives only), the pair head's BCE on all positive pairs and as many random
negative pairs, and the real/reconstruction head's BCE (the originals of the reconstructed images
against their reconstructions). L = sum over the views of scl + att + cls, weights 1.

Phase `reject` (open-set tasks): a (T+1)-way head on the fingerprint learns the run's T known
classes, and "none of them" from simulator reconstructions of the batch's real images; predict
then returns T+1 probabilities (Method.reject_class). With config.extractor.workdir naming a
finished `ofa` run, its extractor is loaded and the fingerprint phase is skipped.

Frozen networks travel in their own variable collections, which no optimizer updates:
"simulator" and "denoiser"; the memory bank is the "memory" collection, saved with every
checkpoint so that a resumed run continues with the same bank.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from iab_jax import console, errors, weights
from iab_jax.methods import base, ofa_losses
from iab_jax.methods import ofa_simulator as simulator_method
from iab_jax.models import dncnn, ofa_extractor, ofa_simulator

FINGERPRINT, REJECT = "fingerprint", "reject"
EXTRACTOR_FIELDS = ("embed_dim", "stage_sizes", "width", "dtype", "pretrained", "weights_dir")
DENOISER_FIELDS = ("depth", "width", "padding", "pretrained", "residual_scale")
FINGERPRINT_FIELDS = ("sets", "set_size", "multiple_sets", "single_set", "bank_size",
                      "temperature", "recipe", "weights")
RECIPES = ("paper", "code")


class Ofa(base.Method):
  display_name = "OFA"

  @classmethod
  def check_config(cls, config):
    for key, fields in (("model", EXTRACTOR_FIELDS), ("denoiser", DENOISER_FIELDS),
                        ("fingerprint", FINGERPRINT_FIELDS)):
      section = config.get(key)
      if section is None:
        raise ValueError(f"config.{key} is missing; expected {', '.join(fields)}")
      unknown, missing = set(section) - set(fields), set(fields) - set(section)
      if unknown or missing:
        name = sorted(unknown or missing)[0]
        raise ValueError(f"config.{key}.{name}: {'unknown' if unknown else 'missing'}; expected "
                         f"{', '.join(fields)}")
    fp = config.fingerprint
    for key in ("sets", "set_size", "bank_size"):
      if not isinstance(fp[key], int) or fp[key] < (0 if key == "bank_size" else 1):
        raise ValueError(f"config.fingerprint.{key}={fp[key]!r}; expected a positive integer")
    if fp.sets < 2:
      raise ValueError(f"config.fingerprint.sets={fp.sets}; expected >= 2 (architectures to tell "
                       "apart)")
    if not (fp.multiple_sets or fp.single_set):
      raise ValueError("config.fingerprint: multiple_sets and single_set are both off")
    if fp.recipe not in RECIPES:
      raise ValueError(f"config.fingerprint.recipe={fp.recipe!r}; expected 'paper' or 'code' "
                       "(the authors' training script)")
    want = (fp.sets + 1) * fp.set_size
    if not config.get("extractor", {}).get("workdir") and config.input.batch_size != want:
      raise ValueError(f"config.input.batch_size={config.input.batch_size}; OFA's batch is "
                       f"(fingerprint.sets + 1) * fingerprint.set_size = {want}")
    if not config.get("train_classes"):
      raise ValueError("config.train_classes is empty; expected the real class(es)")
    if not config.get("extractor", {}).get("workdir") and not config.simulator.workdir \
        and not config.get("random_init_fallback"):
      raise ValueError("config.simulator.workdir is empty; expected the workdir of an "
                       "ofa_simulator run (python -m iab_jax.main --config "
                       "configs/ofa_simulator.py:standard --workdir DIR)")

  def __init__(self, config, classes):
    super().__init__(config, classes)
    m = config.model
    self.extractor = ofa_extractor.Model(num_classes=0, embed_dim=m.embed_dim,
                                         stage_sizes=tuple(m.stage_sizes), width=m.width,
                                         dtype=m.dtype)
    d = config.denoiser
    # Corvi et al.'s DnCNN (batch norm on the middle layers, running statistics), resized by
    # config for smoke tests.
    self.denoiser = ofa_extractor.denoiser(depth=d.depth, width=d.width, padding=d.padding)
    self.pair_head = ofa_extractor.PairHead()
    self.real_head = ofa_extractor.RealHead()
    self.open_set = config.task.startswith("openset")
    self.reject_class = self.open_set
    self.extractor_run = config.get("extractor", {}).get("workdir", "")
    self.simulator = simulator_method.make_simulator(self._simulator_model_config())

  # ------------------------------------------------------------------------------ recipe
  def phases(self):
    out = []
    if not self.extractor_run:
      out.append(base.Phase(FINGERPRINT, 1, self.config.optimizer, select_best=False,
                            validate=False, classes=tuple(self.config.train_classes),
                            num_steps=int(self.config.num_steps), optimizer_key="optimizer"))
    if self.open_set:
      out.append(base.Phase(REJECT, self.config.reject.num_epochs, self.config.reject.optimizer,
                            optimizer_key="reject.optimizer"))
    return out

  # ------------------------------------------------------------------------------ variables
  def _simulator_model_config(self):
    """The simulator's architecture: its run's, the extractor run's simulator's, or (a smoke test
    without a simulator run) config.simulator.model."""
    config = self.config
    for _ in range(2):  # this run's simulator run, else the extractor run's
      if config["simulator"]["workdir"]:
        return _saved_config(config["simulator"]["workdir"])["model"]
      if not config.get("extractor", {}).get("workdir"):
        break
      config = _saved_config(config["extractor"]["workdir"])
    return config["simulator"]["model"]

  def _spectra(self, denoiser_vars, x):
    r = ofa_extractor.residual(ofa_extractor.denoiser_forward(self.denoiser), denoiser_vars, x,
                               scale=float(self.config.denoiser.residual_scale))
    return ofa_extractor.spectrum(r)

  def init(self, rng, images, pretrained=True):
    keys = jax.random.split(rng, 6)
    x = jnp.asarray(images, jnp.float32)[:1]
    denoiser = dict(self.denoiser.init(keys[0], x, train=False))
    if pretrained and self.config.denoiser.pretrained:
      path = weights.resolve_or_random(self.config.denoiser.pretrained, self.config,
                                       "denoiser.pretrained")
      if path:
        denoiser = dncnn.load_pretrained(denoiser, path)
    spec = self._spectra(denoiser, x)
    ext = dict(self.extractor.init(keys[1], spec, train=False))
    if pretrained and self.config.model.pretrained and not self.extractor_run:
      path = weights.resolve_or_random(self.config.model.pretrained, self.config,
                                       "model.pretrained")
      if path:
        ext = ofa_extractor.load_pretrained(ext, path)
    z = jnp.zeros((1, self.config.model.embed_dim), jnp.float32)
    params = {"extractor": ext["params"],
              "pair_head": self.pair_head.init(keys[2], z, z)["params"],
              "real_head": self.real_head.init(keys[3], z)["params"]}
    variables: dict[str, Any] = {"params": params,
                                 "batch_stats": {"extractor": ext.get("batch_stats", {})},
                                 "denoiser": denoiser}
    fp = self.config.fingerprint
    bank = max(int(fp.bank_size), 1)
    variables["memory"] = {"bank": jnp.zeros((bank, self.config.model.embed_dim), jnp.float32),
                           "valid": jnp.zeros((bank,), bool), "ptr": jnp.zeros((), jnp.int32)}
    if self.open_set:
      params["reject_head"] = _dense_init(keys[4], self.config.model.embed_dim,
                                          self.num_classes + 1)
    # The simulator: its run's latest checkpoint; with an extractor run, the copy that run kept;
    # else (runlocal/minibench without a simulator run) a random one.
    if pretrained and self.config.simulator.workdir and not self.extractor_run:
      _, sim, _ = simulator_method.restore_simulator(self.config.simulator.workdir, self.config)
    else:
      if pretrained and not self.extractor_run:
        console.say("OFA: no simulator run (config.simulator.workdir empty): a randomly "
                    "initialised simulator (random_init_fallback)")
      sim = dict(self.simulator.init(keys[5], x, jnp.zeros((ofa_simulator.ARCH_LEN,), jnp.int32),
                                     train=False))
    variables["simulator"] = {"params": sim["params"], "batch_stats": sim["batch_stats"]}
    if pretrained and self.extractor_run:
      variables = _load_extractor_run(self.extractor_run, variables)
    return variables

  # ------------------------------------------------------------------------------ pieces
  def _embed(self, variables, x, train: bool):
    """Fingerprints (N, d) of images in [-1, 1]; with train, also the new batch statistics."""
    spec = jax.lax.stop_gradient(self._spectra(variables["denoiser"], x))
    ext = {"params": variables["params"]["extractor"],
           "batch_stats": variables["batch_stats"]["extractor"]}
    if train:
      (z, _), updates = self.extractor.apply(ext, spec, train=True, mutable=["batch_stats"])
      return z, updates["batch_stats"]
    z, _ = self.extractor.apply(ext, spec, train=False)
    return z, None

  def _reconstruct_sets(self, variables, sets, archs):
    """Each of S sets (S, n, H, W, 3) through its own architecture (S, ARCH_LEN)."""
    sim = variables["simulator"]

    def one(args):
      x, arch = args
      out = self.simulator.apply(sim, x, arch, train=False)
      return out[0] if isinstance(out, tuple) else out

    return jax.lax.map(one, (sets, archs))

  def _decode_many(self, variables, x, archs):
    """One batch (n, H, W, 3) encoded once and decoded by every architecture: (S, n, H, W, 3)."""
    sim = variables["simulator"]
    features = self.simulator.apply(sim, x, train=False, method=ofa_simulator.Simulator.encode)

    def one(arch):
      out = self.simulator.apply(sim, features, arch, method=ofa_simulator.Simulator.decode)
      return out[0] if isinstance(out, tuple) else out

    return jax.lax.map(one, archs)

  def _head_input(self, z):
    """What the pair and real/reconstruction heads read: the L2-normalised fingerprint (the
    paper's eqs. 7-8), or the raw one (the authors' code)."""
    return z if self.config.fingerprint.recipe == "code" else ofa_losses.l2_normalize(z)

  def _pair_logits(self, params):
    def logits(za, zb):
      return self.pair_head.apply({"params": params["pair_head"]}, self._head_input(za),
                                  self._head_input(zb))
    return logits

  # ------------------------------------------------------------------------------ losses
  def loss(self, variables, batch, rng, phase):
    if phase.name == REJECT:
      return self._reject_loss(variables, batch, rng)
    return self._fingerprint_loss(variables, batch, rng)

  def _fingerprint_loss(self, variables, batch, rng):
    fp = self.config.fingerprint
    m, n = fp.sets, fp.set_size
    w = fp.weights
    x = batch["image"].astype(jnp.float32)
    k_a, k_b, k_pa, k_pb = jax.random.split(rng, 4)
    sets, extra = x[:m * n].reshape(m, n, *x.shape[1:]), x[m * n:]
    views, originals = [], []
    if fp.multiple_sets:
      recon = self._reconstruct_sets(variables, sets,
                                     ofa_simulator.sample_architectures(k_a, m))
      views.append(("a", recon.reshape(m * n, *x.shape[1:])))
      originals.append(x[:m * n])
    if fp.single_set:
      recon = self._decode_many(variables, extra, ofa_simulator.sample_architectures(k_b, m))
      views.append(("b", recon.reshape(m * n, *x.shape[1:])))
    # One forward for everything, so batch norm sees one batch: each view's reconstructions, the
    # originals of the multiple sets, and the real set.
    parts = [jax.lax.stop_gradient(jnp.clip(v, -1.0, 1.0)) for _, v in views] + originals + [extra]
    z_all, new_stats = self._embed(variables, jnp.concatenate(parts), train=True)
    sizes = [p.shape[0] for p in parts]
    chunks = jnp.split(z_all, np.cumsum(sizes)[:-1])
    z_views, z_orig_sets = chunks[:len(views)], chunks[len(views):-1]
    z_real = chunks[-1]
    labels = jnp.concatenate([jnp.repeat(jnp.arange(m), n), jnp.full((n,), m)]).astype(jnp.int32)
    params = variables["params"]
    memory = variables["memory"]
    bank, valid, ptr = memory["bank"], memory["valid"], memory["ptr"]
    use_bank = fp.bank_size > 0
    code = fp.recipe == "code"
    total = 0.0
    measured = {}
    for (name, _), z_rec, key in zip(views, z_views, (k_pa, k_pb)):
      z = jnp.concatenate([z_rec, z_real])
      with_bank = use_bank and name == "a"
      if with_bank and code:  # the authors' order: the batch joins the bank first
        bank, valid, ptr = ofa_losses.bank_push(bank, valid, ptr, z_rec)
      scl = ofa_losses.supcon(z, labels, fp.temperature, bank if with_bank else None,
                              valid if with_bank else None, official=code)
      att = ofa_losses.pair_loss(self._pair_logits(params), z, labels, key)
      if name == "a":
        z_orig, z_fake = z_orig_sets[0], z_rec
      elif code:  # the authors' single set: the originals against the first decoder's images
        z_orig, z_fake = z_real, z_rec[:n]
      else:  # each original faces its m reconstructions
        z_orig, z_fake = jnp.tile(z_real, (m, 1)), z_rec
      logits = self.real_head.apply({"params": params["real_head"]},
                                    self._head_input(jnp.concatenate([z_orig, z_fake])))
      is_recon = jnp.concatenate([jnp.zeros(z_orig.shape[0]), jnp.ones(z_fake.shape[0])])
      cls = ofa_losses.real_recon_loss(logits, is_recon, official=code)
      if with_bank and not code:  # the paper: the bank holds past fingerprints only
        bank, valid, ptr = ofa_losses.bank_push(bank, valid, ptr, z_rec)
      total = total + w.scl * scl + w.att * att + w.cls * cls
      measured.update({f"scl_{name}": scl, f"att_{name}": att, f"cls_{name}": cls})
    measured["bank_filled"] = jnp.mean(valid.astype(jnp.float32))
    return total, ({"batch_stats": {"extractor": new_stats},
                    "memory": {"bank": bank, "valid": valid, "ptr": ptr}}, measured)

  def _reject_logits(self, params, z):
    head = params["reject_head"]
    return z @ head["kernel"] + head["bias"]

  def _reject_loss(self, variables, batch, rng):
    """Cross-entropy of the (T+1)-way head: the known classes, and simulator reconstructions of
    the batch's real images as class T (only where the batch holds real images)."""
    x = batch["image"].astype(jnp.float32)
    labels = batch["label"]
    n = x.shape[0]
    arch = ofa_simulator.sample_architectures(rng, 1)
    recon = self._reconstruct_sets(variables, x[None], arch)[0]
    recon = jax.lax.stop_gradient(jnp.clip(recon, -1.0, 1.0))
    train_extractor = self.config.reject.finetune == "all"
    z, new_stats = self._embed(variables, jnp.concatenate([x, recon]), train=train_extractor)
    if not train_extractor:
      z = jax.lax.stop_gradient(z)
    logits = self._reject_logits(variables["params"], z)
    real = jnp.asarray([self.classes.index(c) for c in self.config.train_classes
                        if c in self.classes], jnp.int32)
    is_real = jnp.isin(labels, real)
    targets = jnp.concatenate([labels, jnp.full((n,), self.num_classes, jnp.int32)])
    weight = jnp.concatenate([(labels >= 0).astype(jnp.float32), is_real.astype(jnp.float32)])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(targets, 0))
    loss = jnp.sum(ce * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    acc = jnp.sum((jnp.argmax(logits, -1) == targets) * weight) / jnp.maximum(jnp.sum(weight), 1)
    updates = {"batch_stats": {"extractor": new_stats}} if train_extractor else {}
    return loss, (updates, {"accuracy": acc})

  # ------------------------------------------------------------------------------ evaluation
  def embed(self, variables, batch):
    return self._embed(variables, batch["image"].astype(jnp.float32), train=False)[0]

  def pair_scores(self, variables, query, support):
    q = jnp.broadcast_to(query[:, None], (query.shape[0], support.shape[0], query.shape[-1]))
    s = jnp.broadcast_to(support[None], q.shape)
    return jax.nn.sigmoid(self._pair_logits(variables["params"])(q, s))

  def predict(self, variables, batch):
    if "reject_head" not in variables["params"]:
      raise ValueError("OFA attributes (predicts classes) only on an open-set task, after its "
                       "reject phase; a fingerprint run is evaluated by image_to_model")
    z = self.embed(variables, batch)
    return jax.nn.softmax(self._reject_logits(variables["params"], z), axis=-1)


def _dense_init(key, fan_in: int, fan_out: int) -> dict[str, jax.Array]:
  """torch.nn.Linear's default initialisation."""
  bound = 1.0 / np.sqrt(fan_in)
  k1, k2 = jax.random.split(key)
  return {"kernel": jax.random.uniform(k1, (fan_in, fan_out), jnp.float32, -bound, bound),
          "bias": jax.random.uniform(k2, (fan_out,), jnp.float32, -bound, bound)}


def _saved_config(workdir: str) -> dict[str, Any]:
  from iab_jax import runs

  saved = runs.read_config(workdir)
  if saved is None:
    raise errors.UserError(f"{workdir!r} holds no run ({runs.CONFIG_JSON} missing)")
  return saved


def _load_extractor_run(workdir: str, variables: dict[str, Any]) -> dict[str, Any]:
  """`variables` with the extractor, its heads, batch statistics, denoiser (and simulator, when
  the open-set run names none of its own) of an `ofa` run's latest checkpoint."""
  from iab_jax import checkpointing, runs

  saved = _saved_config(workdir)
  if saved.get("method") != "ofa":
    raise errors.UserError(f"config.extractor.workdir={workdir!r} is a {saved.get('method')!r} "
                           "run; expected an ofa run")
  ckpt = checkpointing.Checkpoints(os.path.join(workdir, runs.CHECKPOINTS), asynchronous=False)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise errors.UserError(f"config.extractor.workdir={workdir!r} holds no checkpoint")
    saved_shapes = ckpt.saved_shapes(step)
    target = _restorable(variables, saved_shapes)
    model = ckpt.restore_model(step, target)
  finally:
    ckpt.close()
  out = dict(variables)
  out["params"] = {**variables["params"], **model["params"]}
  for name, value in model["model_state"].items():
    out[name] = value
  console.say("OFA: extractor of %s (step %d)", workdir, step)
  return out


def _restorable(variables, saved_shapes) -> dict[str, Any]:
  """The part of `variables` that the saved run holds (its params minus an open-set head),
  as the {"params", "model_state"} tree Checkpoints.restore_model expects."""
  saved_top = {path[:2] for path in saved_shapes}
  params = {k: v for k, v in variables["params"].items() if ("params", k) in saved_top}
  state = {k: v for k, v in variables.items()
           if k != "params" and any(p[0] == "model_state" and p[1] == k for p in saved_top)}
  return jax.tree.map(lambda a: np.zeros(np.shape(a), np.asarray(a).dtype),
                      {"params": params, "model_state": state})
