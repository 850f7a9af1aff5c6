#!/usr/bin/env bash
# Installs the system tools the live view needs — Debian / Ubuntu packages named on the command line (prometheus,
# chromium) — with apt when their binary is missing and root or passwordless sudo allows; otherwise says why not
# and exits 1 (nothing installed). Used by scripts/test.sh (so that CI runs the live-view tests instead of skipping
# them), scripts/monitor.sh and scripts/e2e_browser.sh.
#
#   scripts/install_tools.sh prometheus chromium
set -uo pipefail
missing=()
for pkg in "$@"; do
  case $pkg in
    chromium) command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=("$pkg") ;;
    *) command -v "$pkg" >/dev/null 2>&1 || missing+=("$pkg") ;;
  esac
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[tools] ${missing[*]} missing and no apt-get here: install them from your system's packages" >&2
  exit 1
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo"; else
    echo "[tools] ${missing[*]} missing and no root / sudo to install them: apt install ${missing[*]}" >&2
    exit 1
  fi
fi
start=$(date +%s)
echo "[tools] installing ${missing[*]} (apt)"
if $SUDO timeout 600 apt-get update -q >/dev/null && \
   DEBIAN_FRONTEND=noninteractive $SUDO timeout 600 apt-get install -y -q "${missing[@]}" >/dev/null; then
  echo "[tools] installed ${missing[*]} in $(( $(date +%s) - start )) s"
else
  echo "[tools] apt could not install ${missing[*]} (no package mirror reachable?)" >&2
  exit 1
fi
