"""DNA-Det (Yang et al., AAAI 2022; paper appendix D, METHODS.md section 1.6).

  python -m iab_jax.main --config configs/dna_det.py:standard --workdir runs/dna_det_standard
  python -m iab_jax.main --config configs/dna_det.py:semantic1 --workdir runs/dna_det_cat
  python -m iab_jax.main --config configs/dna_det.py:standard,official --workdir runs/dna_official
  python -m iab_jax.main --config configs/dna_det.py:standard,minibench --workdir /tmp/dna_det_mb

Two phases in one run (iab_jax/methods/dna_det.py): `pretrain` classifies the 170 image
transformations of iab_jax/data/transformations.py applied to the training images (the
transformation index is the label), `attribution` then trains on the run's classes from that
network. 10 + 10 epochs on every task ("10 epochs in both phases", the paper; the official
scripts too), Adam 1e-4 without a schedule in both (the official dna_*.yaml: StepLR(500, 0.9)
stepped per epoch, which never fires in 10 epochs), batch 32.

Inputs: resize(256)|central_crop(256), bicubic up-sampling to 512x512, then for training 16
random 64x64 crops, for testing the whole 512x512 image; normalised to [-1, 1]. The pretext
phase applies its transformation after the 256 crop, before the up-sampling, as the official
dataset_dna.py. Loss: uncertainty-weighted cross-entropy over all crops + supervised contrastive
loss (temperature 0.07) over each image's 16 crops; config.bn_per_crop runs the 16 crop positions
as 16 batches (the original's loop; False: one batch of 16 N crops).

Default recipe (the paper and the original DNA-Det, official bugs fixed): cross-entropy on
logits (config.model.softmax_inside=False); class-balanced attribution batches
(config.sampler='balanced', the original DNA-Det's sampler).
`official`: the network's softmax inside forward (the cross-entropy of a double softmax; the
scores are softmaxed again, as the benchmark's metrics do), plain shuffled batches, and the
common `official` settings (its split, testing the last epoch).

Sizes the paper leaves open are config values: config.model.widths (64, 128, 256, 512) and
proj_dim (128) are the original's; the transform strings hold 256 / 512 / 16 crops of 64.
`minibench`: the mini-bench's 64x64 images up-sampled to 128, 16 crops of 32, widths
(16, 32, 64, 128), projection 64; 4 pretext + 8 attribution epochs at Adam 1e-3 (shortened to
fit the preset's ten minutes on two cores); it reaches 33% clean, short of the preset's 43%.
`runlocal` shrinks the same way, to 8 crops of 16 from 64x64 images, widths (8, 8, 16, 16), one
epoch per phase.
"""

from configs import common


def transforms_for(base: int, side: int, crops: int, crop: int) -> tuple[str, str, str]:
  """(pre-training, attribution training, evaluation) transform specs."""
  prefix = f"resize({base})|central_crop({base})"
  up = f"resize({side}, {side}, method='bicubic')"
  views = f"random_crops({crops}, {crop})|normalize('half')"
  return (f"{prefix}|dna_transformation|{up}|{views}", f"{prefix}|{up}|{views}",
          f"{prefix}|{up}|normalize('half')")


def get_config(arg: str = "standard"):
  options = common.options_of(arg)
  official = bool(options.get("official"))
  pretrain_spec, train_spec, eval_spec = transforms_for(256, 512, 16, 64)
  config = common.task_config(arg, method="dna_det", standard_epochs=10, semantic_epochs=10,
                              learning_rate=1e-4, transform=train_spec, eval_transform=eval_spec)
  config.model = {"name": "dna_det", "widths": (64, 128, 256, 512), "proj_dim": 128,
                  "dropout": 0.2, "softmax_inside": official, "dtype": "float32"}
  config.temperature = 0.07
  config.sampler = "shuffle" if official else "balanced"
  config.bn_per_crop = True
  config.pretrain = {"num_epochs": 10, "transform": pretrain_spec,
                     "optimizer": {"name": "adam", "learning_rate": 1e-4}}
  if options.get("minibench"):
    # The mini-bench's 64x64 images up-sampled 2x as the paper's 256 are, 16 crops of 32.
    specs = transforms_for(64, 128, 16, 32)
    config.pretrain.transform, config.input.transform, config.input.eval_transform = specs
    config.model.update(widths=(16, 32, 64, 128), proj_dim=64)
    # Shortened to fit the preset's minutes. The pretext phase matters even when its 170-way
    # cross-entropy stays near ln 170 (its contrastive term does fall): without it the
    # attribution phase stayed at chance for 8 epochs.
    config.num_epochs = 8
    config.pretrain.num_epochs = 4
    config.optimizer.learning_rate = config.pretrain.optimizer.learning_rate = 1e-3
  if options.get("runlocal"):
    from iab_jax import console

    console.say("runlocal: DNA-Det shrunk to 64x64 images, 8 crops of 16, widths (8, 8, 16, 16),"
                " one epoch per phase")
    specs = transforms_for(64, 64, 8, 16)
    config.pretrain.transform, config.input.transform, config.input.eval_transform = specs
    config.model.update(widths=(8, 8, 16, 16), proj_dim=16)
    config.num_epochs = config.pretrain.num_epochs = 1
  return config
