#!/usr/bin/env bash
# The GPU path, proven in one command on your own CUDA machine: within 8 minutes, writes to $OUT (or
# bench/results/gpu-<date>/) the device and versions, the CUDA tests (pytest -m cuda), the benchmark
# with and without torch.compile, and the whole study through the stage modules (no DVC; W&B offline)
# on data/raw/cifar10-jpg.tar.gz, with the defaults, the fastest options and train.replicas=8.
# See bench/gpu_check.py.
#
#   bash bench/gpu_check.sh               # needs CUDA; without it, says so and does nothing
#   bash bench/gpu_check.sh --cpu-smoke   # the same steps on the CPU, tiny: checks the script itself
#   bash bench/gpu_check.sh --data /path/to/cifar10-jpg.tar.gz   # the data elsewhere
#
# Environment: PYTHON (default python3), OUT, GPU_CHECK_DATA (default data/raw/cifar10-jpg.tar.gz),
# GPU_CHECK_BUDGET_S (default 480).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# A missing Python or PyTorch is a setup error (exit 2), not "no GPU here" (exit 0).
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    printf 'gpu_check: PYTHON=%q: not found; nothing done\n' "$PYTHON"  # %q: a control character as its escape
    exit 2
fi
# Found, not imported (importing PyTorch takes seconds): the CUDA check below imports it, and --cpu-smoke's options
# are refused before the steps that import it.
no_torch() {
    printf 'gpu_check: %q cannot import torch: install the requirements (make install); nothing done\n' "$PYTHON"
    exit 2
}
"$PYTHON" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)' >/dev/null 2>&1 || no_torch
smoke=0 known=1  # options in any order, as gpu_check.py takes them
for arg in "$@"; do
    case $arg in
        --cpu-smoke) smoke=1 ;;
        --out|--out=*|--data|--data=*) ;;
        -*) known=0 ;;  # --help, or a typo (--cpu): gpu_check.py answers it, before it imports PyTorch
    esac
done
[[ $# -gt 0 && ( ${!#} == --out || ${!#} == --data ) ]] && known=0  # its value missing: a usage error, too
if [[ $smoke == 0 && $known == 1 ]]; then
    # exit 3: PyTorch is there but does not import (a broken install), which is not "no GPU"
    cuda=0
    "$PYTHON" -c 'import sys
try:
    import torch
except Exception:
    sys.exit(3)
sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1 || cuda=$?
    if [[ $cuda == 3 ]]; then
        no_torch
    elif [[ $cuda != 0 ]]; then
        printf 'gpu_check: no CUDA device visible to PyTorch (%q) on this machine; nothing done\n' "$PYTHON"
        exit 0
    fi
fi
exec "$PYTHON" bench/gpu_check.py "$@"
