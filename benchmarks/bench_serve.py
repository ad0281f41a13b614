"""Load test of ``cvkit serve`` on loopback: dynamic batching on vs off vs a hand-written baseline.

Five servers of the same exported default SSD (``configs/ssd.yaml``: seeded weights, dynamic
batch, NMS in the graph) run side by side, each in its own process on a free loopback port:

- ``cvkit serve (batching)``: ``--max-batch 16 --max-delay-ms 5`` and ``--workers auto`` (the
  defaults: one worker process per core, up to 4, each with one onnxruntime thread per core it
  owns);
- ``cvkit serve (batching, 1 worker)``: the same in one process (onnxruntime's thread count);
- ``cvkit serve (batching, 0 ms delay)``: ``--max-delay-ms 0``: a batch is whatever queued while
  the previous one ran;
- ``cvkit serve (no batching)``: ``--max-batch 1``, one request per ``session.run``;
- ``plain FastAPI``: what a user writes by hand, an endpoint that reads the body and runs
  the decoding and ``Detector.predict`` in FastAPI's thread pool (keeping the event loop free),
  one ``session.run`` per request; concurrent requests call the session concurrently.

The load comes from ``wrk`` (Debian's package; one C thread, keep-alive, ``--seconds`` per
point) when it is on the PATH, else from an asyncio httpx client (one connection per concurrent
request, at most ``--requests`` requests or ``--seconds``). On 2 cores the client shares the
CPU with the servers, and the Python client used so much of it that at concurrency 64 every
server but one was starved for requests; ``--client httpx`` forces it. Each posts the same JPEG
of the synthetic shapes, servers taking turns at each level. Writes
``benchmarks/results/serve.md``.

    python benchmarks/bench_serve.py [--model best.onnx] [--concurrency 1 4 16 64] [--client wrk]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["circle", "rectangle", "triangle"]
CVKIT_SERVERS = {
    "cvkit serve (batching)": ["--max-batch", "16", "--max-delay-ms", "5"],
    "cvkit serve (batching, 1 worker)": [
        "--max-batch",
        "16",
        "--max-delay-ms",
        "5",
        "--workers",
        "1",
    ],
    "cvkit serve (batching, 0 ms delay)": ["--max-batch", "16", "--max-delay-ms", "0"],
    "cvkit serve (no batching)": ["--max-batch", "1"],
}


def export_default_ssd(path: Path, cfg: Path = ROOT / "configs" / "ssd.yaml") -> Path:
    """The config's SSD with seeded random weights, exported with a dynamic batch."""
    import torch

    from cvkit.config import load_config
    from cvkit.config.export import ExportConfig
    from cvkit.export.onnx import export_model, metadata_from_config
    from cvkit.models.build import build_model

    torch.manual_seed(0)
    config = load_config(cfg)
    model = build_model(config, len(CLASSES)).eval()
    export_model(model, path, metadata_from_config(config, CLASSES), ExportConfig(dynamic=True))
    return path


def baseline_app(model: Path):
    """The hand-written server: one ``Detector.predict`` (one ``session.run``) per request."""
    from cvkit.runtime import Detector

    detector = Detector(model)
    app = FastAPI()

    def predict_bytes(body: bytes) -> dict:
        image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        return detector.predict(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)).to_dict()

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        return await run_in_threadpool(predict_bytes, await request.body())

    return app


@dataclass
class Server:
    """A server process under test and the URL its predict requests go to."""

    name: str
    process: subprocess.Popen
    base: str
    predict_path: str

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(name: str, command: list[str], predict_path: str, port: int, ready: str) -> Server:
    """Start ``command`` (listening on ``port``) and wait until ``ready`` answers 200."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server(name, process, f"http://127.0.0.1:{port}", predict_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}")
        try:
            if httpx.get(server.base + ready, timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{name} did not start")


def start_servers(model: Path, threads: int | None) -> list[Server]:
    """The servers of the comparison (see the module docstring)."""
    serve = [sys.executable, "-m", "cvkit", "serve", str(model), "--providers", "cpu"]
    if threads is not None:
        serve += ["--threads", str(threads)]
    servers = []
    for name, options in CVKIT_SERVERS.items():
        port = _free_port()
        command = [*serve, *options, "--port", str(port)]
        predict = f"/v1/models/{model.stem}/predict"
        servers.append(start(name, command, predict, port, "/v2/health/ready"))
    port = _free_port()
    baseline = [sys.executable, __file__, "--baseline-server", str(model), "--port", str(port)]
    servers.append(start("plain FastAPI", baseline, "/predict", port, "/docs"))
    return servers


async def load_test(
    url: str, body: bytes, concurrency: int, max_requests: int, max_seconds: float
) -> dict:
    """``concurrency`` clients posting ``body`` until ``max_requests`` or ``max_seconds``.

    Returns:
        ``requests``, ``errors`` (non-200 answers and failed connections), ``rps`` (answers
        per second) and latency ``p50_ms``, ``p95_ms``, ``p99_ms``.
    """
    latencies: list[float] = []
    errors = 0
    issued = 0
    headers = {"content-type": "image/jpeg"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        deadline = time.perf_counter() + max_seconds

        async def worker() -> None:
            nonlocal errors, issued
            while issued < max_requests and time.perf_counter() < deadline:
                issued += 1
                sent = time.perf_counter()
                try:
                    response = await client.post(url, content=body, headers=headers)
                    errors += response.status_code != 200
                except httpx.HTTPError:
                    errors += 1
                latencies.append(time.perf_counter() - sent)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    milliseconds = 1000 * np.asarray(latencies)
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        **{f"p{q}_ms": float(np.percentile(milliseconds, q)) for q in (50, 95, 99)},
    }


# wrk's done() hook: the counts and percentiles (microseconds) as one parseable line
WRK_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "image/jpeg"
local file = io.open("{body}", "rb")
wrk.body = file:read("*all")
file:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("CVKIT requests=%d errors=%d seconds=%f p50=%d p95=%d p99=%d\\n",
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout,
    summary.duration / 1e6, latency:percentile(50), latency:percentile(95),
    latency:percentile(99)))
end
"""


def wrk_load_test(url: str, script: Path, concurrency: int, seconds: float) -> dict:
    """``wrk`` with ``concurrency`` connections posting for ``seconds``; same keys as
    :func:`load_test`."""
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "-s", str(script)]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    found = re.search(r"CVKIT (.*)", output)
    if found is None:
        raise RuntimeError(f"wrk printed no summary:\n{output}")
    values = {key: float(value) for key, value in re.findall(r"(\w+)=([\d.]+)", found[1])}
    return {
        "requests": int(values["requests"]),
        "errors": int(values["errors"]),
        "rps": values["requests"] / values["seconds"],
        **{f"p{q}_ms": values[f"p{q}"] / 1000 for q in (50, 95, 99)},
    }


def mean_batch(server: Server) -> tuple[float, float]:
    """(rows, runs) so far of the cvkit server's ``cvkit_batch_size`` histogram."""
    values = {"sum": 0.0, "count": 0.0}
    for line in httpx.get(server.base + "/metrics").text.splitlines():
        for key in values:
            if line.startswith(f"cvkit_batch_size_{key}{{"):
                values[key] = float(line.split()[-1])
    return values["sum"], values["count"]


def shapes_jpeg(size: int) -> bytes:
    """A JPEG of one synthetic shapes image (the default SSD's data), ``size`` px square."""
    from cvkit.data.synthetic import render_sample

    image = render_sample(np.random.default_rng(0), image_size=size).image
    return cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def run(
    model: Path | None,
    concurrency: Sequence[int],
    max_requests: int,
    max_seconds: float,
    out: Path | None,
    image_size: int = 160,
    threads: int | None = None,
    client: str = "auto",
) -> list[dict]:
    """Export (unless ``model`` is given), start the servers, load-test them, write the report.

    ``client``: ``wrk``, ``httpx``, or ``auto`` (wrk when it is on the PATH)."""
    load_before = _load()
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "httpx"
    with tempfile.TemporaryDirectory() as folder:
        if model is None:
            model = export_default_ssd(Path(folder) / "model.onnx")
        body = shapes_jpeg(image_size)
        script = Path(folder) / "post.lua"
        (Path(folder) / "body.jpg").write_bytes(body)
        script.write_text(WRK_SCRIPT.format(body=Path(folder) / "body.jpg"))

        def measure(url: str, level: int, requests: int, seconds: float) -> dict:
            if client == "wrk":
                return wrk_load_test(url, script, level, seconds)
            return asyncio.run(load_test(url, body, level, requests, seconds))

        servers = start_servers(model, threads)
        rows = []
        try:
            for level in concurrency:
                for server in servers:
                    url = server.base + server.predict_path
                    asyncio.run(load_test(url, body, level, 2 * level, max_seconds))  # warm-up
                    batches = mean_batch(server) if server.name.startswith("cvkit") else None
                    row = measure(url, level, max_requests, max_seconds)
                    if batches is not None:
                        rows_now, runs_now = mean_batch(server)
                        row["mean_batch"] = (rows_now - batches[0]) / max(
                            1.0, runs_now - batches[1]
                        )
                    rows.append({"server": server.name, "concurrency": level, **row})
                    print(rows[-1], flush=True)
        finally:
            for server in servers:
                server.stop()
    if out is not None:
        write_report(out, rows, image_size, max_requests, max_seconds, load_before, _load(), client)
    return rows


def _load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def write_report(
    out: Path,
    rows: list[dict],
    image_size: int,
    max_requests: int,
    max_seconds: float,
    load_before: str,
    load_after: str,
    client: str = "httpx",
) -> None:
    """Markdown: one row per server and concurrency, and the target check at concurrency 16."""
    import onnxruntime

    lines = [
        "# Serving: dynamic batching on vs off vs a plain FastAPI server",
        "",
        "`python benchmarks/bench_serve.py` — the default SSD (`configs/ssd.yaml`: quarter-width "
        "ResNet-18, 128 px input, seeded random weights, exported with a dynamic batch and NMS "
        f"in the graph) behind five servers on loopback, each posted one {image_size}x"
        f"{image_size} JPEG of the synthetic shapes per request (the image endpoint's JSON "
        "detections come back). At each concurrency every server gets a warm-up, then "
        + (
            f"{max_seconds:g} s of `wrk` (one C thread, keep-alive), servers taking turns. "
            if client == "wrk"
            else f"up to {max_requests} requests or {max_seconds:g} s of an asyncio httpx "
            "client, servers taking turns. "
        )
        + "The client runs on the same machine and shares its CPU with the servers.",
        "",
        f"CPU: {cpu_model()} ({os.cpu_count()} cores). Load average (1, 5, 15 min) before: "
        f"{load_before}; after: {load_after}. onnxruntime {onnxruntime.__version__}, CPU "
        "execution provider. `cvkit serve` runs its default `--workers auto` (one process per "
        "core, up to 4, one onnxruntime thread per core each) unless the row says 1 worker "
        "(onnxruntime's default thread count), and turns the threads' spin-waiting off (its "
        "default, `--spin` turns it on); the plain server is one process with onnxruntime's "
        "defaults (all cores, spinning).",
        "",
        "| server | concurrency | requests | errors | requests/s | p50 (ms) | p95 (ms) | p99 (ms) "
        "| mean batch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        batch = f"{r['mean_batch']:.1f}" if "mean_batch" in r else "-"
        lines.append(
            f"| {r['server']} | {r['concurrency']} | {r['requests']} | {r['errors']} | "
            f"{r['rps']:.1f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{batch} |"
        )
    lines.append("")
    by_key = {(r["server"], r["concurrency"]): r for r in rows}
    for level in sorted({r["concurrency"] for r in rows}):
        baseline = by_key.get(("plain FastAPI", level))
        for name in list(CVKIT_SERVERS)[:3]:
            batching = by_key.get((name, level))
            if batching is None or baseline is None:
                continue
            ratio = batching["rps"] / baseline["rps"]
            lower = "lower" if batching["p99_ms"] < baseline["p99_ms"] else "not lower"
            lines.append(
                f"- Concurrency {level}, {name}: {ratio:.2f}x the plain server's requests/s, "
                f"p99 {batching['p99_ms']:.1f} vs {baseline['p99_ms']:.1f} ms ({lower})."
            )
    errors = sum(r["errors"] for r in rows)
    lines.append(f"- Errors over all runs: {errors}.")
    batching, baseline = (
        by_key.get((name, 16)) for name in ("cvkit serve (batching)", "plain FastAPI")
    )
    if batching and baseline:
        met = batching["rps"] >= 2 * baseline["rps"] and batching["p99_ms"] < baseline["p99_ms"]
        lines.append(
            "- Target at concurrency 16 (default batching): >= 2x the plain server's "
            f"requests/s with a lower p99: {'met' if met else 'NOT met'} in this run."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an exported detector (default: export one)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=600, help="most requests per point")
    parser.add_argument("--seconds", type=float, default=8.0, help="most seconds per point")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--client", choices=["auto", "wrk", "httpx"], default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve.md")
    parser.add_argument("--baseline-server", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=8000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server is not None:
        import uvicorn

        uvicorn.run(baseline_app(args.baseline_server), port=args.port, access_log=False)
        return
    run(
        args.model,
        args.concurrency,
        args.requests,
        args.seconds,
        args.out,
        args.image_size,
        client=args.client,
    )


if __name__ == "__main__":
    main()
