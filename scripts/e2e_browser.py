"""Look at a study the way a user does: run a tiny experiment on a local Ray, then open the Ray
dashboard, TensorBoard's HParams view and — the study ran with ``--monitor`` — Prometheus's graph of the
trials' live gauges in headless Chromium (over the DevTools protocol, the dashboard token set as its session
cookie) and save screenshots. Used by scripts/e2e_browser.sh.

    python scripts/e2e_browser.py --out DIR [--chromium PATH] [--experiment EXP_DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1600,1100",
                  "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except urllib.error.HTTPError:
            return  # answering (e.g. 401) is up
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


class Browser:
    """Headless Chromium driven over the DevTools protocol (aiohttp websocket)."""

    def __init__(self, chromium: str):
        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="raykd-chromium-")
        self.proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                                      f"--remote-debugging-port={self.port}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_http(f"http://127.0.0.1:{self.port}/json/version", 60)
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list").read())
        self.ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        self._id = 0

    async def _call(self, ws, method: str, **params):
        self._id += 1
        await ws.send_json({"id": self._id, "method": method, "params": params})
        while True:
            msg = await ws.receive_json(timeout=60)
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def _shoot(self, url: str, out: Path, wait_s: float, cookies: list[dict], filters: dict[str, str]):
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(self.ws_url, max_msg_size=0) as ws:
                await self._call(ws, "Network.enable")
                await self._call(ws, "Page.enable")
                await self._call(ws, "Network.clearBrowserCookies")
                for c in cookies:
                    await self._call(ws, "Network.setCookie", **c)
                await self._call(ws, "Page.navigate", url=url)
                await asyncio.sleep(wait_s)
                for label, text in filters.items():  # type into the text field labelled ``label``
                    js = ("(() => { const i = [...document.querySelectorAll('input')].find(e => "
                          "((e.closest('.MuiFormControl-root') || {}).textContent || '').trim().startsWith("
                          f"{json.dumps(label)})); if (!i) return false; i.focus(); return true; }})()")
                    found = await self._call(ws, "Runtime.evaluate", expression=js, returnByValue=True)
                    if found.get("result", {}).get("value"):
                        await self._call(ws, "Input.insertText", text=text)
                        await asyncio.sleep(3)
                shot = await self._call(ws, "Page.captureScreenshot", format="png")
                text = await self._call(ws, "Runtime.evaluate", expression="document.body.innerText",
                                        returnByValue=True)
        out.write_bytes(base64.b64decode(shot["data"]))
        return text.get("result", {}).get("value") or ""

    def screenshot(self, url: str, out: Path, wait_s: float = 8.0, cookies: list[dict] | None = None,
                   filters: dict[str, str] | None = None) -> Path:
        """Open ``url`` (cookies cleared, then ``cookies`` set), wait ``wait_s`` seconds for it to
        render, type ``filters`` into the labelled text fields, save a PNG at ``out``; returns ``out``."""
        self.look(url, out, wait_s, cookies, filters)
        return out

    def look(self, url: str, out: Path, wait_s: float = 8.0, cookies: list[dict] | None = None,
             filters: dict[str, str] | None = None) -> str:
        """As ``screenshot``; returns the text the page shows (``document.body.innerText``)."""
        text = asyncio.run(self._shoot(url, out, wait_s, cookies or [], filters or {}))
        print(f"[e2e] {url} → {out} ({out.stat().st_size:,} bytes)", flush=True)
        return text

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def prometheus_view(exp: Path, out: Path):
    """Prometheus reopened on the data a ``--monitor`` study kept (None, with the reason, without a binary); writes
    the series count and samples of ``ray_raykd_train_loss`` to ``out/prometheus.json``."""
    from raykd.ray_layer.cluster import session_dir
    from raykd.ray_layer.live_view import Prometheus, prometheus_binary

    binary = prometheus_binary()
    if binary is None or not (exp / "prometheus").is_dir():
        print("[e2e] no Prometheus screenshot: no prometheus binary on PATH (apt install prometheus)", flush=True)
        return None
    prom = Prometheus(binary, session_dir(), exp / "prometheus").start()
    loss = prom.query_range("ray_raykd_train_loss", 3600)
    (out / "prometheus.json").write_text(json.dumps({s["metric"]["trial_id"]: len(s["values"]) for s in loss}))
    return prom


def tensorboard_shots(browser: Browser, exp: Path, out: Path) -> subprocess.Popen:
    """TensorBoard on ``exp`` (a free port on 127.0.0.1) and screenshots of its HParams and scalar views;
    returns its process (the caller stops it)."""
    port = free_port()
    tb = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(exp), "--host", "127.0.0.1",
                           "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/data/plugins_listing")
    browser.screenshot(f"http://127.0.0.1:{port}/#hparams", out / "tensorboard_hparams.png", 12)
    browser.screenshot(f"http://127.0.0.1:{port}/#timeseries", out / "tensorboard_scalars.png", 12)
    return tb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / ".raykd" / "e2e"))
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import ray

    from raykd.ray_layer.live_view import graph_url
    from raykd.ray_layer.monitoring import auth_token
    from raykd.ray_layer.cluster import start_local_ray
    from raykd.ray_layer.tune import main as tune_main

    from raykd.ray_layer.live_view import REPORT_INTERVAL_ENV, REPORT_INTERVAL_MS

    os.environ.setdefault(REPORT_INTERVAL_ENV, REPORT_INTERVAL_MS)  # as a --monitor study's own Ray would
    ctx, _ = start_local_ray()
    dashboard = f"http://{ctx.dashboard_url}"
    storage = out / "exp"
    tb = browser = None
    try:
        rc = tune_main(["--monitor", "--config", str(ROOT / "search_spaces" / "smoke.yaml"), "--storage", str(storage),
                        "--name", "e2e", "--set", f"data.work_dir={ROOT / '.raykd' / 'data'}",
                        "search.num_samples=4", "train.steps=120", "train.eval_every=40", "train.eval_pairs=128",
                        "search.confirm.top_k=0"])
        print(f"[e2e] study exit code {rc}", flush=True)
        exp = storage / "e2e"
        trials = sorted(p.name for p in exp.glob("trial_*"))
        (out / "trials.json").write_text(json.dumps(trials))
        browser = Browser(args.chromium)
        token = auth_token()
        cookie = [{"name": "ray-authentication-token", "value": token, "url": dashboard}] if token else []
        browser.screenshot(dashboard + "/#/overview", out / "dashboard_overview.png", 10, cookie)
        browser.screenshot(dashboard + "/#/jobs", out / "dashboard_jobs.png", 8, cookie)
        browser.screenshot(dashboard + "/#/actors", out / "dashboard_actors.png", 8, cookie)
        browser.screenshot(dashboard + "/#/actors", out / "dashboard_train_workers.png", 8, cookie,
                           {"Class": "RayTrainWorker"})
        browser.screenshot(dashboard + "/#/overview", out / "dashboard_without_token.png", 8, [])
        prom = prometheus_view(exp, out)
        if prom is not None:  # what --monitor recorded while the trials ran, reopened on its data
            try:
                browser.screenshot(graph_url(prom.base, ("ray_raykd_train_loss",
                                                         "ray_raykd_val_metric or max by (reference) (ray_raykd_reference)"),
                                             range_input="5m"), out / "prometheus_graph.png", 10)
                # the lead metric alone, so its panel is on screen: each trial's evaluations beside the
                # references' flat lines (teacher, init, no_distill) that span the search
                browser.screenshot(graph_url(prom.base, ("ray_raykd_val_metric or max by (reference) "
                                                         "(ray_raykd_reference)",), range_input="5m"),
                                   out / "prometheus_references.png", 10)
            finally:
                prom.stop()
        tb = tensorboard_shots(browser, exp, out)
        print(f"[e2e] {len(trials)} trials: {', '.join(trials)}")
        print(f"[e2e] screenshots in {out}")
        return 0 if rc == 0 else 1
    finally:
        if browser is not None:
            browser.close()
        if tb is not None:
            tb.terminate()
            tb.wait(10)
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
