#!/usr/bin/env bash
# Set up ./.venv with the test dependencies, Chromium and g++ (once each), check the code (ruff, mypy) and run
# the whole suite.  Extra arguments go to pytest (e.g. ./test.sh -m gpu, ./test.sh -k steps);
# GPULENS_SKIP_CHECKS=1 skips ruff, mypy and the import layers (quick local reruns; CI always runs them).
set -euo pipefail
source "$(dirname "$0")/tools/venv.sh"
source "$(dirname "$0")/tools/system.sh"
started=$SECONDS
ensure_venv test
ensure_chromium
ensure_compiler
echo "gpulens test: environment ready ($VENV, torch $TORCH_TEST_VERSION CPU, Chromium) in $((SECONDS - started)) s" >&2
export GPULENS_REQUIRE_BROWSER=1  # the browser tests fail, rather than skip, without Chromium
cd "$REPO"
if [ -z "${GPULENS_SKIP_CHECKS:-}" ]; then
  echo "gpulens test: ruff, mypy and the import layers" >&2
  "$VENV/bin/python" -m ruff check -q gpulens hooks profiler dashboard
  PYTHON="$VENV/bin/python" tools/typecheck.sh
  PYTHON="$VENV/bin/python" tools/layers.sh
fi
# two pytest workers per core (pytest-xdist), handed tests as they free up (worksteal), unless the arguments choose:
# most tests wait on subprocesses, sockets and sleeps; the suite used half of two cores with one worker per core
# (420 s), 267-350 s with four
workers=(-n "${GPULENS_TEST_WORKERS:-$(( $(nproc) * 2 ))}" --dist worksteal)
for arg in "$@"; do
  case "$arg" in -n|-n*|--numprocesses*|no:xdist|--dist*) workers=() ;; esac
done
# the suite starts a few hundred Python processes that import gpulens from this checkout: with
# PYTHONDONTWRITEBYTECODE set (as on some CI machines) each compiled the same ~40 modules again (~0.25 s of CPU
# apiece); let them keep their bytecode beside the sources (__pycache__, ignored by git)
unset PYTHONDONTWRITEBYTECODE
echo "gpulens test: pytest, the whole suite (4½-11 minutes on 2 quiet cores; the first run also compiles" \
     "torch.compile's kernels)" >&2
exec "$VENV/bin/python" -m pytest "${workers[@]}" "$@"
