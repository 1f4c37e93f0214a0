"""One-for-All (Fei et al., AAAI 2026): the fingerprint extractor, trained on simulator
reconstructions of real images only, and its evaluations (iab_jax/methods/ofa.py).

  # 1. the simulator (configs/ofa_simulator.py), 2. the extractor, which names it:
  python -m iab_jax.main --config configs/ofa.py:standard --workdir runs/ofa \\
      --config.simulator.workdir=runs/ofa_sim
  # open-set fold k: a (T+1)-way head on the extractor of runs/ofa
  python -m iab_jax.main --config configs/ofa.py:openset0 --workdir runs/ofa_open0 \\
      --config.extractor.workdir=runs/ofa
  python -m iab_jax.main --config configs/ofa.py:standard,minibench --workdir /tmp/ofa_mb \\
      --config.simulator.workdir=/tmp/sim

The paper's recipe (METHODS.md 3.2): Corvi et al.'s DnCNN residual (17 layers, 64 channels, valid
convolutions: 256 -> 222) divided by 256, log(1 + |FFT2|) per channel, ImageNet ResNet-50 with a
128-d output; batches of 8 sets x 16 reconstructions + 16 real images ("multiple sets") and the
"single set" view (one batch decoded by 8 architectures); supervised contrastive loss tau 0.02
with a memory bank of 1024 past fingerprints (negatives only), pair head and real/reconstruction
head on the L2-normalised fingerprint, all weights 1; Adam 1e-4; 10k steps. `official` follows the
authors' training script instead (`fingerprint.recipe='code'`): a 65,536-entry bank that the batch
joins before the loss (so each anchor's own copy is among its negatives), raw fingerprints into
the heads, SupCon averaged over all anchors, the real/reconstruction loss as the sum of the two
groups' means, and in the single set only the first decoder's images against the originals.
(`official` also reads the official split, as for every method; OFA trains on real images only.)
The simulator stays frozen. Tested by image-to-model verification on every generator of the test
split (support 100, queries 100 per class), the generated images never having been seen.

Open-set tasks (openset0..4): a linear (T+1)-way head on the frozen fingerprint (`reject.finetune`
'head'; 'all' trains the extractor too), Adam 1e-3, 5 epochs (the paper gives no fine-tuning
hyper-parameters), class T = simulator reconstructions of the batch's real images.

`runlocal` and `minibench` shrink the extractor, denoiser and batch through config values at
64x64 images and initialise them randomly (no ImageNet or Corvi weights here): the mini-bench
figures measure the recipe with a random denoiser and a ResNet trained from scratch.
"""

from configs import common
from configs import ofa_simulator as simulator_config

TRANSFORM = simulator_config.TRANSFORM
EVAL_TRANSFORM = simulator_config.EVAL_TRANSFORM


def get_config(arg: str = "standard"):
  options = common.options_of(arg)
  config = common.task_config(arg, method="ofa", learning_rate=1e-4, batch_size=144,
                              transform=TRANSFORM, eval_transform=EVAL_TRANSFORM)
  config.model = {"embed_dim": 128, "stage_sizes": (3, 4, 6, 3), "width": 64,
                  "dtype": "float32", "pretrained": "resnet50.tv_in1k", "weights_dir": ""}
  config.denoiser = {"depth": 17, "width": 64, "padding": 0, "pretrained": "dncnn_corvi_sigma1",
                     "residual_scale": 256.0}
  config.fingerprint = {"sets": 8, "set_size": 16, "multiple_sets": True, "single_set": True,
                        "bank_size": 1024, "temperature": 0.02, "recipe": "paper",
                        "weights": {"scl": 1.0, "att": 1.0, "cls": 1.0}}
  if options.get("official"):
    # The authors' training script (METHODS.md 3.2): a 65,536-entry bank that the batch joins
    # before the loss, raw fingerprints into the heads, their loss averaging.
    config.fingerprint.update({"recipe": "code", "bank_size": 65_536})
  config.train_classes = ("real",)
  config.num_steps = 10_000
  config.checkpoint_every_steps = 1000
  config.simulator = {"workdir": "", "model": dict(simulator_config.FULL_SIZE)}
  config.extractor = {"workdir": ""}
  config.reject = {"num_epochs": 5, "finetune": "head",
                   "optimizer": {"name": "adam", "learning_rate": 1e-3}}
  i2m = {"type": "image_to_model", "split": "test", "classes": "generators", "support": 100,
         "queries": 100, "levels": (0,)}
  if config.task.startswith("openset"):
    # The reject phase reads batches of the same size (a run without an extractor run trains
    # the fingerprint phase first, whose batch size is fixed by the sets).
    config.num_epochs = config.reject.num_epochs
  else:
    config.evals = {"image_to_model": i2m}
    config.input.eval_batch_size = 32
  if options.get("runlocal") or options.get("minibench"):
    from iab_jax import console

    config.input.transform = "random_crop(64)|normalize('half')"
    config.input.eval_transform = "central_crop(64)|normalize('half')"
    runlocal = bool(options.get("runlocal"))
    config.model.update({"stage_sizes": (1, 1, 1, 1), "width": 8 if runlocal else 16,
                         "pretrained": ""})
    config.denoiser.update({"depth": 3 if runlocal else 5, "width": 8 if runlocal else 16,
                            "pretrained": ""})
    sets, size = (2, 2) if runlocal else (4, 8)
    config.fingerprint.update({"sets": sets, "set_size": size, "bank_size": 16 if runlocal
                               else 256})
    config.input.batch_size = (sets + 1) * size
    if not config.task.startswith("openset"):
      config.num_steps = 3 if runlocal else 400
      config.checkpoint_every_steps = 0 if runlocal else 100
      if "image_to_model" in config.evals:
        config.evals.image_to_model.update({"split": "all", "support": 20 if runlocal else 100,
                                            "queries": 20 if runlocal else 100})
    small_sim = simulator_config.get_config("standard," + ("runlocal" if runlocal
                                                           else "minibench")).model
    config.simulator.model = dict(small_sim)
    console.say("ofa %s: ResNet width %d one block per stage, DnCNN depth %d width %d, %d sets "
                "x %d at 64x64, random initialisation", "runlocal" if runlocal else "minibench",
                config.model.width, config.denoiser.depth, config.denoiser.width, sets, size)
  return config
