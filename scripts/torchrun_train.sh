#!/usr/bin/env bash
# Multi-node layergen training with torchrun, for clusters without SLURM. Run it once on
# every node, with the same arguments and each node's rank:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0.example MASTER_PORT=29500 \
#       scripts/torchrun_train.sh configs/ldm.yaml [train.py fit arguments...]
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0.example MASTER_PORT=29500 \
#       scripts/torchrun_train.sh configs/ldm.yaml [train.py fit arguments...]
# torchrun starts NPROC_PER_NODE processes per node (default: one per visible GPU) and sets
# RANK / LOCAL_RANK / WORLD_SIZE; Lightning picks them up (TorchElasticEnvironment). Every
# start resumes the run in RUN_DIR (default runs/<config name>) from its last checkpoint
# (--ckpt_path last; a first start trains from scratch). RUN_DIR must be on a file system
# that all nodes share. Arguments after the config override it and configs/cluster/multinode.yaml
# (e.g. --config configs/ldm_fsdp.yaml, --data.init_args.train_shards '...').
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: scripts/torchrun_train.sh CONFIG.yaml [train.py fit arguments...]}
shift

if [[ -z ${NPROC_PER_NODE:-} ]]; then
    NPROC_PER_NODE=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || true)
    NPROC_PER_NODE=$((NPROC_PER_NODE > 0 ? NPROC_PER_NODE : 1))
fi
NNODES=${NNODES:-1}
RUN_DIR=${RUN_DIR:-runs/$(basename "$config" .yaml)}

exec "${TORCHRUN:-torchrun}" \
    --nnodes "$NNODES" \
    --nproc-per-node "$NPROC_PER_NODE" \
    --node-rank "${NODE_RANK:-0}" \
    --master-addr "${MASTER_ADDR:-127.0.0.1}" \
    --master-port "${MASTER_PORT:-29500}" \
    train.py fit \
    --config "$config" \
    --config configs/cluster/multinode.yaml \
    --trainer.num_nodes "$NNODES" \
    --trainer.devices "$NPROC_PER_NODE" \
    --trainer.default_root_dir "$RUN_DIR" \
    --trainer.logger.init_args.save_dir "$RUN_DIR" \
    --ckpt_path last \
    "$@"
