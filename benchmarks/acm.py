"""The ACM detector's two costs, ours against the obvious PyTorch way, in one run.

  (a) features   the frozen CLIP image tower as a run extracts with it: the FrozenFeatures of
                 `Acm(config, classes).frozen_features()[0]` (configs/acm.py, randomly
                 initialised: timing does not depend on weights), built and jitted by
                 iab_jax.features.Extractors over a data-parallel mesh, on a batch already on
                 the device, against transformers' CLIPVisionModelWithProjection of the same
                 architecture (eval, torch.no_grad, `image_embeds`; CUDA when torch sees one).
                 images/s of the forward pass; parameter counts of both (equal).
  (b) training   the exact step of an ACM run (iab_jax.methods.acm's loss through
                 iab_jax.trainers.supervised.make_train_step, the optimizer from
                 iab_jax.optimizers.make(config.optimizer): Adam 2e-4 in two parameter groups
                 taking turns every step) on cached-feature batches {"features": {"clip":
                 (B, D)}, "label": (B,)}, half real (the autoencoder's class) and half generated,
                 against the obvious PyTorch loop: an nn.Module autoencoder of the same widths
                 and an nn.Linear classifier, one torch.optim.Adam(2e-4) each, taking turns: an
                 even step fits the autoencoder with the L1 loss on the batch's real rows, an odd
                 step the classifier with BCE on the detached |f - D(E(f))| of every row.
                 Feature vectors/s; parameter counts of both (equal). Both sides start from the
                 same weights (ours copied into torch), so the losses of their first steps are
                 the same numbers: the largest relative difference is printed as a check that
                 the two sides compute the same training.

Our step computes both losses and both gradients every step and masks the group out of turn
(one program, no Python branch); PyTorch's runs only the turn's network: about 2.4x fewer FLOPs
per step on average (autoencoder forward+backward on the 128 real rows, or forward alone on all
256, against forward+backward on all 256 every step). "compile s" is our first call less a
steady one (tracing, lowering, XLA); "init s" builds the variables. After the first call and
--warmup (--train_warmup) more on each side, the two sides are timed in turns, one call of ours
then one of PyTorch's, --steps times (training: a pair of steps, one turn of each network,
--train_steps / 2 times), and each rate is from the median call: a machine shared with other
work then loads both sides alike. Every call is waited for; host-to-device transfer is
outside the timing on both sides.

  python benchmarks/acm.py --quick                 # 2 CPU cores, < 2 minutes
  python benchmarks/acm.py                         # the paper's sizes (an accelerator)
  python benchmarks/acm.py --batch 128 --skip training

Defaults are the paper's sizes: CLIP ViT-L/14 at 224x224 (768-d embedding, configs/acm.py), at
image batch 64; training batch 256 at D 768, autoencoder 768 -> 512 -> 128 -> 512 -> 768, linear
classifier. --quick: the minibench tower (configs/clip_lr.SMALL_TOWERS["minibench"]: width 128,
2 blocks, 4-px patches, 256-d) at 64x64, image batch 16, fewer steps; the training step keeps its
paper sizes (a small MLP is cheap on a CPU), and each side gets one CPU thread (--threads 1):
on a small machine shared with other work, thread pools that outnumber the cores stall each
other, PyTorch's most (steps 10-50x slower and erratic, ratios from 0.5x to 12x between runs).
Inputs are standard normal noise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import backbones  # noqa: E402  (benchmarks/backbones.py: the CLIP ViT-L/14 on the torch side)
import ofa as ofa_bench  # noqa: E402  (benchmarks/ofa.py: timing, compile counting, train state)

QUICK = dict(tower="minibench", batch=16, steps=7, warmup=1, train_steps=60, train_warmup=4,
             threads=1)


def _config(tower: str, train_batch: int = 256):
  """configs/acm.py at the tower's sizes, the tower randomly initialised."""
  from configs import acm as acm_config

  config = acm_config.get_config("detection:SD1_5" + ("" if tower == "l14" else f",{tower}"))
  config.model.pretrained = ""  # a random stand-in: nothing read, same cost
  config.input.batch_size = train_batch
  return config


def _method(config):
  from iab_jax import tasks
  from iab_jax.methods import acm

  return acm.Acm(config, list(tasks.DETECTION_CLASSES))


def _torch_device():
  import torch

  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  name = (torch.cuda.get_device_name() if device.type == "cuda"
          else f"cpu ({torch.get_num_threads()} threads)")
  return device, f"torch {torch.__version__}, {name}"


def _sync(device):
  import torch

  if device.type == "cuda":
    torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# (a) The frozen image tower.

def ours_features(config, images):
  import jax

  from iab_jax import features, sharding

  spec = _method(config).frozen_features()[0]
  mesh = sharding.make_mesh()
  extractors = features.Extractors(mesh)
  start = time.perf_counter()
  _, variables, _ = extractors.get(spec)  # spec.build() and the replicated variables
  jax.block_until_ready(variables)
  setup = time.perf_counter() - start
  x = sharding.global_batch({"image": images}, mesh)["image"]
  jax.block_until_ready(x)

  def step():
    jax.block_until_ready(extractors(spec, x))

  return step, {"setup": setup, "params": ofa_bench._count(variables["params"])}


def _hf_tower(arch):
  """transformers' CLIP image tower at `arch` (clip_vit.Model's fields) -> (forward, module)."""
  if (arch["width"], arch["layers"], arch["heads"], arch["patch_size"], arch["image_size"],
      arch["embed_dim"], arch["activation"]) == (1024, 24, 16, 14, 224, 768, "quick_gelu"):
    return backbones._clip_l14()
  import transformers

  cfg = transformers.CLIPVisionConfig(
      hidden_size=arch["width"], intermediate_size=4 * arch["width"],
      num_hidden_layers=arch["layers"], num_attention_heads=arch["heads"],
      patch_size=arch["patch_size"], image_size=arch["image_size"],
      projection_dim=arch["embed_dim"], hidden_act=arch["activation"])
  model = transformers.CLIPVisionModelWithProjection(cfg)
  return lambda x: model(pixel_values=x).image_embeds, model


def torch_features(config, images):
  import torch

  from iab_jax.methods import clip_lr

  device, name = _torch_device()
  torch.manual_seed(0)
  forward, module = _hf_tower({k: config.model[k] for k in clip_lr.ARCH_FIELDS})
  module.to(device).eval()
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)

  def step():
    with torch.no_grad():
      forward(x)
    _sync(device)

  return step, {"params": sum(p.numel() for p in module.parameters()), "device": name}


# ---------------------------------------------------------------------------------------------
# (b) The training step on cached features.

def _batch(batch: int, dim: int):
  rng = np.random.default_rng(0)
  labels = rng.permutation(np.arange(batch) % 2).astype(np.int32)  # 0 real, 1 generated
  return rng.standard_normal((batch, dim)).astype(np.float32), labels


def ours_training(config, feats, labels, recorded: int):
  import jax

  from iab_jax import optimizers, sharding
  from iab_jax.trainers import supervised

  method = _method(config)
  mesh = sharding.make_mesh()
  setup = time.perf_counter()
  variables = jax.jit(method.init)(jax.random.key(0))
  phase = method.phases()[0]
  tx = optimizers.make(phase.optimizer, 1, 1)  # a constant rate: the lengths change nothing
  initial = jax.tree.map(np.array, variables["params"])  # writable host copies
  state = {"state": ofa_bench._state(method, variables, tx, mesh)}
  step_fn = supervised.make_train_step(method, tx, phase, mesh)
  batch = sharding.global_batch({"features": {method.features_name: feats}, "label": labels},
                                mesh)
  key = sharding.replicate(jax.random.key_data(jax.random.key(1)), mesh)
  setup = time.perf_counter() - setup
  losses = []  # the first calls' (autoencoder, classifier) losses, read after the timing

  def step():
    state["state"], measured = step_fn(state["state"], batch, key)
    jax.block_until_ready(measured["loss"])
    if len(losses) < recorded:
      losses.append((measured["attribution_loss"], measured["classify_loss"]))

  return step, {"setup": setup, "params": ofa_bench._count(initial), "initial": initial,
                "losses": losses,
                "widths": (method.dim, *method.model().hidden, method.model().bottleneck)}


def torch_training(config, feats, labels, initial, recorded: int):
  import torch
  import torch.nn as tnn
  import torch.nn.functional as F

  acm = config.acm
  device, name = _torch_device()
  dim, hidden, bottleneck = feats.shape[1], tuple(acm.hidden), int(acm.bottleneck)
  if tuple(acm.classifier_hidden) or acm.activation != "relu":
    raise ValueError("the PyTorch side is written for a ReLU autoencoder and a linear classifier")

  def mlp(widths, last_activation):
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
      layers.append(tnn.Linear(a, b))
      if last_activation or i + 2 < len(widths):
        layers.append(tnn.ReLU())
    return tnn.Sequential(*layers)

  class Autoencoder(tnn.Module):
    def __init__(self):
      super().__init__()
      self.encoder = mlp((dim, *hidden, bottleneck), last_activation=True)
      self.decoder = mlp((bottleneck, *reversed(hidden), dim), last_activation=False)

    def forward(self, f):
      return self.decoder(self.encoder(f))

  autoencoder = Autoencoder()
  classifier = tnn.Linear(dim, 1)
  # Our initial weights (flax Dense kernels are (in, out)), so the two trainings are one.
  with torch.no_grad():
    for seq, flax_mlp in ((autoencoder.encoder, initial["autoencoder"]["encoder"]),
                          (autoencoder.decoder, initial["autoencoder"]["decoder"])):
      linears = [m for m in seq if isinstance(m, tnn.Linear)]
      for i, linear in enumerate(linears):
        linear.weight.copy_(torch.from_numpy(flax_mlp[f"dense{i}"]["kernel"].T.copy()))
        linear.bias.copy_(torch.from_numpy(flax_mlp[f"dense{i}"]["bias"]))
    classifier.weight.copy_(torch.from_numpy(initial["classifier"]["dense0"]["kernel"].T.copy()))
    classifier.bias.copy_(torch.from_numpy(initial["classifier"]["dense0"]["bias"]))
  autoencoder.to(device).train()
  classifier.to(device).train()
  lr = float(config.optimizer.learning_rate)
  opt_autoencoder = torch.optim.Adam(autoencoder.parameters(), lr=lr)
  opt_classifier = torch.optim.Adam(classifier.parameters(), lr=lr)
  f = torch.from_numpy(feats).to(device)
  y = torch.from_numpy(labels).to(device)
  counter = {"i": 0}
  losses = []

  def step():
    if counter["i"] % 2 == 0:  # the autoencoder's turn: L1 on the real rows (eq. 4)
      real = f[y == 0]
      loss = (real - autoencoder(real)).abs().sum(dim=1).mean()
      opt_autoencoder.zero_grad(set_to_none=True)
      loss.backward()
      opt_autoencoder.step()
    else:  # the classifier's turn: BCE on the detached deviation (eq. 5)
      with torch.no_grad():
        attribution = (f - autoencoder(f)).abs()
      loss = F.binary_cross_entropy_with_logits(classifier(attribution)[:, 0], y.float())
      opt_classifier.zero_grad(set_to_none=True)
      loss.backward()
      opt_classifier.step()
    _sync(device)
    if counter["i"] < recorded:
      losses.append(loss.item())
    counter["i"] += 1

  params = sum(p.numel() for m in (autoencoder, classifier) for p in m.parameters())
  return step, {"params": params, "losses": losses, "device": name}


# ---------------------------------------------------------------------------------------------
# Timing.

def timed_in_turns(ours, theirs, warmup: int, rounds: int, calls: int, counter):
  """Seconds of each side's first call and of its median timed call (of `calls` steps), and
  our compilations from the first call on: the first calls and `warmup` more on each side, then
  `rounds` rounds of `calls` steps of ours followed by `calls` of theirs."""
  first, samples = [], ([], [])
  before = counter.count
  for step in (ours, theirs):
    start = time.perf_counter()
    step()
    first.append(time.perf_counter() - start)
    for _ in range(warmup):
      step()
  for _ in range(rounds):
    for step, times in zip((ours, theirs), samples):
      start = time.perf_counter()
      for _ in range(calls):
        step()
      times.append((time.perf_counter() - start) / calls)
  seconds = [float(np.median(t)) for t in samples]
  return ({"first": first[0], "seconds": seconds[0], "compile": first[0] - seconds[0],
           "compiles": counter.count - before},
          {"first": first[1], "seconds": seconds[1]})


# ---------------------------------------------------------------------------------------------

def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="small sizes for 2 CPU cores (< 2 minutes); explicit flags override")
  parser.add_argument("--tower", default="l14", choices=("l14", "minibench", "runlocal"),
                      help="configs/acm.py's tower: ViT-L/14 at 224, or a shrunk preset at 64")
  parser.add_argument("--batch", type=int, default=64, help="images per feature batch")
  parser.add_argument("--steps", type=int, default=10, help="timed feature batches per side")
  parser.add_argument("--warmup", type=int, default=2, help="feature batches before timing")
  parser.add_argument("--train_batch", type=int, default=256, help="feature vectors per step")
  parser.add_argument("--train_steps", type=int, default=200,
                      help="timed training steps per side (rounded up to even)")
  parser.add_argument("--train_warmup", type=int, default=10, help="training steps before timing")
  parser.add_argument("--threads", type=int, default=0,
                      help="CPU threads of each side (XLA's and torch's intra-op pools); 0: "
                           "the libraries' defaults")
  parser.add_argument("--skip", default="", help="comma-separated: features, training")
  args = ofa_bench.parse_with_quick(parser, argv, QUICK)
  skip = set(filter(None, args.skip.split(",")))
  unknown = skip - {"features", "training"}
  if unknown:
    parser.error(f"--skip {','.join(sorted(unknown))}: expected features, training")
  # The first call and the warm-up together an even count, so the timed pairs begin on the
  # autoencoder's turn on both sides.
  train_warmup = args.train_warmup + (args.train_warmup % 2 == 0)
  train_rounds = (args.train_steps + 1) // 2

  if args.threads:
    if "jax" in sys.modules:
      raise RuntimeError("--threads must be applied before jax is imported")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                               f"false intra_op_parallelism_threads={args.threads}").strip()
    import torch
    torch.set_num_threads(args.threads)

  import jax

  from iab_jax import console, sharding

  console.say = lambda *a, **k: None  # the presets' and the extractor's log lines
  counter = ofa_bench.CompileCounter()
  ours_device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"

  if "features" not in skip:
    sharding.check_batch_size(args.batch, "--batch")
    config = _config(args.tower)
    model = config.model
    size = int(model.image_size)
    images = np.random.default_rng(0).standard_normal((args.batch, size, size, 3)).astype(
        np.float32)
    print(f"(a) frozen CLIP image tower ({args.tower}: width {model.width}, {model.layers} "
          f"blocks, {model.patch_size}-px patches at {size}x{size}, {model.embed_dim}-d), "
          f"batch {args.batch}, fp32, eval; median of {args.steps} batches each, taken in turns "
          f"after {1 + args.warmup}")
    step_ours, ours = ours_features(config, images)
    step_torch, theirs = torch_features(config, images)
    timed_ours, timed_torch = timed_in_turns(step_ours, step_torch, args.warmup, args.steps, 1,
                                             counter)
    print(f"  iab_jax (features.Extractors)  {args.batch / timed_ours['seconds']:9.1f} images/s  "
          f"({timed_ours['seconds'] * 1000:.1f} ms/batch; compile {timed_ours['compile']:.1f} s, "
          f"init {ours['setup']:.1f} s; {timed_ours['compiles']} compilations; "
          f"{ours['params']:,} params; {ours_device})")
    print(f"  PyTorch (transformers, eager)  {args.batch / timed_torch['seconds']:9.1f} images/s  "
          f"({timed_torch['seconds'] * 1000:.1f} ms/batch; first batch "
          f"{timed_torch['first']:.1f} s; {theirs['params']:,} params; {theirs['device']})")
    print(f"  ratio ours / PyTorch: {timed_torch['seconds'] / timed_ours['seconds']:.2f}x",
          flush=True)
    del step_ours, step_torch

  if "training" not in skip:
    sharding.check_batch_size(args.train_batch, "--train_batch")
    config = _config("l14", args.train_batch)
    dim = int(config.model.embed_dim)
    feats, labels = _batch(args.train_batch, dim)
    recorded = 1 + train_warmup  # the untimed steps, whose losses both sides keep
    step_ours, ours = ours_training(config, feats, labels, recorded)
    step_torch, theirs = torch_training(config, feats, labels, ours["initial"], recorded)
    widths = " -> ".join(map(str, (*ours["widths"], *reversed(ours["widths"][:-1]))))
    print(f"(b) ACM training step on cached features: batch {args.train_batch} x {dim}, "
          f"autoencoder {widths} (L1 on {int((labels == 0).sum())} real rows), linear classifier "
          f"(BCE), Adam {config.optimizer.learning_rate:g} taking turns every step; median of "
          f"{train_rounds} pairs of steps each, taken in turns after {recorded} steps")
    timed_ours, timed_torch = timed_in_turns(step_ours, step_torch, train_warmup, train_rounds,
                                             2, counter)
    print(f"  iab_jax (make_train_step)      {args.train_batch / timed_ours['seconds']:9.0f} "
          f"vectors/s  ({timed_ours['seconds'] * 1000:.2f} ms/step; compile "
          f"{timed_ours['compile']:.1f} s, init {ours['setup']:.1f} s; "
          f"{timed_ours['compiles']} compilations; {ours['params']:,} params; {ours_device})")
    print(f"  PyTorch (two Adams, eager)     {args.train_batch / timed_torch['seconds']:9.0f} "
          f"vectors/s  ({timed_torch['seconds'] * 1000:.2f} ms/step; first step "
          f"{timed_torch['first'] * 1000:.0f} ms; {theirs['params']:,} params; "
          f"{theirs['device']})")
    print(f"  ratio ours / PyTorch: {timed_torch['seconds'] / timed_ours['seconds']:.2f}x")
    # Our step k reports both losses; the turn's one is what PyTorch's step k minimised.
    ours_losses = [tuple(float(v) for v in pair) for pair in ours["losses"]]
    pairs = [(ours_losses[k][k % 2], theirs["losses"][k])
             for k in range(min(len(ours_losses), len(theirs["losses"])))]
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in pairs)
    print(f"  same training: the first {len(pairs)} steps' losses (autoencoder L1 "
          f"{pairs[0][0]:.3f} -> {pairs[-2][0]:.3f}, classifier BCE {pairs[1][0]:.4f} -> "
          f"{pairs[-1][0]:.4f}) agree to {worst:.1e} (largest relative difference)")

if __name__ == "__main__":
  main()
