#!/usr/bin/env bash
# Type-check the gpulens package with mypy (config in pyproject.toml).
# The source folders are mapped into the package by setuptools (profiler/ -> gpulens.profiler, ...), which
# mypy cannot follow; a tree of links under build/typecheck/ gives it the package as Python imports it.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VIEW="$REPO/build/typecheck"
rm -rf "$VIEW"
mkdir -p "$VIEW/gpulens"
for f in "$REPO"/gpulens/*.py; do ln -s "$f" "$VIEW/gpulens/"; done
ln -s "$REPO/profiler" "$VIEW/gpulens/profiler"
ln -s "$REPO/dashboard" "$VIEW/gpulens/dashboard"
ln -s "$REPO/hooks" "$VIEW/gpulens/hooks"
ln -s "$REPO/hooks/integrations" "$VIEW/gpulens/integrations"
cd "$VIEW"
exec "${PYTHON:-$REPO/.venv/bin/python}" -m mypy --config-file "$REPO/pyproject.toml" \
    --cache-dir "$REPO/build/mypy-cache" gpulens
