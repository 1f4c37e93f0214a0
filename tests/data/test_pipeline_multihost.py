"""Two JAX processes (jax.distributed on 127.0.0.1) read disjoint halves of each global batch."""

import io
import json
import os
import socket
import subprocess
import sys

import numpy as np
from PIL import Image

from iab_jax.data import pipeline, records

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKER = r"""
import json, sys
import jax
import numpy as np
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
from iab_jax.data import pipeline, records
ds = records.Dataset(sys.argv[3])
it = pipeline.make_dataset(ds, np.arange(len(ds)), ds.column("label").astype(np.int32),
                           "resize(8)|central_crop(8)", batch_size=8, train=True, seed=11)
steps = [b["position"].tolist() for b in it]
# The local halves assemble into one global array, as the training step will see it.
mesh = jax.make_mesh((jax.device_count(),), ("data",))
sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
first = next(iter(pipeline.make_dataset(ds, np.arange(len(ds)), ds.column("label").astype(np.int32),
                                         "resize(8)|central_crop(8)", batch_size=8, train=True,
                                         seed=11)))
glob = jax.make_array_from_process_local_data(sharding, first["position"])
print(json.dumps({"index": jax.process_index(), "steps": steps, "global_shape": list(glob.shape)}))
"""


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_split_the_global_batch(tmp_path):
  def gen():
    for i in range(20):
      buf = io.BytesIO()
      Image.fromarray(np.full((9, 9, 3), i, np.uint8)).save(buf, "PNG")
      yield records.ImageRecord(
          image=buf.getvalue(), key=str(i), generator="g", label=0, levels=(0, 0, 0, 0),
          semantic="cat", source="t", width=9, height=9, format="PNG",
          sha256=records.sha256_bytes(buf.getvalue()))

  records.write_dataset(str(tmp_path), gen(), ["g"])
  address = f"127.0.0.1:{_free_port()}"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, address, str(i), str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
           for i in range(2)]
  outs = []
  for p in procs:
    stdout, stderr = p.communicate(timeout=180)
    assert p.returncode == 0, stderr[-2000:]
    outs.append(json.loads(stdout.strip().splitlines()[-1]))
  outs.sort(key=lambda o: o["index"])
  assert all(o["global_shape"] == [8] for o in outs)
  ds = records.Dataset(str(tmp_path))
  single = [b["position"].tolist() for b in pipeline.make_dataset(
      ds, np.arange(20), ds.column("label").astype(np.int32), "resize(8)|central_crop(8)",
      batch_size=8, train=True, seed=11, process_index=0, process_count=1)]
  assert len(outs[0]["steps"]) == len(outs[1]["steps"]) == len(single) == 2
  for step, batch in enumerate(single):
    a, b = outs[0]["steps"][step], outs[1]["steps"][step]
    assert len(a) == len(b) == 4 and not set(a) & set(b)
    assert sorted(a + b) == sorted(batch)
