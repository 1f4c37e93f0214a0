"""What a run prints: its own progress lines, a progress bar on a terminal, and little else.

The commands (`iab_jax.main`, `.evaluate`, `.attribute`) print their own lines through `say`, to
stderr with the time of day, on process 0 only. Libraries are quiet by default: TensorFlow's C++
start-up lines, JAX's "Unable to initialize backend 'tpu'" and absl INFO chatter (each logged
scalar, the hyperparameters, Orbax's saves) stay hidden unless `--verbosity=0` (absl INFO) or
higher asks for them. Training shows a tqdm bar with rate and ETA when stderr is a terminal, and
plain "step i/n" lines every `log_every_steps` otherwise (logs, CI, notebooks' captured output).

Call `quiet_libraries()` before TensorFlow or JAX are imported: TensorFlow reads its settings
from the environment once, at import.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import time

_LOGGER = std_logging.getLogger("iab_jax.run")
_ACTIVE_BAR = None  # the ProgressBar on screen, which our lines must not tear


def quiet_libraries() -> None:
  """Environment that keeps TensorFlow's and XLA's start-up lines out of a run's output."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  # TensorFlow only writes TensorBoard files here; its oneDNN kernels would announce themselves
  # in two C++ log lines at import that no log level silences.
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def configure(verbosity_given: bool) -> None:
  """Our lines to stderr; absl (and through it every library's INFO) to WARNING unless the user
  passed --verbosity."""
  from absl import logging

  if not _LOGGER.handlers:
    handler = std_logging.StreamHandler(sys.stderr)
    handler.setFormatter(std_logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    _LOGGER.addHandler(handler)
    _LOGGER.setLevel(std_logging.INFO)
    _LOGGER.propagate = False
  if not verbosity_given:
    logging.set_verbosity(logging.WARNING)


def _is_lead() -> bool:
  if "jax" not in sys.modules:
    return True
  import jax

  return jax.process_index() == 0


def say(message: str, *args) -> None:
  """One line of a run's own output (process 0 only); also in the absl log at INFO."""
  if args:
    message = message % args
  if _is_lead():
    if _ACTIVE_BAR is not None and _ACTIVE_BAR.enabled:
      _ACTIVE_BAR.write(time.strftime("%H:%M:%S ") + message)
    elif _LOGGER.handlers:
      _LOGGER.info(message)
    else:  # used as a library, without configure(): absl's log, as before
      from absl import logging

      logging.info(message)


def verbosity_given() -> bool:
  """Whether --verbosity (or -v) was on the command line."""
  from absl import flags

  return "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present > 0


class Timer:
  """with Timer() as t: ...; t.seconds"""

  def __enter__(self):
    self._start = time.perf_counter()
    return self

  def __exit__(self, *_):
    self.seconds = time.perf_counter() - self._start


class ProgressBar:
  """A tqdm bar over training steps on a terminal; a no-op elsewhere (log lines take over)."""

  def __init__(self, total: int, initial: int = 0, enabled: bool | None = None):
    global _ACTIVE_BAR
    if enabled is None:
      enabled = sys.stderr.isatty() and _is_lead()
    self.enabled = enabled
    self._bar = None
    if enabled:
      from tqdm import tqdm

      self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                       file=sys.stderr, smoothing=0.05, leave=True)
      _ACTIVE_BAR = self

  def update(self, steps: int = 1, **postfix) -> None:
    if self._bar is not None:
      if postfix:
        self._bar.set_postfix(postfix, refresh=False)
      self._bar.update(steps)

  def write(self, message: str) -> None:
    """A line above the bar (validation results), so the bar is not torn."""
    if self._bar is not None:
      self._bar.write(message, file=sys.stderr)

  def close(self) -> None:
    global _ACTIVE_BAR
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    if _ACTIVE_BAR is self:
      _ACTIVE_BAR = None
