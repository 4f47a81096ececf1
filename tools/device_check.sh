#!/usr/bin/env bash
# One device session's GPU checks, in one call (device time is short: every start and idle minute counts).
#
#   here:    mkdir -p .whl && pip download -d .whl --only-binary=:all: --python-version 3.1X \
#              --platform manylinux2014_x86_64 msgspec rich markdown-it-py mdurl pygments dash-ag-grid \
#              tsdownsample waitress prometheus-client pytest-timeout   (the device machine has no network)
#   device:  run(command="bash tools/device_check.sh", carry=[".whl"], timeout_s=540)
# (2026-12-04 on an H200: 207 s; the GPU tests alone ~50 s)
#
# Writes under $OUT: gpu_tests.log + junit (tests/test_gpu_real.py, figures in gpu_figures.jsonl),
# record.log and sample_runs.tgz (the GPU sample runs, recorded by sample_runs/record.py), env.txt,
# gpm_timing.tgz (tools/gpm_timing_probe.py runs: how GPM readings line up with known GPU activity).
set -u
OUT=${OUT:-/tmp/gpulens-device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 GPULENS_GPU_OUT="$OUT"
{ nvidia-smi -L; nvidia-smi --query-gpu=driver_version,power.limit,clocks.max.sm --format=csv;
  python3 -c 'import sys, torch; print(sys.version); print("torch", torch.__version__, torch.version.cuda)'; } \
  >"$OUT/env.txt" 2>&1
# --no-deps: the device's python may lack dash itself (dash-ag-grid would then ask the missing index for it);
# what gpulens' tests import is all here
python3 -m pip install -q --no-index --find-links .whl --no-deps msgspec rich markdown-it-py mdurl pygments \
  dash-ag-grid tsdownsample waitress prometheus-client pytest-timeout >>"$OUT/env.txt" 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . >>"$OUT/env.txt" 2>&1
python3 -c 'import gpulens, gpulens.profiler; print("gpulens", gpulens.__file__)' >>"$OUT/env.txt" 2>&1

# 1. the GPU test marker, figures to $OUT
timeout "${GPU_TESTS_S:-200}" python3 -m pytest -q -m gpu tests/test_gpu_real.py -p no:cacheprovider \
  --junitxml="$OUT/gpu_tests.xml" >"$OUT/gpu_tests.log" 2>&1
echo "gpu tests rc=$?" >>"$OUT/env.txt"

# 2. the GPU sample runs (each scenario on its own clock; one that runs out is not shipped)
runs=$(mktemp -d)
for spec in ${SCENARIOS:-cnn-input-bound:40 cnn-healthy:45 gpt-small-batch:40 gpt-compiled:80 gpt-memory-limit:80}; do
  s=${spec%%:*}
  timeout "${spec##*:}" python3 sample_runs/record.py --device cuda --only "$s" --seconds "${SECONDS_EACH:-12}" \
    --out "$runs" >>"$OUT/record.log" 2>&1
  rc=$?
  echo "scenario $s rc=$rc" >>"$OUT/record.log"
  if [ $rc -ne 0 ]; then rm -rf "$runs"/*-"$s"; fi
done
rm -rf "$runs/.probe"
for r in "$runs"/*/; do python3 -m gpulens report "$r" >>"$OUT/reports.txt" 2>&1; done
tar -czf "$OUT/sample_runs.tgz" -C "$runs" .
ls -la "$runs" >>"$OUT/record.log"

# 3. GPM timing: runs whose SM activity is known to the millisecond, at several GPM intervals
probe=$(mktemp -d)
for iv in ${GPM_INTERVALS:-0.2 0.5}; do
  timeout 60 python3 tools/gpm_timing_probe.py --out "$probe" --seconds 25 --gpm-interval "$iv" >>"$OUT/record.log" 2>&1
done
tar -czf "$OUT/gpm_timing.tgz" -C "$probe" .
