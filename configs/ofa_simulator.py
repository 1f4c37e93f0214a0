"""One-for-All's fingerprint simulator (Fei et al., AAAI 2026): reconstruct real images through
randomly drawn decoder architectures (iab_jax/methods/ofa_simulator.py).

  python -m iab_jax.main --config configs/ofa_simulator.py:standard --workdir runs/ofa_sim
  python -m iab_jax.main --config configs/ofa_simulator.py:standard,minibench --workdir /tmp/sim

Trains on the training split's real images only (config.train_classes; the paper uses COCO
train2017): random 256x256 crops (images whose shorter side is under 256 are enlarged first, as
the authors' loader does), in [-1, 1]. Loss MSE + 0.25 LPIPS (the paper), LPIPS-vgg (the paper
does not say which network: `lpips.net`). Adam, lr 4e-5 and batch 4 x 32 accumulated ~ 1M steps
are what the authors' checkpoint name suggests (METHODS.md 3.1, unconfirmed); we default to
Adam 1e-4, batch 16, 100k steps (`num_steps`), all config values. The simulator has no `official`
variant: no code of the authors' simulator training is public.

`runlocal` and `minibench` shrink the widths through config values at 64x64 crops and use random
LPIPS weights (the lpips package's files are not downloadable here): the simulator then learns a
reconstruction under MSE and a random-feature perceptual distance.
"""

from configs import common

TRANSFORM = "resize(256, enlarge_only=True)|random_crop(256)|normalize('half')"
EVAL_TRANSFORM = "resize(256)|central_crop(256)|normalize('half')"
FULL_SIZE = {"encoder_widths": (64, 128, 256), "decoder_widths": (128, 64, 32), "num_kernels": 4,
             "router_dim": 256, "groups": 32, "leaky_slope": 0.2, "dtype": "float32"}


def get_config(arg: str = "standard"):
  options = common.options_of(arg)
  config = common.task_config(arg, method="ofa_simulator", learning_rate=1e-4, batch_size=16,
                              transform=TRANSFORM, eval_transform=EVAL_TRANSFORM)
  config.model = dict(FULL_SIZE)
  config.train_classes = ("real",)
  config.num_steps = 100_000
  config.loss_weights = {"mse": 1.0, "lpips": 0.25}
  config.lpips = {"net": "vgg", "backbone": "lpips_vgg", "lin": "lpips_vgg_lin.safetensors"}
  config.evals = {}  # a simulator attributes nothing; its log reports MSE, LPIPS and PSNR
  config.checkpoint_every_steps = 1000
  if options.get("runlocal") or options.get("minibench"):
    from iab_jax import console

    small = "random_crop(64)|normalize('half')"
    config.input.transform = small
    config.input.eval_transform = "central_crop(64)|normalize('half')"
    config.lpips.update({"net": "alex", "backbone": "", "lin": ""})
    if options.get("runlocal"):
      config.model.update({"encoder_widths": (8, 16, 16), "decoder_widths": (16, 8, 8),
                           "router_dim": 8, "groups": 4})
      config.num_steps = 3
      config.input.batch_size = config.input.eval_batch_size = 4
    else:
      config.model.update({"encoder_widths": (32, 64, 128), "decoder_widths": (64, 32, 16),
                           "router_dim": 64, "groups": 8})
      # The recipe's Adam 1e-4: at 1e-3 the reconstructions reached 18.4 dB PSNR by step 350
      # and then fell apart (8.3 dB by step 600).
      config.num_steps = 900
      config.checkpoint_every_steps = 300
    console.say("ofa_simulator %s: widths %s / %s at 64x64 crops, LPIPS-alex with random "
                "weights, %d steps", "runlocal" if options.get("runlocal") else "minibench",
                config.model.encoder_widths, config.model.decoder_widths, config.num_steps)
  return config
