"""Each Flax backbone against its PyTorch reference: parameter count and forward images/s.

Both sides are built with random weights at the public checkpoint's architecture and input size,
in eval mode, fp32, on this machine's default device, with the same batch:

  python benchmarks/backbones.py                         # every backbone, batch 4
  python benchmarks/backbones.py --only resnet50 vgg16   # a subset
  python benchmarks/backbones.py --batch 32 --steps 20   # on a GPU

Needs the reference libraries (`pip install -e '.[reference]'`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _torchvision(name):
  import torchvision
  return getattr(torchvision.models, name)(weights=None)


def _timm(name):
  import timm
  return timm.create_model(name, pretrained=False)


def _clip_l14():
  import transformers
  cfg = transformers.CLIPVisionConfig(hidden_size=1024, intermediate_size=4096,
                                      num_hidden_layers=24, num_attention_heads=16, patch_size=14,
                                      image_size=224, projection_dim=768, hidden_act="quick_gelu")
  model = transformers.CLIPVisionModelWithProjection(cfg)
  return lambda x: model(pixel_values=x).image_embeds, model


def _open_clip(name):
  import open_clip
  return open_clip.create_model(name, pretrained=None).visual


def _dncnn():
  from deepinv.models import DnCNN
  return DnCNN(pretrained=None)


# name: (our module, our Model kwargs, input size, reference builder)
BACKBONES = {
    "resnet50": ("resnet", dict(num_classes=1000), 224, lambda: _torchvision("resnet50")),
    "legacy_xception": ("xception", dict(num_classes=1000), 299, lambda: _timm("legacy_xception")),
    "convnext_small": ("convnext", dict(num_classes=1000), 224, lambda: _timm("convnext_small")),
    "hrnet_w18": ("hrnet", dict(num_classes=1000), 224, lambda: _timm("hrnet_w18")),
    "vgg16": ("vgg", dict(num_classes=1000), 224, lambda: _torchvision("vgg16")),
    "alexnet": ("alexnet", dict(num_classes=1000), 224, lambda: _torchvision("alexnet")),
    "clip_vit_l14": ("clip_vit", dict(num_classes=0), 224, _clip_l14),
    "clip_vit_h14": ("clip_vit", dict(num_classes=0, width=1280, layers=32, heads=16,
                                      embed_dim=1024, activation="gelu"), 224,
                     lambda: _open_clip("ViT-H-14")),
    "clip_rn50x16": ("clip_resnet", dict(num_classes=0), 384, lambda: _open_clip("RN50x16")),
    "dncnn": ("dncnn", dict(num_classes=0), 256, _dncnn),
}


def _seconds_per_step(step, warmup, steps):
  for _ in range(warmup):
    step()
  start = time.perf_counter()
  for _ in range(steps):
    step()
  return (time.perf_counter() - start) / steps


def ours(module_name, kwargs, images):
  import jax

  from iab_jax import models

  model = models.get(module_name).Model(**kwargs)
  variables = jax.jit(lambda k: model.init(k, images[:1], train=False))(jax.random.key(0))
  count = sum(x.size for x in jax.tree.leaves(variables["params"]))
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
  x = jax.device_put(images)
  return count, lambda: jax.block_until_ready(forward(variables, x))


def pytorch(build, images):
  import torch

  built = build()
  fn, module = built if isinstance(built, tuple) else (built, built)
  module.eval()
  count = sum(p.numel() for p in module.parameters())
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

  def step():
    with torch.no_grad():
      fn(x)

  return count, step


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", nargs="+", choices=sorted(BACKBONES))
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=1)
  args = parser.parse_args(argv)
  import jax
  import torch

  print(f"forward, eval mode, fp32, batch {args.batch}; jax on {jax.devices()[0].device_kind}, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads")
  print(f"{'backbone':16s} {'params (ours)':>14s} {'params (ref)':>14s} {'ours img/s':>11s} "
        f"{'ref img/s':>10s} {'ratio':>6s}")
  for name in args.only or BACKBONES:
    module_name, kwargs, size, build = BACKBONES[name]
    images = np.random.default_rng(0).standard_normal(
        (args.batch, size, size, 3)).astype(np.float32)
    n_ours, step_ours = ours(module_name, kwargs, images)
    t_ours = _seconds_per_step(step_ours, args.warmup, args.steps)
    del step_ours
    n_ref, step_ref = pytorch(build, images)
    t_ref = _seconds_per_step(step_ref, args.warmup, args.steps)
    print(f"{name:16s} {n_ours:14,d} {n_ref:14,d} {args.batch / t_ours:11.2f} "
          f"{args.batch / t_ref:10.2f} {t_ref / t_ours:6.2f}", flush=True)


if __name__ == "__main__":
  main()
