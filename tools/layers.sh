#!/usr/bin/env bash
# Check the architecture's layers (import-linter contracts in pyproject.toml) on the package view of
# tools/view.sh; prints only the broken contracts.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/view.sh"
make_view
cd "$VIEW"
PY="${PYTHON:-$REPO/.venv/bin/python}"
if ! out=$(PYTHONPATH="$VIEW" "$PY" -c 'import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())' \
      "$REPO/pyproject.toml" --no-cache 2>&1); then
  echo "$out" | sed -n '/Broken contracts/,$p'
  exit 1
fi
