#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one command (for a GPU machine lent for a few minutes): the CUDA tests
# (tests/test_cuda.py; they skip elsewhere) and the training cost per epoch on the GPU of the runs of the
# paper's Table 2 (cifar10-cpu: SmallCNN, the verification setting) and of the paper profile's PreActResNet18
# runs (benchmarks/bench_epoch.py). Writes the test log and benchmarks/results/epoch_<profile>_cuda.{json,md},
# and copies them to $1 when given.
#   bash benchmarks/gpu_checks.sh [OUT_DIR]
# Needs python3 with torch, numpy, pandas, pyyaml, tqdm, pytest and pyautoattack (no DVC, papermill or data:
# random inputs). Where pyautoattack is missing, put its wheel in .whl/ (pip download --no-deps pyautoattack==0.2.0)
# and it is installed into /tmp/site first.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-benchmarks/results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! python3 -c "import pyautoattack" 2>/dev/null && ls .whl/pyautoattack-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/pyautoattack-*.whl
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log"
rc=${PIPESTATUS[0]}
(cd benchmarks && python3 bench_epoch.py --profile cifar10-cpu --device cuda \
   --runs standard hamming_stability_verify rs_loss pgd_at) 2>&1 | tee "$out/bench_epoch_cuda.log"
(cd benchmarks && python3 bench_epoch.py --profile paper --device cuda \
   --runs standard hamming_stability pgd_at) 2>&1 | tee -a "$out/bench_epoch_cuda.log"
[ "$out" != benchmarks/results ] && cp benchmarks/results/epoch_*_cuda.* "$out/" 2>/dev/null
exit "$rc"
