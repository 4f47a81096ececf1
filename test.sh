#!/usr/bin/env bash
# Set up ./.venv with the test dependencies (once) and run the whole suite.
# Extra arguments go to pytest (e.g. ./test.sh -m gpu, ./test.sh -k steps).
set -euo pipefail
source "$(dirname "$0")/tools/venv.sh"
ensure_venv test
cd "$REPO"
exec "$VENV/bin/python" -m pytest "$@"
