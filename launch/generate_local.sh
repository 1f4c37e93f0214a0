#!/usr/bin/env bash
# Generates one model's images on every GPU of this machine: one process per GPU via torchrun.
#   launch/generate_local.sh MODEL OUT [more data_prep.generate flags...]
# Each process reads its shard from RANK/WORLD_SIZE and takes the GPU LOCAL_RANK; the last one
# to finish writes the dataset. Rerun the same command to resume after a crash.
set -euo pipefail
model=$1 out=$2
shift 2
gpus=${GPUS:-$(nvidia-smi --list-gpus | wc -l)}
exec torchrun --standalone --nproc_per_node="$gpus" -m data_prep.generate \
  --model "$model" --out "$out" "$@"
