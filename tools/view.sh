#!/usr/bin/env bash
# Sourced by typecheck.sh and layers.sh: the source folders are mapped into the package by setuptools
# (profiler/ -> gpulens.profiler, ...), which neither mypy nor import-linter can follow from the folders; a
# tree of links under build/typecheck/ gives them the package as Python imports it.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VIEW="$REPO/build/typecheck"
make_view() {
  rm -rf "$VIEW"
  mkdir -p "$VIEW/gpulens"
  for f in "$REPO"/gpulens/*.py; do ln -s "$f" "$VIEW/gpulens/"; done
  ln -s "$REPO/profiler" "$VIEW/gpulens/profiler"
  ln -s "$REPO/dashboard" "$VIEW/gpulens/dashboard"
  ln -s "$REPO/hooks" "$VIEW/gpulens/hooks"
  ln -s "$REPO/hooks/integrations" "$VIEW/gpulens/integrations"
}
