#!/usr/bin/env bash
# The GPU path, from install to figures, in one script (issue 19): under 8 minutes on a fresh GPU machine.
#
#   bench/gpu.sh [--platform CUDA|CPU]     (default CUDA; CPU is the dry run for machines without a GPU)
#
# 1. installs with the README's set-up (`make setup`; quick where .venv is installed already; with
#    LATF_PYTHON=/path/to/python, that interpreter is used as it is and nothing is installed);
# 2. runs the tests marked `cuda` (tests/test_cuda.py; they skip, saying why, without a GPU);
# 3. measures, each as a ratio within one run on the same machine:
#    - ns/day of plain MD for alanine dipeptide (OBC2) and chignolin (OBC2), and with the learned-CV
#      metadynamics bias through the native and the TorchForce backends, the latter with and without
#      CUDA graphs (bench/bias_overhead.py --platform);
#    - LaTF training time on the three-hole benchmark data on the GPU against one CPU thread
#      (bench/threehole_data.py, bench/train_threehole.py --device).
# Prints one JSON line per figure and writes everything (logs, figures.jsonl) under $OUT (default
# bench_out/), so that the figures come back from a lent device machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PLATFORM=CUDA
if [[ "${1:-}" == "--platform" ]]; then PLATFORM="${2:?--platform needs a name}"; fi
case "$PLATFORM" in CUDA | OpenCL) DEVICE=cuda ;; CPU) DEVICE=cpu ;; *) echo "gpu.sh: unknown platform $PLATFORM" >&2; exit 2 ;; esac
OUT="${OUT:-bench_out}"
mkdir -p "$OUT"
FIGURES="$OUT/figures.jsonl"
: > "$FIGURES"
started=$(date +%s)
figure() { echo "$1" | tee -a "$FIGURES"; }

if [[ -n "${LATF_PYTHON:-}" ]]; then  # an interpreter that already has the package and its stack: no install
    PY="$LATF_PYTHON"
else
    make setup > "$OUT/setup.log" 2>&1 || { tail -20 "$OUT/setup.log" >&2; echo "gpu.sh: make setup failed" >&2; exit 1; }
    PY=.venv/bin/python
fi
figure "{\"figure\": \"setup_s\", \"value\": $(($(date +%s) - started)), \"platform\": \"$PLATFORM\"}"
$PY -c 'import latf_openmm, openmm, torch; print("platforms:", [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())], "torch.cuda:", torch.cuda.is_available())' | tee "$OUT/platforms.txt"

set +e
$PY -m pytest -m cuda tests/test_cuda.py -q -rs > "$OUT/cuda_tests.log" 2>&1
tests_rc=$?
set -e
figure "{\"figure\": \"cuda_tests\", \"exit_code\": $tests_rc, \"result\": \"$(tail -1 "$OUT/cuda_tests.log")\"}"

for system in ala2_obc2 chignolin; do
    $PY bench/bias_overhead.py --system "$system" --platform "$PLATFORM" --rounds 5 --steps 2000 \
        --methods native,torch,torch_nographs 2> "$OUT/bias_overhead_$system.log" | while read -r line; do
        figure "$line"
    done
done

data="$OUT/threehole_0.75.npz"
$PY bench/threehole_data.py "$data" > "$OUT/threehole_data.log" 2>&1
for device in cpu "$DEVICE"; do
    $PY bench/train_threehole.py "$data" --threads 1 --device "$device" 2> "$OUT/train_$device.log" | while read -r line; do
        figure "$line"
    done
    [[ "$DEVICE" == cpu ]] && break  # the dry run: one CPU measurement
done
figure "{\"figure\": \"total_s\", \"value\": $(($(date +%s) - started)), \"platform\": \"$PLATFORM\"}"
