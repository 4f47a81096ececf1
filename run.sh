#!/usr/bin/env bash
# Set up ./.venv (once) and run gpulens.  With no arguments it serves the
# dashboard on http://127.0.0.1:8050: your runs in ./gpulens-runs (or
# $GPULENS_DIR), or the real recorded runs in sample_runs/ while there are none.
set -euo pipefail
source "$(dirname "$0")/tools/venv.sh"
ensure_venv run
if [ "$#" -eq 0 ]; then
  set -- dashboard
fi
exec "$VENV/bin/gpulens" "$@"
