#!/usr/bin/env bash
# Type-check the gpulens package with mypy (config in pyproject.toml), on the package view of tools/view.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/view.sh"
make_view
cd "$VIEW"
exec "${PYTHON:-$REPO/.venv/bin/python}" -m mypy --config-file "$REPO/pyproject.toml" \
    --cache-dir "$REPO/build/mypy-cache" gpulens
