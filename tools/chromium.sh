# Shared by test.sh: make sure a Chromium from Debian's packages is there for the browser tests.
# Never a browser download by a tool (Playwright drives this binary through executable_path).
# usage: source tools/chromium.sh; ensure_chromium
ensure_chromium() {
  if [ -n "${GPULENS_CHROMIUM:-}" ] && [ -x "${GPULENS_CHROMIUM}" ]; then return 0; fi
  if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then return 0; fi
  local sudo=""
  if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; else
      echo "gpulens: Chromium is missing and this user cannot install packages (no root, no sudo);" \
           "install it with: apt-get install chromium" >&2
      return 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "gpulens: Chromium is missing and there is no apt-get here; install Chromium and set GPULENS_CHROMIUM" >&2
    return 1
  fi
  echo "gpulens: installing Chromium (Debian package) for the browser tests (once)" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >&2
}
