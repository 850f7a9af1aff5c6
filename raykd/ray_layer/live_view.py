"""Live charts of a running study: a Prometheus server scraping the Ray nodes' metrics export (the targets Ray's
own generated scrape configuration lists, ``<session>/prom_metrics_service_discovery.json``), bound to
127.0.0.1, its data under the experiment directory, and the URL of its graph page with raykd's queries filled
in (one line per trial: ``ray_raykd_train_loss``, the validation metric with the references, throughput).

``python -m raykd tune --monitor`` starts it with the study and stops it with the study; for a Ray already
running (a cluster, a study started elsewhere), ``scripts/monitor.sh`` runs it in the foreground::

    python -m raykd.ray_layer.live_view [--session-dir /tmp/ray/session_latest] [--data DIR] [--port N]

Without a ``prometheus`` binary on PATH it says how to get one (Debian / Ubuntu: ``apt install prometheus``;
else the release tarball from prometheus.io) and the study runs on without it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

SCRAPE_INTERVAL_S = 2  # Ray's own configuration scrapes every 10 s; a trial's curve wants more points
# how often a Ray started by a monitored study sends its workers' metrics to the node's export (Ray's default:
# 10 s, which would hide a short trial entirely), and how long a monitored study's Prometheus stays up after
# the study so that its last reports are scraped
REPORT_INTERVAL_ENV, REPORT_INTERVAL_MS = "RAY_metrics_report_interval_ms", "2000"
SETTLE_S = 3 * SCRAPE_INTERVAL_S
QUERIES = ("ray_raykd_train_loss", "ray_raykd_val_metric or max by (reference) (ray_raykd_reference)",
           "ray_raykd_tokens_per_s")
HOW_TO_GET = ("no prometheus binary on PATH: the live charts need one (Debian / Ubuntu: apt install prometheus — "
              "scripts/monitor.sh does it where root or sudo allows; elsewhere the release tarball from "
              "https://prometheus.io/download/). The study runs on without them: the Ray dashboard and TensorBoard "
              "show it too")


def prometheus_binary() -> str | None:
    """The ``prometheus`` executable on PATH, or None."""
    return shutil.which("prometheus")


def scrape_config(session_dir: str | Path, interval_s: int = SCRAPE_INTERVAL_S) -> str:
    """A Prometheus configuration (YAML text) scraping the Ray nodes listed in the session's service-discovery
    file every ``interval_s`` seconds (the same targets as Ray's generated ``metrics/prometheus/prometheus.yml``)."""
    sd = Path(session_dir).absolute() / "prom_metrics_service_discovery.json"
    return ("global:\n"
            f"  scrape_interval: {interval_s}s\n"
            f"  evaluation_interval: {interval_s}s\n"
            "scrape_configs:\n"
            "- job_name: ray\n"
            "  file_sd_configs:\n"
            f"  - files: [{json.dumps(str(sd))}]\n")


def graph_url(base: str, queries=QUERIES, range_input: str = "30m") -> str:
    """The URL of Prometheus's graph page at ``base`` with one panel per query (a line per series)."""
    params = {}
    for i, q in enumerate(queries):
        params.update({f"g{i}.expr": q, f"g{i}.tab": "0", f"g{i}.range_input": range_input})
    return f"{base}/graph?{urllib.parse.urlencode(params)}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A Prometheus server of this process: ``start`` writes its configuration and starts it under ``data_dir``
    (configuration, TSDB, log), bound to 127.0.0.1; ``stop`` ends it. ``query`` reads its HTTP API."""

    def __init__(self, binary: str, session_dir: str | Path, data_dir: str | Path, port: int | None = None):
        self.binary, self.session_dir, self.data_dir = binary, Path(session_dir), Path(data_dir)
        self.port = port or _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, ready_timeout_s: float = 60) -> "Prometheus":
        """Start the server and wait until it answers ready; RuntimeError (with its log's tail) otherwise."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "prometheus.yml"
        config.write_text(scrape_config(self.session_dir))
        log = open(self.data_dir / "prometheus.log", "ab")
        self.proc = subprocess.Popen([self.binary, f"--config.file={config}",
                                      f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        tail = (self.data_dir / "prometheus.log").read_text(errors="replace")[-1500:]
        self.stop()
        raise RuntimeError(f"prometheus did not become ready on {self.base}:\n{tail}")

    def query_range(self, expr: str, seconds: float, step_s: float = SCRAPE_INTERVAL_S) -> list[dict]:
        """The series of ``expr`` over the last ``seconds`` (Prometheus's ``/api/v1/query_range`` result)."""
        end = time.time()
        q = urllib.parse.urlencode({"query": expr, "start": end - seconds, "end": end, "step": step_s})
        with urllib.request.urlopen(f"{self.base}/api/v1/query_range?{q}", timeout=10) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus query {expr!r}: {body}")
        return body["data"]["result"]

    def stop(self, settle_s: float = 0.0) -> None:
        """End the server after ``settle_s`` seconds (a last scrape of what was reported just before), with
        SIGTERM, then SIGKILL after 10 s; its data stays under ``data_dir``."""
        if self.proc is not None and self.proc.poll() is None:
            time.sleep(settle_s)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def start_live_view(session_dir: str | Path, data_dir: str | Path, log=print) -> Prometheus | None:
    """Start Prometheus for a study (``--monitor``) and print its graph URL; None, with a line saying how to get
    one, when there is no binary or it does not start (the study runs on)."""
    binary = prometheus_binary()
    if binary is None:
        log(f"[monitor] {HOW_TO_GET}")
        return None
    try:
        server = Prometheus(binary, session_dir, data_dir).start()
    except (RuntimeError, OSError) as e:
        log(f"[monitor] prometheus did not start ({str(e).splitlines()[0]}); the study runs on without live charts")
        return None
    log(f"[monitor] Prometheus on {server.base} (127.0.0.1 only; data {server.data_dir}), scraping Ray every "
        f"{SCRAPE_INTERVAL_S} s; raykd's charts, one line per trial: {graph_url(server.base)}")
    return server


def main(argv: list[str] | None = None) -> int:
    """``python -m raykd.ray_layer.live_view``: Prometheus for a Ray already running, until Ctrl-C."""
    ap = argparse.ArgumentParser(prog="python -m raykd.ray_layer.live_view", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--session-dir", default="/tmp/ray/session_latest", help="the Ray node's session directory")
    ap.add_argument("--data", default=".raykd/prometheus", help="where Prometheus keeps its data")
    ap.add_argument("--port", type=int, default=None, help="its port on 127.0.0.1 (default: a free one)")
    args = ap.parse_args(argv)
    if not (Path(args.session_dir) / "prom_metrics_service_discovery.json").exists():
        print(f"error: {args.session_dir}: no Ray session with a metrics export there (is Ray running on this node? "
              "--session-dir names another)", file=sys.stderr)
        return 2
    binary = prometheus_binary()
    if binary is None:
        print(f"error: {HOW_TO_GET}", file=sys.stderr)
        return 2
    server = Prometheus(binary, args.session_dir, args.data, args.port).start()
    print(f"[monitor] Prometheus on {server.base}; raykd's charts: {graph_url(server.base)}  (Ctrl-C stops it)",
          flush=True)
    try:
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
