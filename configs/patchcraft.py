"""PatchCraft (Zhong et al. 2023; IAB paper appendix D): rich/poor texture contrast, multi-class head.

  python -m iab_jax.main --config configs/patchcraft.py:standard --workdir runs/patchcraft_standard
  python -m iab_jax.main --config configs/patchcraft.py:semantic1 --workdir runs/patchcraft_cat
  python -m iab_jax.main --config configs/patchcraft.py:standard,minibench --workdir /tmp/patchcraft_mb

The paper's recipe as the official code runs it: on the full-resolution image (no resize before
the patch selection), PatchCraft's augmentation in training (each with p = 0.1: JPEG q 70-100,
Gaussian blur sigma U(0, 1), bilinear downsampling x U(0.25, 0.5)), 32x32 patches ranked by
texture diversity, the richest and poorest (at most 64 each) tiled into two 256x256 mosaics
normalised with mean = std = 0.5; the network of iab_jax.models.patchcraft (width 32, classifier
stages of 4, 2, 2, 2 convs); cross-entropy, Adam 1e-3 with StepLR(1 epoch, 0.9), batch 32,
10 epochs standard / 15 semantic (the paper's common epochs; its appendix names no exception for
PatchCraft). Evaluation tiles the image without the augmentation.

Config values: the patch side and the mosaic grid (`patch`, `grid`: the transform specs are
built from them), `model.width`, `model.stage_convs`.

`official`: the official code's differences that change numbers: the augmentation also at test
time (drawn per image from the evaluation seed), 15 epochs on both tasks (its script).
`minibench`: the mini-bench's 64x64 images give 64 patches of 8x8 (a third: 21), of which 16
are tiled 4x4 into 32x32 mosaics, with the paper's network; batch 16 and 15 epochs (64x64
mosaics at batch 32 cost ~2 min an epoch on 2 cores and reached 27% after 2 epochs). Measured:
42.9% clean test accuracy (3.0x chance) in 8 minutes. `runlocal` shrinks the mosaics to 32x32 (8x8
patches, 4x4 grid) and the classifier to width 16, one conv per stage.
"""

from configs import common

PATCH = 32
GRID = 8


def texture_transform(patch: int, grid: int, augment: bool) -> str:
  """The spec giving batch["image"] = {"rich": ..., "poor": ...}, (grid * patch)^2 each."""
  branch = lambda which: f"texture_tiles('{which}', {patch}, {grid})|normalize('half')"
  spec = f"fork(rich=\"{branch('rich')}\", poor=\"{branch('poor')}\")"
  return ("patchcraft_augment(0.1)|" if augment else "") + spec


def get_config(arg: str = "standard"):
  options = common.options_of(arg)
  official = bool(options.get("official"))
  patch, grid = PATCH, GRID
  if options.get("runlocal"):
    patch, grid = 8, 4
  elif options.get("minibench"):
    patch, grid = 8, 4
  config = common.task_config(
      arg, method="patchcraft", standard_epochs=10, semantic_epochs=15, learning_rate=1e-3,
      batch_size=32, transform=texture_transform(patch, grid, augment=True),
      eval_transform=texture_transform(patch, grid, augment=official))
  config.optimizer.update(schedule="step", decay_every_epochs=1, decay_factor=0.9)
  config.model = {"width": 32, "stage_convs": (4, 2, 2, 2), "dtype": "float32"}
  if official:
    config.num_epochs = 15  # training/scripts/patchcraft.bash, both tasks
  if options.get("runlocal") or options.get("minibench"):
    from iab_jax import console

    if options.get("runlocal"):
      config.model.update(width=16, stage_convs=(1, 1, 1, 1))
    else:
      config.input.batch_size = 16
      config.num_epochs = 15
    console.say("patchcraft %s: %dx%d patches tiled %dx%d into %dx%d mosaics%s",
                "runlocal" if options.get("runlocal") else "minibench", patch, patch, grid, grid,
                patch * grid, patch * grid,
                "; classifier width 16, one conv per stage" if options.get("runlocal") else "")
  return config
