#!/usr/bin/env bash
# Generates one model's images on a Slurm cluster: an array of N one-GPU jobs, then a merge job.
#   launch/generate_slurm.sh MODEL OUT N [extra sbatch args...]
# OUT must be on a file system every node sees. Resubmitting the same command after a failure
# renders only the images that have no file yet. GENERATE_ARGS adds flags to every job (e.g.
# "--semantics cat,dog --model_path /models/SDXL").
set -euo pipefail
model=$1 out=$2 n=$3
shift 3
python=${PYTHON:-python}
extra=${GENERATE_ARGS:-}
array=$(sbatch --parsable --array=0-$((n - 1)) --gres=gpu:1 --cpus-per-task="${CPUS:-4}" "$@" \
  --job-name="iab-gen-$model" --wrap="$python -m data_prep.generate --model '$model' \
    --out '$out' --num_shards $n --shard_index \$SLURM_ARRAY_TASK_ID --device cuda:0 $extra")
sbatch --dependency=afterok:"$array" --job-name=iab-gen-merge "$@" \
  --wrap="$python -m data_prep.generate --merge --out '$out'"
echo "submitted generation array $array (+ merge once it succeeds)"
