"""One-for-All's training steps: simulator and extractor images/s, compile time, recompilations,
and the simulator against the obvious PyTorch way, in one run.

  (a) simulator   the exact step an `ofa_simulator` run takes (iab_jax.methods.ofa_simulator's
                  loss, MSE + 0.25 LPIPS with random LPIPS weights, through
                  iab_jax.trainers.supervised.make_train_step: gradients and Adam 1e-4 over a
                  data-parallel mesh), a fresh random decoder architecture each step drawn from
                  the step's key. "compile s" is the first call less a steady step (tracing,
                  lowering, XLA). Recompilations: the backend compilations while the step runs
                  1 + --warmup + --steps different architectures, and while the jitted forward
                  pass and loss, taking the architecture as an argument, run --archs distinct
                  architectures (architecture_from_seed); both must be 1: the architecture is
                  data (lax.switch), never a Python branch.
  (b) extractor   the exact step of an `ofa` run's fingerprint phase (iab_jax.methods.ofa's loss
                  through the same make_train_step): the batch's (sets + 1) x set_size real
                  images, sets reconstructed by the frozen simulator through their own
                  architectures (view a) and the last set decoded by `sets` architectures (view
                  b), every image through the frozen DnCNN, log|FFT2| and the ResNet, SupCon with
                  the memory bank, pair and real/reconstruction heads, Adam. Rates: input images/s
                  and the spectra the extractor embeds per second.
  (c) PyTorch     the simulator written the obvious way: an nn.Module whose forward branches in
                  Python on the sampled architecture (start scale, up-samplers, cell orders,
                  activations, norms), eager, MSE + 0.25 LPIPS (the same backbone with random
                  weights and non-negative lin layers), torch.optim.Adam, on the same sizes and
                  the same architectures as (a)'s steps (recomputed from its step keys), CUDA when
                  torch sees one. Its parameter count is printed beside ours: equal sizes.

  python benchmarks/ofa.py --quick                 # 2 CPU cores, < 3 minutes
  python benchmarks/ofa.py                         # the paper's sizes (an accelerator)
  python benchmarks/ofa.py --image_size 128 --batch 8 --steps 5 --skip extractor

Defaults are the paper's: 256x256 crops, simulator batch 16, encoder widths 64/128/256, decoder
128/64/32, 4 kernels, router 256, GroupNorm 32, LPIPS-vgg; extractor configs/ofa.py:standard
(batch 8 x 16 + 16 = 144, ResNet-50, Corvi's 17-layer DnCNN, bank 1024). --quick: 64x64,
simulator batch 4 at widths 16/32/64 | 32/16/8, router 16, groups 4, LPIPS-alex; extractor
configs/ofa.py:standard,runlocal sizes (2 sets x 2, ResNet width 8 one block per stage, DnCNN 3 x
8). Inputs are uniform noise in [-1, 1]; every network is randomly initialised (timing does not
depend on weights; nothing is read or downloaded). Rates are from the mean of --steps timed steps
(each waited for), after --warmup: per-step cost depends on the architecture drawn (1 to 3
up-blocks), so the mean over a sequence shared by both sides is the fair figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUICK = dict(image_size=64, batch=4, encoder_widths="16,32,64", decoder_widths="32,16,8",
             router_dim=16, groups=4, lpips="alex", steps=3, warmup=1, archs=100,
             extractor="runlocal")


# ---------------------------------------------------------------------------------------------
# Timing and compile counting.

class CompileCounter:
  """Counts XLA backend compilations (jax.monitoring's compile event) from its creation on."""

  def __init__(self):
    import jax
    from jax._src import dispatch

    self.count = 0
    event = dispatch.BACKEND_COMPILE_EVENT

    def listen(name, *_, **__):
      if name == event:
        self.count += 1

    jax.monitoring.register_event_duration_secs_listener(listen)


def _timed(step, warmup: int, steps: int) -> tuple[float, float]:
  """(seconds of the first call, mean seconds per step of `steps` calls after `warmup` more)."""
  start = time.perf_counter()
  step()
  first = time.perf_counter() - start
  for _ in range(warmup):
    step()
  start = time.perf_counter()
  for _ in range(steps):
    step()
  return first, (time.perf_counter() - start) / max(steps, 1)


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(v) for v in text.split(","))


def _state(method, variables, tx, mesh):
  import jax

  from iab_jax import sharding

  variables = sharding.replicate(dict(variables), mesh)
  params = variables.pop("params")
  return {"params": params, "model_state": variables,
          "opt_state": jax.jit(tx.init, out_shardings=sharding.replicated(mesh))(params),
          "step": sharding.replicate(np.int32(0), mesh)}


def _count(tree) -> int:
  import jax
  return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------------------------
# (a) The simulator, ours.

def simulator_config(args):
  from configs import ofa_simulator as config_lib

  config = config_lib.get_config("standard")
  config.model.update({"encoder_widths": _ints(args.encoder_widths),
                       "decoder_widths": _ints(args.decoder_widths),
                       "router_dim": args.router_dim, "groups": args.groups})
  config.lpips.update({"net": args.lpips, "backbone": "", "lin": ""})
  config.random_init_fallback = True  # LPIPS with random (non-negative lin) weights
  config.input.batch_size = args.batch
  return config


def ours_simulator(args, images, counter):
  import jax
  import jax.numpy as jnp

  from iab_jax import optimizers, sharding
  from iab_jax.methods import ofa_simulator as method_lib
  from iab_jax.models import ofa_simulator
  from iab_jax.trainers import supervised

  config = simulator_config(args)
  method = method_lib.OfaSimulator(config, ["real"])
  mesh = sharding.make_mesh()
  # One program: initialisers op by op compile one by one (minutes of a CPU run).
  setup = time.perf_counter()
  variables = jax.jit(method.init)(jax.random.key(0, impl="rbg"), jnp.asarray(images[:1]))
  phase = method.phases()[0]
  tx = optimizers.make(phase.optimizer, 1, 1)
  state = {"state": _state(method, variables, tx, mesh)}
  step_fn = supervised.make_train_step(method, tx, phase, mesh)
  key_data = jax.random.key_data(jax.random.key(1))
  batch = sharding.global_batch({"image": images, "label": np.zeros(len(images), np.int32)}, mesh)
  repl_key = sharding.replicate(key_data, mesh)

  def step():
    state["state"], measured = step_fn(state["state"], batch, repl_key)
    jax.block_until_ready(measured["loss"])

  setup = time.perf_counter() - setup
  before = counter.count
  first, seconds = _timed(step, args.warmup, args.steps)
  step_compiles = counter.count - before
  # The architectures those steps drew (OfaSimulator.loss samples from the step's key), for (c).
  steps = 1 + args.warmup + args.steps
  keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.wrap_key_data(key_data), s))(
      jnp.arange(steps))
  archs = np.asarray(jax.vmap(ofa_simulator.sample_architecture)(keys))

  # The architecture as an argument: one program for --archs distinct architectures.
  sim, lpips_net = method.simulator, method.lpips
  weights = config.loss_weights

  def loss(params, model_vars, x, arch):
    recon, _ = sim.apply({"params": params, "batch_stats": model_vars["batch_stats"]}, x, arch,
                         train=True, mutable=["batch_stats"])
    recon = recon[0] if isinstance(recon, tuple) else recon
    return (weights.mse * jnp.mean(jnp.square(recon - x))
            + weights.lpips * jnp.mean(lpips_net.apply(model_vars["lpips"], recon, x)))

  # The forward pass and the loss: the program whose structure the architecture could change (its
  # gradient is derived from the same trace); a second full training step would double the
  # compile time of a CPU run for nothing.
  loss_fn = jax.jit(loss)
  params = variables["params"]
  model_vars = {"batch_stats": variables["batch_stats"], "lpips": variables["lpips"]}
  x = jnp.asarray(images[:2])
  candidates = [ofa_simulator.architecture_from_seed(s) for s in range(args.archs)]
  distinct = len({tuple(a) for a in candidates})
  before = counter.count
  start = time.perf_counter()
  for arch in candidates:
    value = loss_fn(params, model_vars, x, arch)
    jax.block_until_ready(value)
  arch_seconds = time.perf_counter() - start
  arch_compiles = counter.count - before
  return {"first": first, "seconds": seconds, "compile": first - seconds, "setup": setup,
          "compiles": step_compiles, "archs": archs, "arch_compiles": arch_compiles,
          "distinct": distinct, "arch_seconds": arch_seconds,
          "params": _count(variables["params"]),
          "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}"}


# ---------------------------------------------------------------------------------------------
# (c) The simulator, the obvious PyTorch way.

def torch_simulator(args, images, archs):
  import torch
  import torch.nn as tnn
  import torch.nn.functional as F
  import torchvision

  from iab_jax.models import ofa_simulator as ref

  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  enc, dec = _ints(args.encoder_widths), _ints(args.decoder_widths)
  k_kernels, router, slope = 4, args.router_dim, 0.2

  class Residual(tnn.Module):
    def __init__(self, c):
      super().__init__()
      self.conv1, self.bn1 = tnn.Conv2d(c, c, 3, padding=1), tnn.BatchNorm2d(c)
      self.conv2, self.bn2 = tnn.Conv2d(c, c, 3, padding=1), tnn.BatchNorm2d(c)

    def forward(self, x):
      h = F.silu(self.bn1(self.conv1(x)))
      return F.silu(x + self.bn2(self.conv2(h)))

  class Encoder(tnn.Module):
    def __init__(self):
      super().__init__()
      self.stem = tnn.Conv2d(3, enc[0], 3, padding=1)
      ins = (enc[0],) + tuple(enc[:-1])
      self.down = tnn.ModuleList(tnn.Conv2d(i, o, 3, 2, 1) for i, o in zip(ins, enc))
      self.res = tnn.ModuleList(Residual(c) for c in enc)
      self.final_conv, self.final_res = tnn.Conv2d(enc[-1], enc[-1], 3, padding=1), Residual(
          enc[-1])

    def forward(self, x):
      h, features = F.silu(self.stem(x)), []
      for down, res in zip(self.down, self.res):
        h = res(down(h))
        features.append(h)
      features.append(self.final_res(self.final_conv(h)))
      return features

  class MoKConv(tnn.Module):
    def __init__(self, c):
      super().__init__()
      self.c = c
      self.conv = tnn.Conv2d(c, k_kernels * c, 3, padding=1)  # the K base convs as one
      self.router1, self.router2 = tnn.Conv2d(c, router, 3, 2, 1), tnn.Conv2d(router, router, 3,
                                                                              2, 1)
      self.fc, self.proj = tnn.Linear(router, router), tnn.Linear(router, k_kernels * self.c)

    def forward(self, h):
      r = F.leaky_relu(self.router2(F.leaky_relu(self.router1(h), slope)), slope)
      r = F.leaky_relu(self.fc(r.mean((2, 3))), slope)
      w = self.proj(r).view(-1, k_kernels, self.c, 1, 1)
      y = self.conv(h).view(h.shape[0], k_kernels, self.c, *h.shape[2:])
      return (w * y).sum(1)

  class Cell(tnn.Module):
    def __init__(self, c):
      super().__init__()
      self.mok = MoKConv(c)
      self.bn = tnn.BatchNorm2d(c, track_running_stats=False)  # the batch's statistics
      self.gn = tnn.GroupNorm(ref.group_count(c, args.groups), c)

    def forward(self, h, act, norm, order):
      for op in ref.ORDERS[order]:
        if op == "conv":
          h = self.mok(h)
        elif op == "act":
          if ref.ACTIVATIONS[act] == "leaky_relu":
            h = F.leaky_relu(h, slope)
          elif ref.ACTIVATIONS[act] == "gelu":
            h = F.gelu(h)
          else:
            h = F.silu(h)
        elif ref.NORMS[norm] == "batch":
          h = self.bn(h)
        elif ref.NORMS[norm] == "instance":
          h = F.instance_norm(h)
        else:
          h = self.gn(h)
      return h

  class Level(tnn.Module):
    def __init__(self, c_in, c):
      super().__init__()
      self.conv_up = tnn.Conv2d(c_in, c, 1)
      self.pixel_shuffle = tnn.Conv2d(c, 4 * c, 3, padding=1)
      self.cells = tnn.ModuleList(Cell(c) for _ in range(ref.MAX_CELLS))

    def forward(self, x, spec):
      h = self.conv_up(x)
      up = ref.UPSAMPLERS[spec[0]]
      if up == "pixel_shuffle":
        h = F.pixel_shuffle(self.pixel_shuffle(h), 2)
      elif up == "nearest":
        h = F.interpolate(h, scale_factor=2, mode="nearest")
      else:
        h = F.interpolate(h, scale_factor=2, mode=up, align_corners=False)
      out = h
      for j in range(spec[1]):
        out = self.cells[j](out, *spec[2 + ref.CELL_LEN * j: 2 + ref.CELL_LEN * (j + 1)])
      return out + h

  class Simulator(tnn.Module):
    def __init__(self):
      super().__init__()
      self.encoder = Encoder()
      ins = (enc[2], dec[0], dec[1])
      self.levels = tnn.ModuleList(Level(i, c) for i, c in zip(ins, dec))
      self.out_conv = tnn.Conv2d(dec[-1], 3, 3, padding=1)

    def forward(self, x, arch):
      f0, f1, _, f3 = self.encoder(x)
      start = int(arch[0])
      h = (f3, f1, f0)[start]
      for level in range(start, ref.NUM_LEVELS):
        at = 1 + level * ref.LEVEL_LEN
        h = self.levels[level](h, [int(v) for v in arch[at: at + ref.LEVEL_LEN]])
      return self.out_conv(h)

  class LPIPS(tnn.Module):
    """The lpips package's computation with random weights (non-negative lin layers)."""
    TAPS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}

    def __init__(self, net):
      super().__init__()
      make = torchvision.models.alexnet if net == "alex" else torchvision.models.vgg16
      self.features = make(weights=None).features[: self.TAPS[net][-1] + 1]
      self.taps = self.TAPS[net]
      channels = [self.features[i - 1].out_channels for i in self.taps]
      self.lins = tnn.ModuleList(tnn.Conv2d(c, 1, 1, bias=False) for c in channels)
      with torch.no_grad():
        for lin in self.lins:
          lin.weight.abs_()
      self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
      self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
      self.requires_grad_(False)

    def forward(self, x, y):
      n = x.shape[0]
      h = (torch.cat([x, y]) - self.shift) / self.scale
      total, tap = 0.0, 0
      for i, layer in enumerate(self.features):
        h = layer(h)
        if i == self.taps[tap]:
          f = h / (h.norm(dim=1, keepdim=True) + 1e-10)
          total = total + self.lins[tap]((f[:n] - f[n:]) ** 2).mean((1, 2, 3))
          tap += 1
      return total

  torch.manual_seed(0)
  sim = Simulator().to(device).train()
  perceptual = LPIPS(args.lpips).to(device).eval()
  optimizer = torch.optim.Adam(sim.parameters(), lr=1e-4)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
  counter = {"i": 0}

  def step():
    arch = archs[counter["i"] % len(archs)]
    counter["i"] += 1
    optimizer.zero_grad(set_to_none=True)
    recon = sim(x, arch)
    loss = F.mse_loss(recon, x) + 0.25 * perceptual(recon, x).mean()
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
      torch.cuda.synchronize()

  first, seconds = _timed(step, args.warmup, args.steps)
  name = torch.cuda.get_device_name() if device.type == "cuda" else \
      f"cpu ({torch.get_num_threads()} threads)"
  return {"first": first, "seconds": seconds,
          "params": sum(p.numel() for p in sim.parameters()),
          "device": f"torch {torch.__version__}, {name}"}


# ---------------------------------------------------------------------------------------------
# (b) The extractor's fingerprint step.

def extractor_config(args):
  from configs import ofa as config_lib

  config = config_lib.get_config("standard" + (",runlocal" if args.extractor == "runlocal"
                                               else ""))
  config.model.pretrained = config.denoiser.pretrained = ""
  config.random_init_fallback = True
  return config


def ours_extractor(args, counter):
  import jax
  import jax.numpy as jnp

  from iab_jax import optimizers, sharding
  from iab_jax.methods import ofa as method_lib
  from iab_jax.trainers import supervised

  config = extractor_config(args)
  fp = config.fingerprint
  n = (fp.sets + 1) * fp.set_size
  size = args.image_size
  images = np.random.default_rng(1).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)
  method = method_lib.Ofa(config, ["real", "fake"])
  mesh = sharding.make_mesh()
  setup = time.perf_counter()
  variables = jax.jit(lambda k, x: method.init(k, x, pretrained=False))(
      jax.random.key(0, impl="rbg"), jnp.asarray(images[:1]))
  phase = method.phases()[0]
  tx = optimizers.make(phase.optimizer, 1, 1)
  state = {"state": _state(method, variables, tx, mesh)}
  step_fn = supervised.make_train_step(method, tx, phase, mesh)
  batch = sharding.global_batch({"image": images, "label": np.zeros(n, np.int32)}, mesh)
  key = sharding.replicate(jax.random.key_data(jax.random.key(1)), mesh)

  def step():
    state["state"], measured = step_fn(state["state"], batch, key)
    jax.block_until_ready(measured["loss"])

  setup = time.perf_counter() - setup
  before = counter.count
  first, seconds = _timed(step, args.warmup, args.steps)
  views = int(fp.multiple_sets) + int(fp.single_set)
  spectra = views * fp.sets * fp.set_size + (fp.sets * fp.set_size if fp.multiple_sets else 0) \
      + fp.set_size
  return {"first": first, "seconds": seconds, "compile": first - seconds, "setup": setup,
          "compiles": counter.count - before, "batch": n, "spectra": spectra,
          "params": _count(variables["params"]["extractor"]),
          "what": (f"{fp.sets} sets x {fp.set_size} + {fp.set_size} real at {size}x{size}, "
                   f"ResNet {tuple(config.model.stage_sizes)} width {config.model.width}, "
                   f"DnCNN {config.denoiser.depth} x {config.denoiser.width}")}


# ---------------------------------------------------------------------------------------------

def parse_with_quick(parser: argparse.ArgumentParser, argv, quick: dict) -> argparse.Namespace:
  """The arguments, with --quick's values for every option the command line did not give."""
  given = {a.lstrip("-").split("=")[0] for a in (argv if argv is not None else sys.argv[1:])
           if a.startswith("--")}
  args = parser.parse_args(argv)
  if args.quick:
    for key, value in quick.items():
      if key not in given:
        setattr(args, key, value)
  return args


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="small sizes for 2 CPU cores (< 3 minutes); explicit flags override")
  parser.add_argument("--image_size", type=int, default=256)
  parser.add_argument("--batch", type=int, default=16, help="simulator batch")
  parser.add_argument("--encoder_widths", default="64,128,256")
  parser.add_argument("--decoder_widths", default="128,64,32")
  parser.add_argument("--router_dim", type=int, default=256)
  parser.add_argument("--groups", type=int, default=32)
  parser.add_argument("--lpips", default="vgg", choices=("vgg", "alex"))
  parser.add_argument("--extractor", default="standard", choices=("standard", "runlocal"),
                      help="configs/ofa.py sizes of the extractor step (at --image_size)")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--archs", type=int, default=100,
                      help="architectures of the recompilation check")
  parser.add_argument("--skip", default="", help="comma-separated: simulator, torch, extractor")
  args = parse_with_quick(parser, argv, QUICK)
  skip = set(filter(None, args.skip.split(",")))

  counter = CompileCounter()
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (args.batch, args.image_size, args.image_size, 3)).astype(
      np.float32)
  print(f"OFA simulator: batch {args.batch} at {args.image_size}x{args.image_size}, encoder "
        f"{args.encoder_widths}, decoder {args.decoder_widths}, router {args.router_dim}, "
        f"groups {args.groups}, MSE + 0.25 LPIPS-{args.lpips} (random weights), Adam 1e-4; "
        f"{args.steps} timed steps after {1 + args.warmup}")
  rows = {}
  if "simulator" not in skip:
    ours = ours_simulator(args, images, counter)
    rows["ours"] = ours
    print(f"  iab_jax (jax.jit)    {args.batch / ours['seconds']:8.2f} images/s  "
          f"({ours['seconds'] * 1000:.0f} ms/step; compile {ours['compile']:.1f} s, init "
          f"{ours['setup']:.1f} s; "
          f"{ours['params']:,} params; {ours['device']})")
    print(f"    compilations: {ours['compiles']} over {1 + args.warmup + args.steps} steps "
          f"({len({tuple(a) for a in ours['archs']})} distinct architectures); "
          f"{ours['arch_compiles']} over {args.archs} architectures as an argument "
          f"({ours['distinct']} distinct; forward + loss at batch 2, "
          f"{ours['arch_seconds']:.1f} s)")
    if "torch" not in skip:
      theirs = torch_simulator(args, images, ours["archs"][1 + args.warmup:])
      rows["torch"] = theirs
      print(f"  PyTorch (eager)      {args.batch / theirs['seconds']:8.2f} images/s  "
            f"({theirs['seconds'] * 1000:.0f} ms/step; first step {theirs['first']:.1f} s; "
            f"{theirs['params']:,} params; {theirs['device']})")
      print(f"  ratio ours / PyTorch: {theirs['seconds'] / ours['seconds']:.2f}x")
  if "extractor" not in skip:
    ext = ours_extractor(args, counter)
    print(f"OFA extractor fingerprint step: {ext['what']}")
    print(f"  iab_jax (jax.jit)    {ext['batch'] / ext['seconds']:8.2f} images/s  "
          f"({ext['spectra'] / ext['seconds']:.1f} spectra/s through the extractor; "
          f"{ext['seconds'] * 1000:.0f} ms/step; compile {ext['compile']:.1f} s, init "
          f"{ext['setup']:.1f} s; "
          f"{ext['compiles']} compilations over {1 + args.warmup + args.steps} steps; "
          f"{ext['params']:,} extractor params)")


if __name__ == "__main__":
  main()
