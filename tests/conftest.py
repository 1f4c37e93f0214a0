"""Shared pytest setup."""

import os
import sys

# grain worker processes read absl flags; unparsed flags make them raise when JAX is imported.
from absl import flags

flags.FLAGS.mark_as_parsed()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
