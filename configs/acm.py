"""The ACM detector (He et al. 2026; iab_jax/methods/acm.py) on the detection task.

  python -m iab_jax.main --config configs/acm.py:detection:SD1_5 --workdir runs/acm_sd15
  python -m iab_jax.main --config configs/acm.py:detection:SD1_5 --workdir runs/acm_sd15_gen \
      --config.acm.source=SD1_5
  python -m iab_jax.main --config configs/acm.py:detection:mini_bicubic,minibench \
      --workdir /tmp/acm_mb

`detection:<generator>` trains on the real images and that generator's (classes real, fake) and
tests real against every generator of the test split at the 7 degradation levels
(iab_jax.evaluators.detection). The paper trains on ProGAN or SD1.4; any generator of the data
serves, and `detection:all` trains on all of them.

From the paper: frozen CLIP ViT-L/14 (OpenAI, `clip_vit_l14_openai`), its projected 768-d image
embedding ("following UnivFD"), computed once per image and cached; the autoencoder learns the real
images' features (config.acm.source="real"; the task's generator, or "fake", for Table 3's
variants); L1 attribution loss, BCE classifier loss; Adam 2e-4, batch 256 for both networks, taking
turns (classifier frozen, then autoencoder frozen).

Left open by the paper, so config values here:
- input: CLIP's own preprocessing (shorter side 224 bicubic, center crop 224, CLIP mean/std); the
  paper names none (UnivFD center-crops 224 without resizing).
- autoencoder: 768 -> 512 -> 128 -> 512 -> 768, ReLU, last layer linear (acm.hidden=(512,),
  acm.bottleneck=128); classifier: a linear layer on A (acm.classifier_hidden=(), UnivFD's probe).
- the turn: one step each (optimizer.alternate_every_steps=1; alternate_every_epochs=K for turns
  of K epochs).
- length: 30 epochs, tested at the best validation accuracy (the loop's default).

`runlocal` and `minibench` shrink the CLIP tower through config values at 64x64 input, randomly
initialised, as configs/embedding_lr.py's clip_vit presets do (the same cached features): runlocal
width 64, 2 blocks, 64-d; minibench width 128, 2 blocks, 4-px patches, 256-d. The module's widths
scale with the feature width (512 and 128 per 768: 171 and 43 at 256-d); minibench trains 150
epochs at batch 64 (its training split of a detection task is ~460 images: 1,050 steps, about as
many as the autoencoder needs to settle there). Their features are a random
ViT's, so the mini-bench measures the module on random features, not on CLIP.
"""

from configs import clip_lr as clip_lr_config
from configs import common

TRANSFORM = clip_lr_config.CLIP_TRANSFORM
SMALL_TRANSFORM = "resize(64, method='bicubic')|central_crop(64)|normalize('clip')"
FULL_DIM = 768  # the sizes below are the paper-size ones, for CLIP ViT-L/14's 768-d embedding
HIDDEN, BOTTLENECK = 512, 128


def get_config(arg: str = "detection:SD1_5"):
  options = common.options_of(arg)
  config = common.task_config(arg, method="acm", standard_epochs=30, learning_rate=2e-4,
                              batch_size=256, transform=TRANSFORM, eval_transform=TRANSFORM)
  # clip_vit.CHECKPOINTS["clip_vit_l14_openai"]["arch"]; 768-d projected embedding.
  config.model = {"pretrained": "clip_vit_l14_openai", "weights_dir": "", "width": 1024,
                  "layers": 24, "heads": 16, "patch_size": 14, "image_size": 224,
                  "embed_dim": FULL_DIM, "activation": "quick_gelu", "dtype": "float32"}
  config.acm = {"source": "real", "hidden": (HIDDEN,), "bottleneck": BOTTLENECK,
                "classifier_hidden": (), "activation": "relu"}
  config.optimizer.groups = {"autoencoder": {}, "classifier": {}}
  config.optimizer.turn_order = ("autoencoder", "classifier")
  config.optimizer.alternate_every_steps = 1
  if options.get("runlocal") or options.get("minibench"):
    from iab_jax import console

    preset = "runlocal" if options.get("runlocal") else "minibench"
    arch = clip_lr_config.SMALL_TOWERS[preset]
    config.input.transform = config.input.eval_transform = SMALL_TRANSFORM
    config.model.update({**arch, "image_size": 64, "pretrained": ""})
    scale = arch["embed_dim"] / FULL_DIM
    config.acm.hidden = (round(HIDDEN * scale),)
    config.acm.bottleneck = round(BOTTLENECK * scale)
    if preset == "minibench":
      config.num_epochs = 150
    config.input.batch_size = config.input.eval_batch_size = 64 if preset == "minibench" else 32
    if preset == "runlocal":
      config.max_eval_examples = 64
    console.say("acm %s: CLIP ViT shrunk through config.model to width %d, %d blocks, %d-px "
                "patches at 64x64, %d-d embedding, randomly initialised; module %d -> %d -> %d",
                preset, arch["width"], arch["layers"], arch["patch_size"], arch["embed_dim"],
                arch["embed_dim"], config.acm.hidden[0], config.acm.bottleneck)
  return config
