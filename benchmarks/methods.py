"""Per attribution method: training and evaluation images/s, FLOP/s against the matmul peak.

For each method (configs/<method>.py at the task "standard"), on this machine's default device:

  train   images/s of the exact jitted step the supervised loop runs
          (iab_jax.trainers.supervised.make_train_step: loss, gradients, the phase's optax
          optimizer, over a data-parallel mesh of all devices). For the linear-probe method
          (CLIP-LR) there is no step: "train" is the frozen network's feature extraction, the
          pass over the training split that dominates its fit, and the logistic-regression fit
          on --fit-examples random features is timed on its own (the "fit" line).
  eval    images/s of the jitted method.predict on one batch. A method with frozen features
          (DEFL's CLIP, CLIP-LR's CLIP) reads them from a cache in the loop; the "frozen" column
          is the frozen network's own extraction images/s, and "uncached" the throughput of an
          evaluation that runs both (1 / (1/eval + 1/frozen)).
  FLOP/s  XLA's cost analysis of each compiled program (flops per step) / the median step time,
          as a percentage of a measured peak: a jitted float32 N x N @ N x N matmul (2 N^3
          flops; N = 2048 on a CPU, 8192 on an accelerator) at JAX's default precision, the same
          precision the models run at; its fastest run, measured before and after the methods,
          the faster of the two kept (other work on a shared machine only slows it).
  torch   FSD, PatchForensics and PatchCraft (TORCH_REFERENCES): the same network written the
          obvious PyTorch way, at the same size as ours for the chosen --size, channels-last,
          on CUDA when torch sees a GPU, same batch and input sizes. FSD: torchvision's ResNet-50
          with fc = Sequential(Linear(2048, 1024), Linear(1024, 23)) (at --size small the same
          shrunk ResNet), image cross-entropy. PatchForensics: Xception's stem and blocks 1-2
          (grouped-conv separable convs, max pools) and a 1x1 conv to the classes, cross-entropy
          on every patch; eval averages the patch softmax. PatchCraft: the fixed 30-filter
          high-pass bank as one 5x5 conv, group means, median binarisation, the shared conv +
          BN + Hardtanh on the rich and poor mosaics, rich - poor, the classifier; cross-entropy.
          Train is torch.optim.Adam (forward + backward + step) in train mode, eval an eval-mode,
          no_grad forward (and its prediction); the ratio ours / torch for each.

Sizes: --size full (default) is the paper's: each config's "standard" recipe, e.g. 256x256 inputs
and a full ResNet-50, at the config's batch size; --size small is "standard,runlocal", the
shrunk networks of the smoke tests (seconds on a CPU). Inputs are synthetic: float32 normal noise
of the shape the method's training (evaluation) transform produces, random labels over the 23
official classes, random valid Table-6 levels, random frozen features. Weights do not change the
timings, so trainable variables are randomly initialised (method.init(..., pretrained=False)),
and frozen networks read their weights file only when it is present: config.random_init_fallback
is set, and nothing is downloaded (HF_HUB_OFFLINE=1 unless the environment says otherwise).

  python benchmarks/methods.py                                    # all six, the paper's sizes
  python benchmarks/methods.py --size small --steps 2             # a quick CPU check
  python benchmarks/methods.py --methods fsd,dct_cnn --batch 8 --steps 2
  python benchmarks/methods.py --out benchmarks/methods.json      # also write the rows as JSON

Each timed program is compiled ahead of time (the "compile s" columns, excluded from the rates),
run --warmup times, then timed --steps times, each step waited for (block_until_ready); rates are
from the median step. A method that fails to build or run gets its error in its row; the others
still run. Reading the table: "train/eval img/s" are per method at its own batch and input size
(the "input" column, training transform's size), so methods are comparable as throughput of the
real loop, not as equal work; "%peak" near 100 means compute-bound at matmul speed, far below it
memory- or overhead-bound (small convolutions, the DCT, elementwise ops). The peak is what this
machine's XLA matmul reaches, not a data-sheet figure, so a program whose kernels beat it (or a
peak measured while other processes held the cores) can show more than 100; on a busy machine
read every number as noisy, and compare ours/torch only from the same run.

Figures
-------
The measured figures (device, command, table) are recorded in README.md, not here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import traceback
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A benchmark needs no weights: never try to download one (random init stands in).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ALL_METHODS = ("resnet50", "dct_cnn", "hifi_net", "defl", "dna_det", "repmix",
               "patch_forensics", "patchcraft", "ssp", "fsd", "clip_lr")
NUM_CLASSES = 23  # the official classes
# Table 6's coarse levels: generated/real, commercial/open-source/real, the architecture group.
LEVEL_SIZES = (2, 3, 6)


# ---------------------------------------------------------------------------------------------
# Timing and cost analysis.


def _median_seconds(step: Callable[[], Any], warmup: int, steps: int) -> float:
  """The median seconds of `steps` calls of `step` (each waits for its result), after `warmup`."""
  for _ in range(warmup):
    step()
  times = []
  for _ in range(max(steps, 1)):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _flops(compiled) -> float | None:
  """Flops per call from XLA's cost analysis: a dict, or a list of dicts in older jax."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # some backends do not implement it
    return None
  if analysis is None:
    return None
  if isinstance(analysis, dict):
    analysis = [analysis]
  total = sum(float(a.get("flops", 0.0)) for a in analysis if a)
  return total if total > 0 else None


def _compile(jitted, *args):
  """(compiled program, seconds to lower and compile it)."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def _program(name: str, batch: int, seconds: float, compile_s: float,
             flops: float | None) -> dict[str, Any]:
  """A timed program's record: rates from the median step (FLOP/s: set_peak, at the end)."""
  return {"what": name, "batch": batch, "median_step_s": seconds,
          "images_per_s": batch / seconds, "compile_s": compile_s, "flops_per_step": flops}


def measure_peak(n: int, warmup: int, steps: int) -> dict[str, Any]:
  """FLOP/s of a jitted float32 n x n @ n x n matmul (2 n^3 flops) on the default device, from
  the fastest of several runs (a peak, not a typical time: other work on the machine only slows
  it down)."""
  import jax
  import jax.numpy as jnp

  keys = jax.random.split(jax.random.key(0))
  a = jax.random.normal(keys[0], (n, n), jnp.float32)
  b = jax.random.normal(keys[1], (n, n), jnp.float32)
  compiled, _ = _compile(jax.jit(jnp.matmul), a, b)
  run = lambda: jax.block_until_ready(compiled(a, b))
  for _ in range(max(warmup, 1)):
    run()
  times = []
  for _ in range(max(steps, 5)):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  seconds = min(times)
  return {"n": n, "dtype": "float32", "best_s": seconds, "median_s": statistics.median(times),
          "flops_per_s": 2.0 * n**3 / seconds}


def set_peak(rows: list[dict[str, Any]], peak: float) -> None:
  """Adds achieved FLOP/s and the percentage of `peak` to every timed program of `rows`."""
  for row in rows:
    records = [row.get("train"), row.get("eval"), *row.get("frozen", [])]
    for record in records:
      if record and record.get("flops_per_step"):
        achieved = record["flops_per_step"] / record["median_step_s"]
        record["achieved_flops_per_s"] = achieved
        record["percent_of_peak"] = 100.0 * achieved / peak


# ---------------------------------------------------------------------------------------------
# Synthetic inputs.


def _image_shape(spec: str) -> Any:
  """The shape of what the transform makes of one image (a tuple, or a dict of tuples for several
  views), from a synthetic 256x256 image run through it."""
  from iab_jax.data import transforms

  made = transforms.parse(spec)(np.full((256, 256, 3), 127, np.uint8), np.random.default_rng(0))
  if isinstance(made, dict):
    return {k: tuple(v.shape) for k, v in made.items()}
  return tuple(made.shape)


def _shape_text(shape) -> str:
  if isinstance(shape, dict):
    return ", ".join(f"{k} {_shape_text(v)}" for k, v in shape.items())
  return "x".join(map(str, shape))


def _noise(rng: np.random.Generator, lead: tuple[int, ...], shape) -> Any:
  if isinstance(shape, dict):
    return {k: _noise(rng, lead, v) for k, v in shape.items()}
  return rng.standard_normal((*lead, *shape)).astype(np.float32)


def _levels(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """(N, 4) int32 valid Table-6 levels: random coarse levels, level 3 = the label."""
  coarse = [rng.integers(0, k, labels.shape[0]) for k in LEVEL_SIZES]
  return np.stack(coarse + [labels], axis=1).astype(np.int32)


def synthetic_batch(method, frozen, n: int, image_shape, rng: np.random.Generator,
                    with_images: bool = True, partners: int = 0) -> dict[str, Any]:
  """"label", "levels", "image" (unless not with_images), "features" for each of `frozen`
  (the method's FrozenFeatures), and `partners` partner images, labels and levels."""
  labels = rng.integers(0, method.num_classes, n).astype(np.int32)
  batch: dict[str, Any] = {"label": labels, "levels": _levels(labels, rng)}
  if with_images:
    batch["image"] = _noise(rng, (n,), image_shape)
  if partners:
    partner_labels = rng.integers(0, method.num_classes, (n, partners)).astype(np.int32)
    batch.update(partner_image=_noise(rng, (n, partners), image_shape),
                 partner_label=partner_labels,
                 partner_levels=_levels(partner_labels.reshape(-1), rng).reshape(n, partners, 4))
  if frozen:
    batch["features"] = {f.name: rng.standard_normal((n, f.dim)).astype(np.float32)
                         for f in frozen}
  return batch


def load_config(name: str, size: str):
  arg = "standard" if size == "full" else "standard,runlocal"
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  config.random_init_fallback = True  # an absent weights file: random initialisation
  return config, arg


# ---------------------------------------------------------------------------------------------
# One method.


def _frozen_programs(specs, batch_size: int, args, rng) -> list[dict[str, Any]]:
  """Each frozen network's extraction (its apply, jitted) on images of its transform's size."""
  import jax

  records = []
  for spec in specs:
    shape = _image_shape(spec.transform)
    start = time.perf_counter()
    apply, variables = spec.build()
    build_s = time.perf_counter() - start
    images = jax.device_put(rng.standard_normal((batch_size, *shape)).astype(np.float32))
    compiled, compile_s = _compile(jax.jit(apply), variables, images)
    seconds = _median_seconds(lambda: jax.block_until_ready(compiled(variables, images)),
                              args.warmup, args.steps)
    record = _program(f"frozen:{spec.name}", batch_size, seconds, compile_s, _flops(compiled))
    record.update(input="x".join(map(str, shape)), dim=spec.dim, build_s=build_s,
                  identity=spec.identity)
    records.append(record)
    del compiled, variables, apply
  return records


def _train_program(method, phase, batch_np, args) -> tuple[dict[str, Any], Any]:
  """The supervised loop's jitted step of `phase`; returns its record and the trained
  variables."""
  import jax
  import jax.numpy as jnp

  from iab_jax import optimizers, sharding
  from iab_jax.trainers import supervised

  mesh = sharding.make_mesh()
  images = jax.tree.map(lambda x: jnp.asarray(x[:1]), batch_np["image"])
  variables = dict(method.init(jax.random.key(0), images, pretrained=False))
  variables = sharding.replicate(variables, mesh)
  steps_per_epoch = 100  # only shapes the schedule, which does not change the step's cost
  tx = optimizers.make(phase.optimizer, steps_per_epoch, phase.num_epochs * steps_per_epoch)
  repl = sharding.replicated(mesh)
  params = variables.pop("params")
  state = {"params": params, "model_state": variables,
           "opt_state": jax.jit(tx.init, out_shardings=repl)(params),
           "step": sharding.replicate(np.int32(0), mesh)}
  step_fn = supervised.make_train_step(method, tx, phase, mesh)
  key = sharding.replicate(jax.random.key_data(jax.random.key(1)), mesh)
  batch = sharding.global_batch(batch_np, mesh)
  compiled, compile_s = _compile(step_fn, state, batch, key)
  holder = {"state": state}

  def step():
    holder["state"], measured = compiled(holder["state"], batch, key)
    jax.block_until_ready((holder["state"], measured))

  seconds = _median_seconds(step, args.warmup, args.steps)
  record = _program(f"train:{phase.name}", batch_np["label"].shape[0], seconds, compile_s,
                    _flops(compiled))
  record["optimizer"] = dict(phase.optimizer).get("name", "adam")
  state = holder["state"]
  return record, {"params": state["params"], **state["model_state"]}


def _eval_program(method, variables, batch_np, args) -> dict[str, Any]:
  import jax

  batch = jax.device_put({k: v for k, v in batch_np.items() if k in ("image", "features")})
  # Every prediction rule the method returns is computed, as the evaluator does.
  compiled, compile_s = _compile(jax.jit(method.predict), variables, batch)
  seconds = _median_seconds(lambda: jax.block_until_ready(compiled(variables, batch)),
                            args.warmup, args.steps)
  return _program("eval:predict", batch_np["label"].shape[0], seconds, compile_s,
                  _flops(compiled))


def _fit_program(method, specs, args) -> dict[str, Any]:
  """The linear probe's fit on --fit-examples random features, twice: cold (with compilation)
  and warm. Random data need not take as many L-BFGS iterations as real features do, so the
  seconds per iteration are what carries over to a real fit."""
  import jax

  rng = np.random.default_rng(2)
  n = args.fit_examples
  features = {f.name: rng.standard_normal((n, f.dim)).astype(np.float32)
              for f in specs}
  labels = rng.integers(0, method.num_classes, n).astype(np.int32)
  variables = method.init(jax.random.key(0), None, pretrained=False)
  runs = []
  for _ in range(2):
    start = time.perf_counter()
    fitted, report = method.fit(variables, features, labels)
    jax.block_until_ready(fitted)
    runs.append((time.perf_counter() - start, report))
  (cold, _), (warm, report) = runs
  return {"what": "fit", "examples": n, "dims": {k: v.shape[1] for k, v in features.items()},
          "cold_s": cold, "warm_s": warm, "compile_s": max(cold - warm, 0.0),
          "report": {k: v for k, v in report.items() if isinstance(v, (int, float, bool, str))}}


def bench_method(name: str, args) -> dict[str, Any]:
  import jax

  from iab_jax import methods

  row: dict[str, Any] = {"method": name, "display_name": methods.display_name(name)}
  config, arg = load_config(name, args.size)
  row["config"] = f"configs/{name}.py:{arg}"
  cls = methods.get(name)
  cls.check_config(config)
  method = cls(config, classes=[f"c{i}" for i in range(NUM_CLASSES)])
  batch_size = args.batch or int(config.input.batch_size)
  train_spec, eval_spec = method.transforms()
  # The last phase is the attribution one (DNA-Det's first is a pretext task of the same cost).
  phase = method.phases()[-1]
  train_spec = phase.transform or train_spec
  train_shape, eval_shape = _image_shape(train_spec), _image_shape(eval_spec)
  row.update(trainer=method.trainer, batch=batch_size, input=_shape_text(train_shape),
             eval_input=_shape_text(eval_shape), train_transform=train_spec)
  rng = np.random.default_rng(0)

  specs = method.frozen_features()
  frozen = _frozen_programs(specs, batch_size, args, rng)
  row["frozen"] = frozen
  if method.trainer == "supervised":
    train_batch = synthetic_batch(method, specs, batch_size, train_shape, rng,
                                  partners=phase.partners)
    row["train"], variables = _train_program(method, phase, train_batch, args)
    del train_batch
  elif method.trainer == "linear_probe":
    # No SGD step: the training pass is the frozen extraction; the fit is timed separately.
    if not frozen:
      raise ValueError(f"{name}: a linear_probe method without frozen features")
    row["train"] = {**frozen[0], "what": f"train = frozen extraction ({frozen[0]['what']})"}
    row["fit"] = _fit_program(method, specs, args)
    variables = method.init(jax.random.key(0), None, pretrained=False)
  else:
    raise ValueError(f"{name}: unknown trainer {method.trainer!r}")

  eval_batch = synthetic_batch(method, specs, batch_size, eval_shape, rng,
                               with_images=method.uses_images)
  row["eval"] = _eval_program(method, variables, eval_batch, args)
  if frozen:
    per_image = 1.0 / row["eval"]["images_per_s"] + sum(1.0 / f["images_per_s"] for f in frozen)
    row["eval_uncached_images_per_s"] = 1.0 / per_image
  if name in TORCH_REFERENCES:
    row["torch"] = bench_torch(name, config, batch_size, train_shape, eval_shape, args)
    row["torch"]["ratio_train"] = row["train"]["images_per_s"] / row["torch"]["train_images_per_s"]
    row["torch"]["ratio_eval"] = row["eval"]["images_per_s"] / row["torch"]["eval_images_per_s"]
  return row


# ---------------------------------------------------------------------------------------------
# PyTorch references: the same networks written the obvious PyTorch way.


def _torch_resnet(stage_sizes, width: int):
  """torchvision's ResNet with bottlenecks, its stem and stage widths scaled from 64 to `width`
  (the same network as iab_jax.models.resnet at that width); ResNet-50 itself when unscaled."""
  import torch
  import torchvision
  from torchvision.models import resnet as tv_resnet

  if tuple(stage_sizes) == (3, 4, 6, 3) and width == 64:
    return torchvision.models.resnet50(weights=None)

  class Scaled(tv_resnet.ResNet):

    def __init__(self):
      torch.nn.Module.__init__(self)
      self._norm_layer = torch.nn.BatchNorm2d
      self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
      self.conv1 = torch.nn.Conv2d(3, width, 7, 2, 3, bias=False)
      self.bn1 = torch.nn.BatchNorm2d(width)
      self.relu = torch.nn.ReLU(inplace=True)
      self.maxpool = torch.nn.MaxPool2d(3, 2, 1)
      for i, blocks in enumerate(stage_sizes):
        setattr(self, f"layer{i + 1}", self._make_layer(
            tv_resnet.Bottleneck, width * 2**i, blocks, stride=1 if i == 0 else 2))
      self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
      self.fc = torch.nn.Identity()

  return Scaled()


def torch_fsd(config) -> dict[str, Any]:
  """FSD's architecture: the ResNet with fc = Sequential(Linear, Linear), image logits."""
  import torch

  m = config.model
  stage_sizes, width = tuple(m.stage_sizes), int(m.width)
  embed_dim = int(m.embed_dim)
  model = _torch_resnet(stage_sizes, width)
  model.fc = torch.nn.Sequential(torch.nn.Linear(32 * width, embed_dim),
                                 torch.nn.Linear(embed_dim, NUM_CLASSES))
  return {"model": model, "loss": torch.nn.functional.cross_entropy,
          "predict": lambda logits: logits,
          "architecture": f"ResNet stages {stage_sizes} width {width}, fc = Linear("
                          f"{32 * width}, {embed_dim}), Linear({embed_dim}, {NUM_CLASSES})"}


def torch_patch_forensics(config) -> dict[str, Any]:
  """Xception's stem and blocks 1-2 (Cadene's layers: unpadded stem convs, separable convs as a
  grouped 3x3 + 1x1, max-pool 3 stride 2 padding 1, 1x1 skip + BN), a 1x1 conv to the classes:
  patch logits (N, C, h, w), cross-entropy on every patch, the patch softmax averaged to
  predict."""
  import torch
  from torch import nn

  if config.model.truncate_after != "block2":
    raise ValueError(f"torch PatchForensics: truncate_after={config.model.truncate_after!r}; "
                     "the reference is the official network, cut after block2")

  def separable(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=False))

  class Block(nn.Module):
    """reps 2, stride 2, grow_first: both separable convs at the output width."""

    def __init__(self, cin, cout, start_with_relu):
      super().__init__()
      rep = [nn.ReLU(), separable(cin, cout), nn.BatchNorm2d(cout),
             nn.ReLU(), separable(cout, cout), nn.BatchNorm2d(cout), nn.MaxPool2d(3, 2, 1)]
      self.rep = nn.Sequential(*rep[0 if start_with_relu else 1:])
      self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
      return self.rep(x) + self.skip(x)

  model = nn.Sequential(
      nn.Conv2d(3, 32, 3, 2, 0, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
      nn.Conv2d(32, 64, 3, 1, 0, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
      Block(64, 128, start_with_relu=False), Block(128, 256, start_with_relu=True),
      nn.Conv2d(256, NUM_CLASSES, 1))

  def patch_loss(logits, labels):  # the image's label on every patch
    n, _, h, w = logits.shape
    return nn.functional.cross_entropy(logits, labels[:, None, None].expand(n, h, w))

  return {"model": model, "loss": patch_loss,
          "predict": lambda logits: torch.softmax(logits, 1).mean((2, 3)),
          "architecture": f"Xception stem + blocks 1-2 + Conv2d(256, {NUM_CLASSES}, 1), "
                          "per-patch CE"}


def torch_patchcraft(config) -> dict[str, Any]:
  """PatchCraft: the fixed 30-filter 5x5 high-pass bank as one conv over the 3 channels
  (iab_jax.models.patchcraft's filter values), group means, the per-image median + 2/255
  binarisation, a shared conv 1 -> width + BN + Hardtanh on rich and on poor, rich - poor, then
  the classifier (conv + BN + ReLU stages, AvgPool2d(2) between, GAP, Linear)."""
  import torch
  from torch import nn

  from iab_jax.models import patchcraft as ours

  groups = list(ours.FILTER_GROUPS.values())
  bank = torch.tensor(np.concatenate(groups), dtype=torch.float32)[:, None].repeat(1, 3, 1, 1)
  width = int(config.model.get("width", 32))
  stage_convs = tuple(int(n) for n in config.model.get("stage_convs", (4, 2, 2, 2)))

  class Net(nn.Module):

    def __init__(self):
      super().__init__()
      self.register_buffer("bank", bank)
      self.conv = nn.Conv2d(1, width, 3, padding=1)
      self.bn = nn.BatchNorm2d(width)
      layers = []
      for stage, convs in enumerate(stage_convs):
        if stage:
          layers.append(nn.AvgPool2d(2))
        for _ in range(convs):
          layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
      layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, NUM_CLASSES)]
      self.classifier = nn.Sequential(*layers)

    def texture(self, x):
      with torch.no_grad():  # fixed filters and a threshold: nothing to differentiate
        responses = nn.functional.conv2d(x, self.bank, padding=2)
        gray = sum(r.mean(1) for r in responses.split([len(g) for g in groups], 1)) / 7.0
        threshold = gray.flatten(1).median(1).values + 2.0 / 255.0
        binary = (gray > threshold[:, None, None]).float()[:, None]
      return nn.functional.hardtanh(self.bn(self.conv(binary)))

    def forward(self, rich, poor):
      return self.classifier(self.texture(rich) - self.texture(poor))

  return {"model": Net(), "loss": nn.functional.cross_entropy,
          "predict": lambda logits: torch.softmax(logits, 1),
          "architecture": f"30-filter high-pass bank, conv 1->{width}, classifier width {width} "
                          f"stages {stage_convs}"}


# Registry name -> builder of the same network "the obvious PyTorch way": config -> {"model" (an
# nn.Module taking the image, or the views of a dict-shaped input as keyword arguments), "loss"
# (outputs, labels) -> scalar, "predict" outputs -> what evaluation computes, "architecture"}.
TORCH_REFERENCES: dict[str, Callable[[Any], dict[str, Any]]] = {
    "fsd": torch_fsd,
    "patch_forensics": torch_patch_forensics,
    "patchcraft": torch_patchcraft,
}


def bench_torch(name: str, config, batch_size: int, train_shape, eval_shape,
                args) -> dict[str, Any]:
  """TORCH_REFERENCES[name] in PyTorch: train (forward + backward + Adam step, train mode) and
  eval (eval mode, no_grad, its predict) images/s, channels-last, on CUDA when torch sees one."""
  import torch

  torch.set_num_threads(os.cpu_count() or 1)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  reference = TORCH_REFERENCES[name](config)
  model = reference["model"].to(device).to(memory_format=torch.channels_last)
  optimizer = torch.optim.Adam(model.parameters(), lr=float(config.optimizer.learning_rate))
  rng = np.random.default_rng(0)

  def images(shape):
    if isinstance(shape, dict):
      return {k: images(v) for k, v in shape.items()}
    x = torch.from_numpy(rng.standard_normal((batch_size, *shape)).astype(np.float32))
    return x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last).to(device)

  train_x, eval_x = images(train_shape), images(eval_shape)
  y = torch.from_numpy(rng.integers(0, NUM_CLASSES, batch_size)).long().to(device)
  forward = lambda x: model(**x) if isinstance(x, dict) else model(x)

  def sync():
    if device.type == "cuda":
      torch.cuda.synchronize()

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    reference["loss"](forward(train_x), y).backward()
    optimizer.step()
    sync()

  def eval_step():
    with torch.no_grad():
      reference["predict"](forward(eval_x))
    sync()

  model.train()
  train_s = _median_seconds(train_step, max(args.warmup, 1), args.steps)
  model.eval()
  eval_s = _median_seconds(eval_step, max(args.warmup, 1), args.steps)
  device_name = (torch.cuda.get_device_name() if device.type == "cuda"
                 else f"cpu, {torch.get_num_threads()} threads")
  return {"device": f"torch {torch.__version__}, {device_name}", "batch": batch_size,
          "architecture": reference["architecture"],
          "train_median_step_s": train_s, "train_images_per_s": batch_size / train_s,
          "eval_median_step_s": eval_s, "eval_images_per_s": batch_size / eval_s}


# ---------------------------------------------------------------------------------------------
# Output.


def _num(value, fmt: str) -> str:
  return "-" if value is None else format(value, fmt)


def _print_table(rows: list[dict[str, Any]]) -> None:
  # Several views (PatchCraft's rich and poor) print as "poor 256x256x3, rich ...": the input
  # column takes the widest; the method column the longest name.
  mw = max([15] + [len(r["method"]) for r in rows])
  iw = max([11] + [len(r.get("input", "")) for r in rows])
  header = (f"{'method':{mw}s} {'batch':>5s} {'input':>{iw}s} {'train img/s':>11s} {'ms/step':>8s} "
            f"{'compile s':>9s} {'GFLOP/step':>10s} {'%peak':>6s} {'eval img/s':>10s} "
            f"{'compile s':>9s} {'%peak':>6s} {'frozen img/s':>12s} {'uncached':>9s}")
  print(header)
  print("-" * len(header))
  for row in rows:
    if "error" in row:
      print(f"{row['method']:{mw}s} FAILED: {row['error']}")
      continue
    train, ev = row["train"], row["eval"]
    frozen = row["frozen"]
    frozen_text = "/".join(f"{f['images_per_s']:.2f}" for f in frozen) or "-"
    gflop = train.get("flops_per_step")
    print(f"{row['method']:{mw}s} {row['batch']:5d} {row['input']:>{iw}s} "
          f"{train['images_per_s']:11.2f} {train['median_step_s'] * 1000:8.1f} "
          f"{train['compile_s']:9.1f} {_num(gflop and gflop / 1e9, '10.2f'):>10s} "
          f"{_num(train.get('percent_of_peak'), '6.1f'):>6s} {ev['images_per_s']:10.2f} "
          f"{ev['compile_s']:9.1f} {_num(ev.get('percent_of_peak'), '6.1f'):>6s} "
          f"{frozen_text:>12s} {_num(row.get('eval_uncached_images_per_s'), '9.2f'):>9s}")
  notes = []
  for row in rows:
    if "error" in row:
      continue
    if row["trainer"] == "linear_probe":
      notes.append(f"{row['method']}: train = the frozen network's feature extraction (no SGD "
                   "step); the fit is below")
    for f in row["frozen"]:
      notes.append(f"{row['method']} {f['what']}: {f['images_per_s']:.2f} images/s at "
                   f"{f['input']} -> {f['dim']}-d ({f['median_step_s'] * 1000:.1f} ms/step, "
                   f"compile {f['compile_s']:.1f} s, "
                   f"{_num(f.get('percent_of_peak'), '.1f')}% of peak; {f['identity'][:60]})")
    if "fit" in row:
      fit = row["fit"]
      report = fit["report"]
      notes.append(f"{row['method']} fit: logistic regression on {fit['examples']} random "
                   f"examples ({', '.join(f'{k} {v}-d' for k, v in fit['dims'].items())}): "
                   f"{fit['warm_s']:.2f} s warm, {fit['cold_s']:.2f} s with compilation; "
                   f"{report.get('iterations', '?')} iterations"
                   + (f" ({1000 * fit['warm_s'] / report['iterations']:.1f} ms each)"
                      if report.get("iterations") else "")
                   + f", converged {report.get('converged', '?')}")
    if "torch" in row:
      t = row["torch"]
      notes.append(f"{row['method']} vs PyTorch ({t['architecture']}; {t['device']}): train "
                   f"{t['train_images_per_s']:.2f} images/s (ratio ours/torch "
                   f"{t['ratio_train']:.2f}x), eval {t['eval_images_per_s']:.2f} images/s "
                   f"(ratio {t['ratio_eval']:.2f}x)")
  if notes:
    print()
    for note in notes:
      print("  " + note)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--methods", default=",".join(ALL_METHODS),
                      help="comma-separated registry names (default: all six)")
  parser.add_argument("--size", default="full", choices=("full", "small"),
                      help="full: each config's 'standard' (the paper's sizes); small: "
                           "'standard,runlocal' (shrunk networks)")
  parser.add_argument("--batch", type=int, default=0,
                      help="batch size (default: each config's input.batch_size)")
  parser.add_argument("--steps", type=int, default=5, help="timed steps (the median is kept)")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
  parser.add_argument("--fit-examples", type=int, default=4096,
                      help="examples for the linear-probe fit's timing")
  parser.add_argument("--peak-size", type=int, default=0,
                      help="N of the peak matmul (default 2048 on a CPU, 8192 otherwise)")
  parser.add_argument("--out", default="", help="write the rows as JSON to this file")
  args = parser.parse_args(argv)
  names = [n.strip() for n in args.methods.split(",") if n.strip()]

  import jax

  device = jax.devices()[0]
  print(f"device: {jax.device_count()} x {device.device_kind} ({jax.default_backend()}), "
        f"{os.cpu_count()} CPUs; jax {jax.__version__}")
  print(f"size {args.size} ({'standard' if args.size == 'full' else 'standard,runlocal'}), "
        f"batch {args.batch or 'per config'}, median of {args.steps} steps after {args.warmup} "
        "warm-up; synthetic inputs; random init (absent weights files: random_init_fallback)")
  n = args.peak_size or (2048 if jax.default_backend() == "cpu" else 8192)
  peak = measure_peak(n, args.warmup, args.steps)
  print(f"peak: float32 {n}x{n} matmul, {peak['flops_per_s'] / 1e9:.1f} GFLOP/s "
        f"({peak['best_s'] * 1000:.1f} ms, the fastest run)", flush=True)

  rows = []
  for name in names:
    print(f"... {name}", flush=True)
    start = time.perf_counter()
    try:
      row = bench_method(name, args)
    except Exception as e:  # a method still in progress: report it, go on
      lines = traceback.format_exception_only(type(e), e)
      row = {"method": name, "error": " ".join(lines[-1].strip().split())[:300],
             "traceback": traceback.format_exc()}
      print(f"    {name} failed: {row['error']}", flush=True)
    row["seconds"] = time.perf_counter() - start
    rows.append(row)
    jax.clear_caches()

  # The peak again, after the methods: the faster of the two counts (a busy machine slows one).
  again = measure_peak(n, args.warmup, args.steps)
  if again["flops_per_s"] > peak["flops_per_s"]:
    peak = again
  set_peak(rows, peak["flops_per_s"])
  print(f"peak (the faster of before and after): {peak['flops_per_s'] / 1e9:.1f} GFLOP/s")
  print()
  _print_table(rows)
  if args.out:
    result = {"device": {"kind": device.device_kind, "backend": jax.default_backend(),
                         "count": jax.device_count(), "cpus": os.cpu_count(),
                         "jax": jax.__version__},
              "args": vars(args), "peak": peak, "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1, default=str)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
