#!/usr/bin/env bash
# Set up ./.venv (once) and run gpulens.  With no arguments it shows the
# report of a real recorded run shipped in sample_runs/.
set -euo pipefail
source "$(dirname "$0")/tools/venv.sh"
ensure_venv run
if [ "$#" -eq 0 ]; then
  set -- report "$REPO/sample_runs/h100-cnn-input-bound"
fi
exec "$VENV/bin/gpulens" "$@"
