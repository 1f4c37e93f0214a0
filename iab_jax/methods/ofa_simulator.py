"""One-for-All's fingerprint simulator (Fei et al., AAAI 2026): learning to reconstruct real images
through randomly drawn decoder architectures, so that each architecture leaves its own trace.

The network is iab_jax/models/ofa_simulator.py: an encoder and a decoder whose start scale,
up-samplers and cells (conv, activation, norm in some order) are chosen per call by an integer
architecture vector, ~1.68e12 of them, all served by one compilation. Each training step draws a
fresh architecture from the step's key and minimises

  lambda_mse * MSE(D_a(E(x)), x) + lambda_lpips * LPIPS(D_a(E(x)), x)      (1.0 and 0.25)

over a batch of real images only (the phase's `classes`, "real" by default: the simulator never
sees a generated image). LPIPS (iab_jax/models/lpips.py, the lpips package's network) is frozen:
its variables ride along in the "lpips" collection, which no optimizer touches. The trained
simulator is what an `ofa` run (iab_jax/methods/ofa.py) names in config.simulator.workdir.

This is not an attributor: it has no classes to predict, and a run's results hold no test
accuracy; its log reports the reconstruction MSE, LPIPS and PSNR of every step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from iab_jax import console, weights
from iab_jax.methods import base
from iab_jax.models import lpips as lpips_lib
from iab_jax.models import ofa_simulator

# config.model fields that are the Simulator's architecture.
ARCH_FIELDS = ("encoder_widths", "decoder_widths", "num_kernels", "router_dim", "groups",
               "leaky_slope", "dtype")
LPIPS_FIELDS = ("net", "backbone", "lin")


def make_simulator(model_config) -> ofa_simulator.Simulator:
  kwargs = {k: (tuple(v) if isinstance(v, (list, tuple)) else v)
            for k, v in model_config.items() if k in ARCH_FIELDS}
  return ofa_simulator.Simulator(**kwargs)


def check_simulator_config(model, key: str = "model") -> None:
  if model is None:
    raise ValueError(f"config.{key} is missing; expected the simulator's {', '.join(ARCH_FIELDS)}")
  unknown = set(model) - set(ARCH_FIELDS)
  if unknown:
    raise ValueError(f"config.{key}.{sorted(unknown)[0]}: unknown; expected "
                     f"{', '.join(ARCH_FIELDS)}")


def lpips_variables(config, rng: jax.Array, images: jax.Array) -> dict[str, Any]:
  """The frozen LPIPS network's variables: the lpips package's weights, or (runlocal/minibench
  without the files) a random backbone with non-negative random lin weights, the sign the
  package's trained lin layers have, so the distance stays a distance."""
  cfg = config.lpips
  net = lpips_lib.LPIPS(net=cfg.net)
  variables = net.init(rng, images, images)
  backbone = weights.resolve_or_random(cfg.backbone, config, "lpips.backbone") if cfg.backbone \
      else None
  lin = weights.resolve_or_random(cfg.lin, config, "lpips.lin") if cfg.lin else None
  if backbone and lin:
    return lpips_lib.load_pretrained(variables, backbone, lin, net=cfg.net)
  if not config.get("random_init_fallback", False):
    raise ValueError("config.lpips.backbone and config.lpips.lin must name the LPIPS weights "
                     "(the backbone's safetensors and the converted lpips v0.1 lin layers)")
  console.say("LPIPS-%s with random weights (no files; random_init_fallback)", cfg.net)
  params = dict(variables["params"])
  for k in range(5):
    params[f"lin{k}"] = jax.tree.map(jnp.abs, params[f"lin{k}"])
  return {"params": params}


class OfaSimulator(base.Method):
  display_name = "OFA simulator"

  @classmethod
  def check_config(cls, config):
    check_simulator_config(config.get("model"))
    if "lpips" not in config or set(config.lpips) != set(LPIPS_FIELDS):
      raise ValueError(f"config.lpips: expected the fields {', '.join(LPIPS_FIELDS)}")
    if config.lpips.net not in lpips_lib.CHANNELS:
      raise ValueError(f"config.lpips.net={config.lpips.net!r}; expected one of "
                       f"{', '.join(lpips_lib.CHANNELS)}")
    for key in ("num_steps",):
      if not isinstance(config.get(key), int) or config[key] < 1:
        raise ValueError(f"config.{key}={config.get(key)!r}; expected an integer >= 1")
    for key in ("mse", "lpips"):
      if float(config.loss_weights.get(key, -1)) < 0:
        raise ValueError(f"config.loss_weights.{key}: expected a number >= 0")
    if not config.get("train_classes"):
      raise ValueError("config.train_classes is empty; expected the real class(es), e.g. "
                       "('real',)")

  def __init__(self, config, classes):
    super().__init__(config, classes)
    self.simulator = make_simulator(config.model)
    self.lpips = lpips_lib.LPIPS(net=config.lpips.net)

  def phases(self):
    return [base.Phase("reconstruction", 1, self.config.optimizer, select_best=False,
                       validate=False, classes=tuple(self.config.train_classes),
                       num_steps=int(self.config.num_steps), optimizer_key="optimizer")]

  def init(self, rng, images, pretrained=True):
    sim_rng, lpips_rng, arch_rng = jax.random.split(rng, 3)
    images = jnp.asarray(images, jnp.float32)
    arch = ofa_simulator.sample_architecture(arch_rng)
    variables = dict(self.simulator.init(sim_rng, images, arch, train=False))
    if pretrained:
      variables["lpips"] = lpips_variables(self.config, lpips_rng, images)
    else:  # restored from a checkpoint: only the structure matters
      variables["lpips"] = self.lpips.init(lpips_rng, images, images)
    return variables

  def loss(self, variables, batch, rng, phase):
    del phase
    x = batch["image"].astype(jnp.float32)
    arch = ofa_simulator.sample_architecture(rng)
    recon, updates = self.simulator.apply(
        {"params": variables["params"], "batch_stats": variables["batch_stats"]}, x, arch,
        train=True, mutable=["batch_stats"])
    recon = recon[0] if isinstance(recon, tuple) else recon
    mse = jnp.mean(jnp.square(recon - x))
    perceptual = jnp.mean(self.lpips.apply(variables["lpips"], recon, x))
    weights_ = self.config.loss_weights
    loss = weights_.mse * mse + weights_.lpips * perceptual
    # PSNR on the [-1, 1] scale (peak-to-peak 2), as on 8-bit pixels.
    psnr = 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-12))
    return loss, ({"batch_stats": updates["batch_stats"]},
                  {"mse": mse, "lpips": perceptual, "psnr": psnr})

  def predict(self, variables, batch):
    del variables, batch
    raise ValueError("the OFA simulator reconstructs images and attributes none; evaluate the "
                     "`ofa` extractor trained with it")


def restore_simulator(workdir: str, config) -> tuple[ofa_simulator.Simulator, dict[str, Any],
                                                     dict[str, Any]]:
  """(network, {"params", "batch_stats"}, the run's config as a dict) of a finished or running
  `ofa_simulator` run: its latest checkpoint (the simulator is not selected by validation)."""
  import os

  from iab_jax import checkpointing, errors, runs

  saved = runs.read_config(workdir)
  if saved is None or saved.get("method") != "ofa_simulator":
    raise errors.UserError(f"config.simulator.workdir={workdir!r} holds no ofa_simulator run "
                           f"({runs.CONFIG_JSON} missing or of another method)")
  net = make_simulator(saved["model"])
  ckpt = checkpointing.Checkpoints(os.path.join(workdir, runs.CHECKPOINTS), asynchronous=False)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise errors.UserError(f"config.simulator.workdir={workdir!r} holds no checkpoint yet")
    probe = jnp.zeros((1, 32, 32, 3), jnp.float32)
    arch = jnp.zeros((ofa_simulator.ARCH_LEN,), jnp.int32)

    def init():  # the structure the run saved, LPIPS included (only traced)
      out = dict(net.init(jax.random.key(0), probe, arch, train=False))
      out["lpips"] = lpips_lib.LPIPS(net=saved["lpips"]["net"]).init(jax.random.key(0), probe,
                                                                     probe)
      return out

    variables = ckpt.restore_variables(
        step, init, jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
  finally:
    ckpt.close()
  variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
  console.say("simulator: step %d of %s", step, workdir)
  return net, jax.tree.map(np.asarray, variables), saved
