#!/usr/bin/env bash
# Set up ./.venv with the test dependencies and Chromium (once each), check the code (ruff, mypy) and run
# the whole suite.  Extra arguments go to pytest (e.g. ./test.sh -m gpu, ./test.sh -k steps);
# GPULENS_SKIP_CHECKS=1 skips ruff and mypy (quick local reruns; CI always runs them).
set -euo pipefail
source "$(dirname "$0")/tools/venv.sh"
source "$(dirname "$0")/tools/chromium.sh"
ensure_venv test
ensure_chromium
export GPULENS_REQUIRE_BROWSER=1  # the browser tests fail, rather than skip, without Chromium
cd "$REPO"
if [ -z "${GPULENS_SKIP_CHECKS:-}" ]; then
  "$VENV/bin/python" -m ruff check gpulens hooks profiler dashboard
  PYTHON="$VENV/bin/python" tools/typecheck.sh
fi
exec "$VENV/bin/python" -m pytest "$@"
