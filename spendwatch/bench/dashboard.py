"""How many workflows the dashboard stays responsive with: `spendwatch bench --dashboard N`.

N workflows' snapshots (built by the real engine from one call each, 40 teams) are published to
the embedded broker's snapshots topic; a real `spendwatch dashboard` process reads them. Printed:
time until its feed caught up, each API route's latency over HTTP (median and worst of 5), its
resident memory, and, where Debian's Chromium and playwright exist, the page's time to first data.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from detectors.engine.monitor import Monitor
from schemas.decode import validate_event
from streams.broker import EmbeddedBroker, free_port

ROUTES = ("summary", "workflows?limit=100", "workflows?sort=hour&limit=1000", "workflows/wf-00042", "teams",
          "series", "alerts", "kills", "outcomes", "movers")
CHROMIUM = Path("/usr/bin/chromium")


def snapshots(n: int, now: float) -> list[tuple[bytes, bytes]]:
    m = Monitor()
    events = [{"type": "usage", "event_id": f"e{i}", "ts": now - 3000 + (i * 2999 / n), "workflow": f"wf-{i:05d}",
               "team": f"team-{i % 40}", "model": "gpt-4o", "input_tokens": 2000 + i % 5000, "output_tokens": 300,
               "run_id": f"r{i}"} for i in range(n)]
    m.process([validate_event(e) for e in events])
    return [(wf.encode(), orjson.dumps(m.snapshot(wf))) for wf in m.workflows]


async def publish(bootstrap: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_request_size=8_000_000)
    await producer.start()
    try:
        futures = [await producer.send("spendwatch.snapshots", value, key=key) for key, value in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def get(url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        body = r.read()
    return time.perf_counter() - started, body


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def page_load_s(url: str) -> float | None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not CHROMIUM.exists():
        return None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        try:
            page = browser.new_page()
            started = time.perf_counter()
            page.goto(url)
            page.wait_for_selector("body[data-loaded]", timeout=60_000)
            return time.perf_counter() - started
        finally:
            browser.close()


def run_dashboard_bench(n: int) -> dict[str, Any]:
    now = time.time()
    records = snapshots(n, now)
    with EmbeddedBroker() as broker:
        asyncio.run(publish(broker.bootstrap, records))
        port = free_port()
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "spendwatch", "dashboard", "--broker", broker.url,
                                 "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}/"
        try:
            while True:
                try:
                    if orjson.loads(get(base + "api/v1/summary")[1])["workflows"] >= n:
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.perf_counter() - started > 300:
                    raise RuntimeError("the dashboard did not read the snapshots within 300 s")
                time.sleep(0.2)
            caught_up = time.perf_counter() - started
            latency = {}
            for route in ROUTES:
                times = [get(base + "api/v1/" + route)[0] for _ in range(5)]
                latency[route] = {"median_ms": round(1000 * statistics.median(times), 1),
                                  "max_ms": round(1000 * max(times), 1)}
            page = page_load_s(base)
            return {"workflows": n, "snapshot_bytes": sum(len(v) for _, v in records) // n,
                    "caught_up_s": round(caught_up, 1), "api": latency, "rss_mb": round(rss_mb(proc.pid), 1),
                    "page_first_data_s": None if page is None else round(page, 2)}
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def print_dashboard_bench(result: dict[str, Any]) -> None:
    print(f"dashboard with {result['workflows']:,} workflows ({result['snapshot_bytes']:,} bytes per snapshot): "
          f"caught up in {result['caught_up_s']} s, {result['rss_mb']} MB resident")
    for route, t in result["api"].items():
        print(f"  GET /api/v1/{route:34} median {t['median_ms']:8.1f} ms   worst of 5 {t['max_ms']:8.1f} ms")
    page = result["page_first_data_s"]
    print(f"  page: first data drawn {page} s after navigation" if page is not None
          else "  page: not measured (no /usr/bin/chromium or playwright)")


if __name__ == "__main__":
    print_dashboard_bench(run_dashboard_bench(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000))
    os._exit(0)
