# Shared by run.sh and test.sh: create/reuse ./.venv and install what a
# profile needs, skipping pip entirely when nothing changed since last time.
# usage: source tools/venv.sh; ensure_venv run|test
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GPULENS_VENV:-$REPO/.venv}"
PY="${PYTHON:-python3}"
TORCH_TEST_VERSION="2.13.0"  # the CPU build on this kind of machine; never let pip pick a CUDA build

ensure_venv() {
  local profile="$1"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "gpulens: creating $VENV" >&2
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.gpulens-$profile.stamp"
  local want
  want="$(cat "$REPO/pyproject.toml" "$REPO/tools/venv.sh" | sha256sum | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  echo "gpulens: installing the $profile environment into $VENV (once: a few minutes; pip's output is in" \
       "$VENV/.gpulens-install.log)" >&2
  local log="$VENV/.gpulens-install.log"
  if ! {
    "$VENV/bin/python" -m pip install -q --upgrade pip &&
    if [ "$profile" = "test" ]; then
      "$VENV/bin/python" -m pip install -q "torch==$TORCH_TEST_VERSION" &&
      "$VENV/bin/python" -m pip install -q -e "$REPO[test]"
    else
      "$VENV/bin/python" -m pip install -q -e "$REPO"
    fi
  } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "gpulens: installing the $profile environment failed (full log: $log)" >&2
    return 1
  fi
  echo "$want" > "$stamp"
  # a test install is a superset of a run install
  if [ "$profile" = "test" ]; then echo "$want" > "$VENV/.gpulens-run.stamp"; fi
}
