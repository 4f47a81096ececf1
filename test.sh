#!/usr/bin/env bash
# Set up ./.venv with the test dependencies and Chromium (once each) and run the whole suite.
# Extra arguments go to pytest (e.g. ./test.sh -m gpu, ./test.sh -k steps).
set -euo pipefail
source "$(dirname "$0")/tools/venv.sh"
source "$(dirname "$0")/tools/chromium.sh"
ensure_venv test
ensure_chromium
export GPULENS_REQUIRE_BROWSER=1  # the browser tests fail, rather than skip, without Chromium
cd "$REPO"
exec "$VENV/bin/python" -m pytest "$@"
