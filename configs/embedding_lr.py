"""Features+LR: a logistic regression on a frozen backbone's features (the OFA issue's baseline).

  python -m iab_jax.main --config configs/embedding_lr.py:standard --workdir runs/elr_resnet
  python -m iab_jax.main --config configs/embedding_lr.py:standard,backbone=clip_vit \
      --workdir runs/elr_clip
  python -m iab_jax.main --config configs/embedding_lr.py:openset0,backbone=clip_vit --workdir ...
  python -m iab_jax.main --config configs/embedding_lr.py:standard,minibench --workdir /tmp/elr_mb

The backbone is config.model.backbone, chosen by the config arg's own option `backbone=NAME`
(default resnet50), which sets the backbone together with everything that depends on it (its
architecture fields, weights, input transform):

  resnet50  torchvision's ImageNet ResNet-50 (`resnet50.tv_in1k`), the pooled 2048-d feature;
            input resize(256) | central_crop(224) | ImageNet mean/std, as the weights were trained
  clip_vit  OpenAI's CLIP ViT-L/14 (`clip_vit_l14_openai`, transformers' safetensors), the
            projected 768-d image embedding; input CLIP's own (shorter side 224 bicubic, center
            crop 224, CLIP's mean/std), configs/clip_lr.py's CLIP_TRANSFORM

Overriding `--config.model.backbone=clip_vit` alone would keep the ResNet's fields and transform;
check_config stops such a run and names the option. Any other clip_vit tower (e.g. CLIP-LR's
ViT-H/14) is a matter of --config.model.* overrides after `backbone=clip_vit`.

The head is CLIP-LR's: StandardScaler + multinomial L2 logistic regression (C=1, L-BFGS, at most
1000 iterations, gradient tolerance 1e-4; scikit-learn's defaults), fitted once on the training
split's cached features by the linear_probe trainer. There is no official code of this baseline:
`official` changes only what it changes for every method (configs/common.py).

`runlocal` and `minibench` shrink the backbone through config values at 64x64 input and initialise
it randomly (the pretrained weights do not fit it): ResNet one block per stage, width 16 (runlocal,
512-d features) or 32 (minibench, 1024-d); CLIP ViT as configs/clip_lr.py's presets (runlocal:
width 64, 2 blocks, 16-px patches, 64-d; minibench: width 128, 2 blocks, 4-px patches, 256-d). Their
features are a random network's, so the mini-bench measures a linear probe on random features.
"""

from configs import clip_lr as clip_lr_config
from configs import common

BACKBONES = ("resnet50", "clip_vit")
RESNET_TRANSFORM = "resize(256)|central_crop(224)|normalize('imagenet')"
TRANSFORMS = {"resnet50": RESNET_TRANSFORM, "clip_vit": clip_lr_config.CLIP_TRANSFORM}
SMALL_TRANSFORMS = {"resnet50": "resize(64)|central_crop(64)|normalize('imagenet')",
                    "clip_vit": "resize(64, method='bicubic')|central_crop(64)|normalize('clip')"}


def split_backbone(arg: str) -> tuple[str, str]:
  """'standard,backbone=clip_vit,runlocal' -> ('standard,runlocal', 'clip_vit'); the option is
  this config's own, so it is taken out before configs/common.py reads the rest."""
  task, *items = (arg or "standard").split(",")
  backbone, rest = "resnet50", []
  for item in items:
    key, sep, value = item.partition("=")
    if key != "backbone":
      rest.append(item)
    elif not sep or value not in BACKBONES:
      raise ValueError(f"config option {item!r} in {arg!r}: expected backbone=NAME, NAME one of "
                       f"{', '.join(BACKBONES)}")
    else:
      backbone = value
  return ",".join([task, *rest]), backbone


def get_config(arg: str = "standard"):
  arg, backbone = split_backbone(arg)
  options = common.options_of(arg)
  transform = TRANSFORMS[backbone]
  config = common.task_config(arg, method="embedding_lr", standard_epochs=1, semantic_epochs=1,
                              transform=transform, eval_transform=transform)
  if backbone == "resnet50":
    # resnet.CHECKPOINTS["resnet50.tv_in1k"]["arch"]; width 64 -> 2048-d pooled features.
    config.model = {"backbone": backbone, "pretrained": "resnet50.tv_in1k", "weights_dir": "",
                    "stage_sizes": (3, 4, 6, 3), "width": 64, "dtype": "float32"}
  else:
    # clip_vit.CHECKPOINTS["clip_vit_l14_openai"]["arch"]; 768-d projected embedding.
    config.model = {"backbone": backbone, "pretrained": "clip_vit_l14_openai", "weights_dir": "",
                    "width": 1024, "layers": 24, "heads": 16, "patch_size": 14, "image_size": 224,
                    "embed_dim": 768, "activation": "quick_gelu", "dtype": "float32"}
  if not config.task.startswith(("openset", "detection")):
    # Image-to-model verification on the frozen features (cosine similarity), beside Table 3.
    config.evals.image_to_model = {"type": "image_to_model", "split": "test",
                                   "classes": "generators", "support": 100, "queries": 100,
                                   "levels": (0,)}
  # sklearn LogisticRegression(C=1.0, max_iter=1000, tol=1e-4) with lbfgs (memory 10, maxls 50).
  config.logistic = {"C": 1.0, "max_iter": 1000, "tol": 1e-4, "memory": 10,
                     "max_linesearch_steps": 50}
  if options.get("runlocal") or options.get("minibench"):
    from iab_jax import console

    preset = "runlocal" if options.get("runlocal") else "minibench"
    config.input.transform = config.input.eval_transform = SMALL_TRANSFORMS[backbone]
    if "image_to_model" in config.evals:  # the mini-bench's test split holds ~30 per class
      config.evals.image_to_model.split = "all"
      if options.get("runlocal"):
        config.evals.image_to_model.update({"support": 20, "queries": 20})
    if backbone == "resnet50":
      width = 16 if options.get("runlocal") else 32
      config.model.update({"stage_sizes": (1, 1, 1, 1), "width": width, "pretrained": ""})
      console.say("embedding_lr %s: ResNet shrunk through config.model to one block per stage, "
                  "width %d (%d-d features) at 64x64, randomly initialised", preset, width,
                  32 * width)
    else:
      arch = clip_lr_config.SMALL_TOWERS[preset]  # configs/clip_lr.py's shrunk towers
      config.model.update({**arch, "image_size": 64, "pretrained": ""})
      console.say("embedding_lr %s: CLIP ViT shrunk through config.model to width %d, %d blocks, "
                  "%d-px patches at 64x64, %d-d embedding, randomly initialised", preset,
                  arch["width"], arch["layers"], arch["patch_size"], arch["embed_dim"])
  return config
