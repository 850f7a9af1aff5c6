#!/usr/bin/env bash
# Live charts of a Ray that is already running (a cluster's head node, a study started elsewhere): Prometheus
# against the Ray session's metrics export, bound to 127.0.0.1, in the foreground until Ctrl-C; it prints the
# graph URL with raykd's queries (one line per trial). Installs Debian's prometheus package when it is missing
# and root or sudo allows (as scripts/e2e_browser.sh does for Chromium); says how to get one otherwise.
# A study started with `python -m raykd tune --monitor` needs none of this: it starts and stops its own.
#
#   scripts/monitor.sh [--session-dir /tmp/ray/session_latest] [--data .raykd/prometheus] [--port N]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! bash scripts/install_tools.sh prometheus; then
  echo "[monitor] no prometheus binary: apt install prometheus, or the release tarball from" \
       "https://prometheus.io/download/ on PATH" >&2
  exit 2
fi
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m raykd.ray_layer.live_view "$@"
