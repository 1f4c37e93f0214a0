#!/usr/bin/env bash
# Ingests a download with N worker processes on this machine, then merges.
#   launch/ingest_local.sh SRC OUT [N]
#   INGEST_FLAGS="--layout folders --group_from dirname" launch/ingest_local.sh SRC OUT 8
# Each worker takes the chunks c with c % N == index; a killed run is resumed by running the
# same command again (finished chunks are kept). INGEST_FLAGS go to every worker.
set -euo pipefail
src=$1 out=$2 n=${3:-$(nproc)}
python=${PYTHON:-python}
pids=()
for ((i = 0; i < n; i++)); do
  # shellcheck disable=SC2086  # INGEST_FLAGS is split into flags on purpose
  "$python" -m data_prep.ingest --src "$src" --out "$out" --num_workers "$n" --worker_index "$i" \
    --jobs 1 --quiet ${INGEST_FLAGS:-} &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
if ((status)); then
  echo "a worker failed; rerun this command to finish the missing chunks" >&2
  exit 1
fi
"$python" -m data_prep.ingest --src "$src" --out "$out" --merge
