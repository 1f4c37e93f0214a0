"""CLIP-LR (Cioni et al.; paper appendix D): logistic regression on frozen CLIP ViT-H/14 features.

  python -m iab_jax.main --config configs/clip_lr.py:standard --workdir runs/clip_lr_standard
  python -m iab_jax.main --config configs/clip_lr.py:semantic1 --workdir runs/clip_lr_cat
  python -m iab_jax.main --config configs/clip_lr.py:standard,official --workdir runs/clip_lr_off
  python -m iab_jax.main --config configs/clip_lr.py:standard,minibench --workdir /tmp/clip_lr_mb

The image tower is LAION's CLIP ViT-H/14 laion2B-s32B-b79K (`clip_vit_h14_laion2b`, open_clip's
safetensors file; a transformers-layout file such as the one data_prep/import_official.py writes
from the authors' checkpoint loads too): its projected 1024-d image embedding is computed once per
image and cached. The head is StandardScaler + multinomial logistic regression (L2, C=1, L-BFGS,
at most 1000 iterations, gradient tolerance 1e-4: scikit-learn's defaults, as the official code
uses them), fitted once on the whole training split; there are no epochs.

Input: CLIP's own preprocessing by default (shorter side to 224 bicubic, center crop 224, CLIP's
mean/std), as the original method and the weights expect. `official` uses the official code's
Resize(256) (bilinear), CenterCrop(224) and mean/std 0.5 [DEV].

`runlocal` and `minibench` shrink the tower through config values at 64x64 input (runlocal: width
64, 2 blocks, 16-pixel patches, 64-d embedding; minibench: width 128, 2 blocks, 4-pixel patches,
256-d embedding) and initialise it randomly (CLIP's weights do not fit it): their features are a
random ViT's, so the mini-bench measures a linear probe on random features, not CLIP.
"""

from configs import common

CLIP_TRANSFORM = "resize(224, method='bicubic')|central_crop(224)|normalize('clip')"
OFFICIAL_TRANSFORM = "resize(256)|central_crop(224)|normalize('half')"
# The shrunk towers of the presets, at 64x64 input: coarse patches for the smoke test, 256 tokens
# and a wider embedding for the mini-bench's probe.
SMALL_TOWERS = {
    "runlocal": {"width": 64, "layers": 2, "heads": 4, "patch_size": 16, "embed_dim": 64},
    "minibench": {"width": 128, "layers": 2, "heads": 4, "patch_size": 4, "embed_dim": 256},
}


def get_config(arg: str = "standard"):
  options = common.options_of(arg)
  transform = OFFICIAL_TRANSFORM if options.get("official") else CLIP_TRANSFORM
  config = common.task_config(arg, method="clip_lr", standard_epochs=1, semantic_epochs=1,
                              transform=transform, eval_transform=transform)
  # The tower: clip_vit.CHECKPOINTS["clip_vit_h14_laion2b"]["arch"]. A registered name is looked up
  # in weights_dir ($IAB_WEIGHTS or ~/.cache/iab_jax/weights); a path is used as is.
  config.model = {"pretrained": "clip_vit_h14_laion2b", "weights_dir": "", "width": 1280,
                  "layers": 32, "heads": 16, "patch_size": 14, "image_size": 224,
                  "embed_dim": 1024, "activation": "gelu", "dtype": "float32"}
  # sklearn LogisticRegression(C=1.0, max_iter=1000, tol=1e-4) with lbfgs (memory 10, maxls 50).
  config.logistic = {"C": 1.0, "max_iter": 1000, "tol": 1e-4, "memory": 10,
                     "max_linesearch_steps": 50}
  if options.get("runlocal") or options.get("minibench"):
    from iab_jax import console

    small = "resize(64, method='bicubic')|central_crop(64)|normalize('clip')"
    config.input.transform = config.input.eval_transform = small
    # CLIP's weights do not fit the shrunk tower: it is randomly initialised. The mini-bench
    # preset cuts finer patches (256 tokens) and keeps a wider embedding for the probe.
    arch = SMALL_TOWERS["runlocal" if options.get("runlocal") else "minibench"]
    config.model.update({**arch, "image_size": 64, "pretrained": ""})
    console.say("clip_lr %s: CLIP tower shrunk through config.model to width %d, %d blocks, "
                "%d-px patches at 64x64, %d-d embedding, randomly initialised",
                "runlocal" if options.get("runlocal") else "minibench", arch["width"],
                arch["layers"], arch["patch_size"], arch["embed_dim"])
  return config
