#!/usr/bin/env bash
# One short session on a CUDA machine: the CUDA-only tests, the GPU sections of run_all.py,
# and the offline demo on the GPU for both decoders plus SCST from the LSTM demo's checkpoint.
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# Results (logs, run_all.json, each run's metrics.json and wall time) go into OUT_DIR. A bare
# GPU machine with torch + lightning + torchmetrics needs the pure-Python packages of the venv
# on PYTHONPATH (hydra, omegaconf, antlr4, pycocoevalcap without its .jar files, pytest, rich):
# put them in .gpu_deps/ (git-ignored). Without Java, scores use the Python PTB tokenizer.
set -u
OUT=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/.gpu_deps:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE=disabled HYDRA_FULL_ERROR=1
PY=${PY:-python}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" | tee -a "$OUT/gpu.txt"

demo() {  # name, then train.py overrides
  local name=$1
  shift
  local start=$SECONDS
  timeout 85 $PY train.py trainer=gpu print_config=false data.quiet=true callbacks.progress_bar=null \
    paths.output_dir="$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: rc=$? wall_s=$((SECONDS - start))" | tee -a "$OUT/walltimes.txt"
}
demo demo_lstm experiment=demo
demo demo_transformer experiment=demo model/decoder=transformer
demo demo_scst experiment=demo_scst init_from="$OUT/demo_lstm/checkpoints/best.ckpt"
for name in demo_lstm demo_transformer demo_scst; do
  $PY -c "import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[2], {k: round(v, 4) for k, v in m.items() if k.startswith(('test/', 'val/')) and isinstance(v, float)})" \
    "$OUT/$name/metrics.json" "$name" 2>/dev/null | tee -a "$OUT/walltimes.txt"
done

# The CUDA-only tests (skipped on CPUs), with the unroll-equality tests beside them. The ini's
# addopts are replaced: they ask for pytest-xdist, which a bare GPU machine may lack.
timeout 90 $PY -m pytest -q -p no:cacheprovider -o addopts="--strict-markers -ra" \
  tests/decoders/test_decoder_paths.py \
  tests/run/test_reliability.py::test_guard_on_gpu_names_the_first_bad_step_when_it_reads_the_flag \
  tests/data/test_pixels.py::test_gpu_decode_agrees_with_pillow_within_the_stated_tolerance \
  tests/data/test_resident.py::test_resident_on_cuda_gives_the_loader_values \
  > "$OUT/pytest.txt" 2>&1
tail -5 "$OUT/pytest.txt"

timeout 170 $PY benchmarks/run_all.py --gpu-only --json > "$OUT/run_all.txt" 2>&1
tail -1 "$OUT/run_all.txt" > "$OUT/run_all.json"
grep -v '^{' "$OUT/run_all.txt" | tail -12

