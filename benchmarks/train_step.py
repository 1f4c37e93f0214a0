"""ResNet-50 training throughput: our jitted step vs the obvious PyTorch loop, in one run.

Both sides train torchvision's ResNet-50 architecture with a linear head over the classes,
softmax cross-entropy and Adam(1e-3) on the same random batch, at the same resolution and
precision, on this machine's default device (CPU here; a GPU when JAX and torch see one).
Ours is exactly the step the training loop runs (iab_jax.trainers.supervised.make_train_step
over a data-parallel mesh of all devices); PyTorch's is torchvision.models.resnet50 in train
mode with torch.optim.Adam, the official code's kind of loop (channels-last where it helps).

  python benchmarks/train_step.py                        # CPU defaults: batch 8 at 224^2
  python benchmarks/train_step.py --batch 32 --size 256  # the paper's setting (on a GPU)
  python benchmarks/train_step.py --dtype bfloat16       # mixed precision on both sides

Prints images/s for each and the ratio (ours / PyTorch). Needs torch and torchvision
(`pip install -e '.[reference]'`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _time(step, warmup: int, steps: int) -> float:
  """Seconds per step, after `warmup` steps (compilation, allocator warm-up)."""
  for _ in range(warmup):
    step()
  start = time.perf_counter()
  for _ in range(steps):
    step()
  return (time.perf_counter() - start) / steps


def ours(images: np.ndarray, labels: np.ndarray, num_classes: int, dtype: str):
  import jax
  import jax.numpy as jnp
  import ml_collections

  from iab_jax import methods, optimizers, sharding
  from iab_jax.trainers import supervised

  config = ml_collections.ConfigDict({
      "model": {"name": "resnet", "dtype": dtype},
      "optimizer": {"name": "adam", "learning_rate": 1e-3}, "num_epochs": 1})
  method = methods.get("resnet50")(config, [str(i) for i in range(num_classes)])
  mesh = sharding.make_mesh()
  variables = sharding.replicate(method.init(jax.random.key(0), jnp.asarray(images[:1])), mesh)
  phase = method.phases()[0]
  tx = optimizers.make(phase.optimizer, 1, 1)
  repl = sharding.replicated(mesh)
  params = variables.pop("params")
  state = {"params": params, "model_state": variables,
           "opt_state": jax.jit(tx.init, out_shardings=repl)(params),
           "step": sharding.replicate(np.int32(0), mesh)}
  step_fn = supervised.make_train_step(method, tx, phase, mesh)
  key = sharding.replicate(jax.random.key_data(jax.random.key(1)), mesh)
  batch = sharding.global_batch({"image": images, "label": labels}, mesh)
  holder = {"state": state}

  def step():
    holder["state"], measured = step_fn(holder["state"], batch, key)
    jax.block_until_ready(measured["loss"])

  device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
  return step, device


def pytorch(images: np.ndarray, labels: np.ndarray, num_classes: int, dtype: str):
  import torch
  import torchvision

  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  model = torchvision.models.resnet50(weights=None, num_classes=num_classes).to(device)
  model = model.to(memory_format=torch.channels_last)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  x, y = x.to(device), torch.from_numpy(labels).long().to(device)
  autocast = dtype == "bfloat16"
  model.train()

  def step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
      loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
      torch.cuda.synchronize()

  if device.type == "cuda":
    name = torch.cuda.get_device_name()
  else:
    name = f"cpu ({torch.get_num_threads()} threads)"
  return step, f"torch {torch.__version__}, {name}"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--classes", type=int, default=32)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  args = parser.parse_args(argv)

  rng = np.random.default_rng(0)
  images = rng.standard_normal((args.batch, args.size, args.size, 3)).astype(np.float32)
  labels = rng.integers(0, args.classes, args.batch).astype(np.int32)
  print(f"ResNet-50 train step, batch {args.batch} at {args.size}x{args.size}, {args.dtype}, "
        f"Adam, {args.classes} classes")
  rows = []
  for name, make in (("iab_jax (jax.jit)", ours), ("PyTorch torchvision", pytorch)):
    step, device = make(images, labels, args.classes, args.dtype)
    seconds = _time(step, args.warmup, args.steps)
    rows.append(args.batch / seconds)
    print(f"  {name:22s} {args.batch / seconds:8.2f} images/s  ({seconds * 1000:.0f} ms/step; "
          f"{device})")
  print(f"  ratio ours / PyTorch: {rows[0] / rows[1]:.2f}x")


if __name__ == "__main__":
  main()
