"""PyTorch's default initialisers, for models that must start where their reference starts.

torch's nn.Conv2d and nn.Linear draw weights with kaiming_uniform_(a=sqrt(5)), which is
uniform(+-1/sqrt(fan_in)), and biases uniform(+-1/sqrt(fan_in)) too. Flax's fan_in of an HWIO
kernel is the same kh * kw * in, so the weight init is a variance scaling; the bias init needs the
fan-in, which a Flax bias initialiser never sees, so it is built for it.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def bias_init(fan_in: int) -> Callable[..., jax.Array]:
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init
