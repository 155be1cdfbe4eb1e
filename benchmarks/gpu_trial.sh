#!/usr/bin/env bash
# One whole Flickr8k-sized trial on a CUDA machine, measured from the command to metrics.json:
# the JPEG set is generated here (8,091 images of about 500x375, into /tmp), then
#   python train.py experiment=flickr8k trainer=gpu model.encoder.weights=null logger=csv \
#     callbacks.early_stopping=null data.root=<it>
# runs 30 epochs with validation every epoch and the test at the end. The phase lines
# ("time: ...") are echoed as each phase ends; the script stops the run before --budget
# seconds (default 570, under a device session's 10-minute limit), so a cut-off trial still
# reports where its time went. Writes $OUT/gpu_trial.json (gpu_trial_minutes,
# gpu_trial_breakdown), trial.log, metrics.json and timings.json.
#
#   bash benchmarks/gpu_trial.sh                      # the full trial (GPU)
#   bash benchmarks/gpu_trial.sh --images 60 --epochs 1 --trainer cpu -- \
#     model.encoder.arch=resnet18 data.image_size=112 model.encoded_size=7   # a CPU smoke run
#
# A bare GPU machine with torch + torchvision + lightning + torchmetrics needs the venv's
# pure-Python packages (hydra, omegaconf, antlr4, pycocoevalcap without its .jar files) in
# .gpu_deps/ (git-ignored), as for benchmarks/gpu_check.sh. Without Java, METEOR is skipped and
# the Python PTB tokeniser is used (metrics.json "scoring" says so).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/.gpu_deps:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE=disabled HYDRA_FULL_ERROR=1
PY=${PY:-python}
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
exec $PY benchmarks/gpu_trial.py "$@"
