"""The Gradio app as analysts meet it: its own process, all shipped models, driven over HTTP.

``bench_server`` starts the served app (``python -m workbench.ui.serve``, what ``app.py`` runs) on
127.0.0.1, times one ``/compare`` alone (the issue's four methods: attention, gradcam++,
integrated_gradients, occlusion), then lets ``analysts`` gradio_client sessions at
once each run ``/analyze`` and that ``/compare``, and reads the server's peak RSS (VmHWM) at the end.
The app's queue (concurrency limits per event) is what bounds memory under load; this measures it.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["COMPARE_METHODS", "bench_server"]

COMPARE_METHODS = ["attention", "gradcam++", "integrated_gradients", "occlusion"]
_START_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_serving(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the app exited with code {server.returncode} before serving:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"the app did not serve {url} within {_START_TIMEOUT_S} s (log: {log})")


def _peak_rss_mb(pid: int) -> float:
    from workbench.explain.explainers.budget import status_mb

    peak = status_mb("VmHWM", pid)
    if peak is None:
        raise RuntimeError(f"no VmHWM for process {pid} (Linux only)")
    return peak


def _session(url: str, image: Path) -> dict[str, float]:
    """One analyst: analyze, then compare; wall seconds of each as the client sees them."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    start = time.perf_counter()
    client.predict(handle_file(str(image)), False, api_name="/analyze")
    analyzed = time.perf_counter()
    client.predict(handle_file(str(image)), "predicted", COMPARE_METHODS, None, api_name="/compare")
    return {"analyze_s": analyzed - start, "compare_s": time.perf_counter() - analyzed}


def bench_server(image_path: Path, repeats: int, analysts: int = 8) -> dict[str, object]:
    """One ``/compare`` alone (target <= 5 s), then ``analysts`` at once; the server's peak RSS
    (target <= 2.5 GB) and the wall times each analyst saw (queueing included)."""
    from gradio_client import Client, handle_file

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
    log = Path(tempfile.mkstemp(prefix="drwb-bench-server-", suffix=".log")[1])
    with log.open("w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "workbench.ui.serve"], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        _wait_until_serving(url, server, log)
        client = Client(url, verbose=False)
        client.predict(handle_file(str(image_path)), False, api_name="/analyze")  # warm the models
        alone = []
        for _ in range(max(1, repeats // 5)):
            start = time.perf_counter()
            client.predict(
                handle_file(str(image_path)), "predicted", COMPARE_METHODS, None, api_name="/compare"
            )
            alone.append(time.perf_counter() - start)
        loaded_mb = _peak_rss_mb(server.pid)
        start = time.perf_counter()
        with ThreadPoolExecutor(analysts) as pool:
            sessions = list(pool.map(lambda _: _session(url, image_path), range(analysts)))
        wall = time.perf_counter() - start
        peak = _peak_rss_mb(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    return {
        "compare_alone_median_s": statistics.median(alone),
        "compare_methods": COMPARE_METHODS,
        "target_compare_s": 5.0,
        "analysts": analysts,
        "all_sessions_s": wall,
        "analyze_median_s": statistics.median(s["analyze_s"] for s in sessions),
        "analyze_max_s": max(s["analyze_s"] for s in sessions),
        "compare_median_s": statistics.median(s["compare_s"] for s in sessions),
        "compare_max_s": max(s["compare_s"] for s in sessions),
        "peak_rss_after_one_analyst_mb": loaded_mb,
        "peak_rss_mb": peak,
        "target_mb": 2560.0,
    }
