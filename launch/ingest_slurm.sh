#!/usr/bin/env bash
# Ingests a download on a Slurm cluster: an array of N workers, then one merge job.
#   launch/ingest_slurm.sh SRC OUT N [extra sbatch args...]
#   INGEST_FLAGS="--layout folders --group_from dirname" launch/ingest_slurm.sh SRC OUT 16
# SRC and OUT must be on a file system every node sees. Resubmitting the same command after a
# failure redoes only the chunks that were not finished.
set -euo pipefail
src=$1 out=$2 n=$3
shift 3
python=${PYTHON:-python}
array=$(sbatch --parsable --array=0-$((n - 1)) --cpus-per-task="${CPUS:-8}" "$@" \
  --job-name=iab-ingest --wrap="$python -m data_prep.ingest --src '$src' --out '$out' \
    --num_workers $n --worker_index \$SLURM_ARRAY_TASK_ID --jobs \$SLURM_CPUS_PER_TASK --quiet \
    ${INGEST_FLAGS:-}")
sbatch --dependency=afterok:"$array" --job-name=iab-merge "$@" \
  --wrap="$python -m data_prep.ingest --src '$src' --out '$out' --merge"
echo "submitted ingest array $array (+ merge once it succeeds)"
