# Shared by test.sh: the system packages the tests need, from Debian: Chromium for the browser tests (never a
# browser download by a tool: Playwright drives this binary through executable_path) and a C++ compiler for
# torch.compile's CPU backend.  apt's output goes to a log that is shown only if something fails.
# usage: source tools/system.sh; ensure_chromium; ensure_compiler

_apt_install() {  # _apt_install WHAT PACKAGE...
  local what="$1"; shift
  local sudo=""
  if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; else
      echo "gpulens: $what is missing and this user cannot install packages (no root, no sudo);" \
           "install it with: apt-get install $*" >&2
      return 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "gpulens: $what is missing and there is no apt-get here; install: $*" >&2
    return 1
  fi
  local log
  log="$(mktemp -t gpulens-apt.XXXXXX)"
  echo "gpulens: installing $what (Debian: $*), once: about a minute" >&2
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"; } \
      >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "gpulens: installing $* failed (full log: $log)" >&2
    return 1
  fi
  rm -f "$log"
}

ensure_chromium() {
  if [ -n "${GPULENS_CHROMIUM:-}" ] && [ -x "${GPULENS_CHROMIUM}" ]; then return 0; fi
  if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then return 0; fi
  _apt_install "Chromium for the browser tests" chromium
}

ensure_compiler() {
  if command -v g++ >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1; then return 0; fi
  _apt_install "a C++ compiler for torch.compile's CPU backend" g++
}
