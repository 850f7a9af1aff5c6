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
status=0
$SUDO timeout 600 apt-get update -q >/dev/null || { echo "[tools] apt-get update failed (no package mirror reachable?)" >&2; exit 1; }
for pkg in "${missing[@]}"; do  # one at a time: a package this system lacks does not keep the others out
  start=$(date +%s)
  # no recommends for prometheus: Debian's would add node-exporter, a daemon of its own
  extra=(); [[ $pkg != chromium ]] && extra=(--no-install-recommends)
  if $SUDO env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q "${extra[@]}" "$pkg" \
       </dev/null >/dev/null; then
    echo "[tools] installed $pkg (apt) in $(( $(date +%s) - start )) s"
  else
    echo "[tools] apt could not install $pkg" >&2
    status=1
  fi
done
exit $status
