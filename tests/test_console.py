"""A run's own output: a progress bar on a terminal, plain lines elsewhere, quiet libraries."""

import io
import logging
import os

from iab_jax import console


def test_progress_bar_on_a_terminal(capsys, monkeypatch):
  monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
  bar = console.ProgressBar(10, initial=2)
  assert bar.enabled
  bar.update(3, loss="0.5000")
  console.say("val accuracy %.2f", 0.75)  # printed above the bar, not through it
  bar.close()
  err = capsys.readouterr().err
  assert "5/10" in err and "loss=0.5000" in err and "step" in err
  assert "val accuracy 0.75" in err


def test_no_bar_without_a_terminal(capsys):
  bar = console.ProgressBar(10, enabled=False)
  bar.update(5)
  bar.close()
  assert capsys.readouterr().err == ""


def test_our_lines_stay_when_libraries_are_quiet(monkeypatch):
  from absl import logging as absl_logging

  stream = io.StringIO()
  console.configure(verbosity_given=False)
  handler = logging.getLogger("iab_jax.run").handlers[0]
  monkeypatch.setattr(handler, "stream", stream)
  absl_logging.info("library chatter")
  console.say("compiled in %.1f s", 1.25)
  assert absl_logging.get_verbosity() == absl_logging.WARNING
  assert "compiled in 1.2 s" in stream.getvalue() and "chatter" not in stream.getvalue()
  absl_logging.set_verbosity(absl_logging.INFO)


def test_quiet_libraries_sets_tensorflow_environment(monkeypatch):
  monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
  monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
  console.quiet_libraries()
  assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3" and os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
