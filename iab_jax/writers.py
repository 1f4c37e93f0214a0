"""Where a run's numbers go: CLU metric writers (TensorBoard + log) and a JSON-lines file.

Process 0 writes TensorBoard event files and `metrics.jsonl` (one JSON object per step and
kind, easy to load with pandas) under the workdir and logs every scalar; other processes only
log. `Progress` measures steps/s, images/s and the ETA of the whole run.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import jax
import numpy as np


def hide_gpus_from_tensorflow() -> None:
  """Call before importing clu.metric_writers, which imports TensorFlow: left alone, TF would
  take GPU memory that JAX needs, and print start-up chatter into the run's log."""
  from iab_jax import console

  console.quiet_libraries()
  import tensorflow as tf

  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass  # TensorFlow was initialised earlier in this process: its device choice stands


class JsonlWriter:
  """A clu MetricWriter appending {"step", "kind", ...values} lines to a file."""

  def __init__(self, path: str):
    self._path = path
    self._file = open(path, "a", buffering=1)  # line-buffered: a killed run loses no line

  def _write(self, kind: str, step: int, values: Mapping[str, Any]) -> None:
    line = {"step": int(step), "kind": kind, "time": time.time()}
    line.update({k: _plain(v) for k, v in values.items()})
    self._file.write(json.dumps(line) + "\n")

  def write_summaries(self, step, values, metadata=None):
    del step, values, metadata

  def write_scalars(self, step, scalars):
    self._write("scalars", step, scalars)

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    self._write("texts", step, texts)

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None):
    del step, point_clouds, point_colors, configs

  def write_hparams(self, hparams):
    self._write("hparams", 0, hparams)

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def _plain(value):
  if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, "__array__"):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()
  return value


def create(workdir: str):
  """The run's writer: TensorBoard + log + metrics.jsonl on process 0, log elsewhere."""
  hide_gpus_from_tensorflow()
  from clu import metric_writers

  if jax.process_index() > 0:
    return metric_writers.LoggingWriter()
  os.makedirs(workdir, exist_ok=True)
  default = metric_writers.create_default_writer(workdir, asynchronous=False)
  return metric_writers.MultiWriter([default, JsonlWriter(os.path.join(workdir, "metrics.jsonl"))])


def check_finite(step: int, scalars: Mapping[str, float]) -> None:
  bad = [k for k, v in scalars.items() if not math.isfinite(v)]
  if bad:
    raise FloatingPointError(f"step {step}: non-finite {', '.join(bad)}: "
                             + ", ".join(f"{k}={scalars[k]}" for k in bad))


def duration(seconds: float) -> str:
  """12m05s, 1h02m03s."""
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
  """Throughput and ETA over the steps since the last report (compilation excluded)."""

  def __init__(self, total_steps: int, global_batch: int, start_step: int = 0):
    self.total_steps = total_steps
    self.global_batch = global_batch
    self._step, self._time = start_step, None

  def report(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    if self._time is None:  # the first interval includes compilation: only start the clock
      self._step, self._time = step, now
      return {}
    steps, seconds = step - self._step, now - self._time
    self._step, self._time = step, now
    if steps <= 0 or seconds <= 0:
      return {}
    rate = steps / seconds
    eta = (self.total_steps - step) / rate
    return {"perf/steps_per_sec": rate, "perf/images_per_sec": rate * self.global_batch,
            "perf/eta_seconds": eta}
