#!/usr/bin/env python3
"""Benchmark 3 (issue 8): upload throughput. One file of each size through the chunk API (init, PUT
every chunk with its X-Chunk-SHA256, complete with the whole-file sha256) and through tus (creation,
one PATCH with the whole body, the job created at the last byte), against the deployed shape's API
(uvicorn, one worker, Postgres database of its own) on loopback, with the production chunk size
(UPLOAD_CHUNK_BYTES unset: 8 MiB). Raw baselines in the same run, on the same disk:

  dd        dd if=SRC of=DST bs=8M conv=fsync (the API also syncs what it wrote before answering)
  curl PUT  curl -T SRC -X PUT to a minimal ASGI app under the same uvicorn that streams the body to a
            file and fsyncs it (the fair baseline: same HTTP server, same client, no API)
  httpx PUT the same minimal server with httpx streaming the file (shows the client is not the limit)

Reports MB/s (10^6 bytes per second) of each, the API's ratio to the curl PUT and dd baselines, and
the API server's peak RSS (VmHWM of a freshly started uvicorn per measurement) and its growth over
the RSS after a warm-up upload, per file size. Median of --repeat runs, interleaved.

    .venv/bin/python bench/upload_throughput.py [--sizes-mib 100,1024] [--repeat 3] [--json OUT.json] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
BLOCK = 8 * MIB
TARGET_RATIO = 0.5  # API MB/s over the curl PUT baseline
RSS_FLAT_MB = 32.0  # "independent of file size": the largest file grows the server by at most this much more


STARTED = time.time()


def say(msg: str) -> None:
    print(f"[upload_throughput {time.time() - STARTED:5.1f} s] {msg}", file=sys.stderr, flush=True)


# the minimal server of the curl/httpx PUT baselines (run as `uvicorn upload_throughput:minimal_app`)
async def minimal_app(scope, receive, send):
    """Any request: its body streamed to $BENCH_SINK_DIR/put.bin, fsynced, answered 200 with the size."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    fd = os.open(Path(os.environ["BENCH_SINK_DIR"]) / "put.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    written = 0
    try:
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            if body:
                written += os.write(fd, body)
            more = message.get("more_body", False)
        os.fsync(fd)
    finally:
        os.close(fd)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(written).encode()})


# helpers ---------------------------------------------------------------------------------------
def make_source(path: Path, size: int) -> str:
    """A valid WAV (stereo 16-bit 48 kHz, random samples: incompressible) of exactly `size` bytes;
    returns its sha256. Real media, so the API's completion (ffprobe) accepts it."""
    data = size - 44
    header = b"RIFF" + struct.pack("<I", size - 8) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, 2, 48000, 48000 * 4, 4, 16) + b"data" + struct.pack("<I", data)
    h = hashlib.sha256(header)
    with open(path, "wb") as fh:
        fh.write(header)
        left = data
        while left:
            block = os.urandom(min(left, BLOCK))
            h.update(block)
            fh.write(block)
            left -= len(block)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            h.update(block)
    return h.hexdigest()


def mbps(size: int, seconds: float) -> float:
    return round(size / seconds / 1e6, 1)


def proc_status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class RssSampler:
    """The server's peak RSS over a measurement: VmHWM, reset to the current RSS at the start (write
    5 to /proc/PID/clear_refs), so one long-lived server measures each upload on its own; VmRSS is
    also sampled every 50 ms, in case the reset is not permitted."""

    def __init__(self, pid: int):
        self.pid = pid
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.start_kb = proc_status_kb(pid, "VmRSS")
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.05):
            try:
                self.samples.append(proc_status_kb(self.pid, "VmRSS"))
            except (OSError, KeyError):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append(proc_status_kb(self.pid, "VmRSS"))
        self.peak_kb = max([proc_status_kb(self.pid, "VmHWM")] if self.hwm_reset else self.samples)

    def result(self) -> dict:
        return {"server_start_rss_mb": round(self.start_kb / 1024, 1),
                "server_peak_rss_mb": round(self.peak_kb / 1024, 1),
                "rss_growth_mb": round(max(0, self.peak_kb - self.start_kb) / 1024, 1),
                "rss_peak_from": "VmHWM" if self.hwm_reset else "VmRSS samples"}


def curl(*args: str) -> subprocess.CompletedProcess:
    # Expect: 100-continue off (curl adds it to big uploads and may wait a second for the 100)
    return subprocess.run(["curl", "-sS", "-H", "Expect:", *args], capture_output=True, text=True, check=True)


# the measurements ------------------------------------------------------------------------------
def dd_baseline(src: Path, dst: Path, size: int) -> float:
    started = time.perf_counter()
    subprocess.run(["dd", f"if={src}", f"of={dst}", "bs=8M", "conv=fsync"], check=True, capture_output=True)
    seconds = time.perf_counter() - started
    dst.unlink()
    return mbps(size, seconds)


def put_baselines(url: str, src: Path, sink: Path, size: int) -> dict:
    import httpx

    out = {}
    started = time.perf_counter()
    r = curl("-T", str(src), "-X", "PUT", url, "-o", "-")
    out["curl_put_MBps"] = mbps(size, time.perf_counter() - started)
    assert r.stdout.strip() == str(size), r.stdout
    (sink / "put.bin").unlink()

    def body():
        with open(src, "rb") as fh:
            while block := fh.read(MIB):
                yield block

    with httpx.Client(timeout=600) as client:
        started = time.perf_counter()
        r = client.put(url, content=body(), headers={"Content-Length": str(size)})
        out["httpx_put_MBps"] = mbps(size, time.perf_counter() - started)
    assert r.status_code == 200 and r.text == str(size), r.text
    (sink / "put.bin").unlink()
    return out


def chunk_upload(client, src: Path, size: int, sha: str) -> tuple[str, dict]:
    """The chunk API as the web UI uses it: init with the file's sha256, every chunk with its
    X-Chunk-SHA256 (hashed by the client as it reads), complete. Returns (upload_id, timings)."""
    started = time.perf_counter()
    r = client.post("/api/uploads/init", json={"filename": src.name, "size_bytes": size,
                                              "content_type": "audio/wav", "sha256": sha})
    assert r.status_code == 201, r.text
    init = r.json()
    upload_id, chunk = init["upload_id"], init["chunk_bytes"]
    fd = os.open(src, os.O_RDONLY)
    try:
        for i in range(init["total_chunks"]):
            piece = os.pread(fd, chunk, i * chunk)
            r = client.put(f"/api/uploads/{upload_id}/chunk", params={"index": i}, content=piece,
                           headers={"X-Chunk-SHA256": hashlib.sha256(piece).hexdigest(),
                                    "Content-Type": "application/octet-stream"})
            assert r.status_code == 200, f"chunk {i}: {r.status_code} {r.text[:300]}"
    finally:
        os.close(fd)
    chunks_done = time.perf_counter()
    r = client.post(f"/api/uploads/{upload_id}/complete", json={"target_lang": "es"})
    assert r.status_code == 200 and r.json().get("job_id"), r.text
    done = time.perf_counter()
    return upload_id, {"seconds": round(done - started, 3), "chunks_s": round(chunks_done - started, 3),
                       "complete_s": round(done - chunks_done, 3), "chunk_bytes": chunk,
                       "chunks": init["total_chunks"]}


def tus_upload(base_url: str, token: str, client, src: Path, size: int, sha: str) -> tuple[str, dict]:
    """tus as tus-js-client does by default (chunkSize Infinity): creation, then one PATCH with the
    whole file (curl streaming it), the job created when the last byte lands."""
    import base64

    def b64(s: str) -> str:
        return base64.b64encode(s.encode()).decode()

    meta = ",".join(f"{k} {b64(v)}" for k, v in (("filename", src.name), ("filetype", "audio/wav"),
                                                  ("target_lang", "es"), ("sha256", sha)))
    started = time.perf_counter()
    r = client.post("/api/tus/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(size),
                                          "Upload-Metadata": meta})
    assert r.status_code == 201, r.text
    upload_id = r.headers["location"].rsplit("/", 1)[1]
    created = time.perf_counter()
    r = curl("-X", "PATCH", "-T", str(src), "-o", "/dev/null", "-D", "-", "-w", "%{http_code}",
             "-H", f"Authorization: Bearer {token}", "-H", "Tus-Resumable: 1.0.0", "-H", "Upload-Offset: 0",
             "-H", "Content-Type: application/offset+octet-stream", f"{base_url}/api/tus/{upload_id}")
    done = time.perf_counter()
    assert r.stdout.endswith("204") and "dubbing-job-id" in r.stdout.lower(), r.stdout + r.stderr
    return upload_id, {"seconds": round(done - started, 3), "patch_s": round(done - created, 3)}


def run(args) -> dict:
    sys.path.insert(0, str(ROOT / "scripts"))
    from e2e_harness import Deployment, free_port

    sizes = [int(s) for s in args.sizes_mib.split(",")]
    results: dict = {"sizes_mib": sizes, "repeat": args.repeat, "baselines_by_size": {}, "chunk_api": {},
                     "tus": {}}
    with Deployment("bench_upload") as d:
        d.env.pop("UPLOAD_CHUNK_BYTES", None)  # the production default, as the API advertises it
        work = d.root / "bench"
        sink = work / "sink"
        sink.mkdir(parents=True)
        port = free_port()
        minimal = subprocess.Popen(
            [str(Path(sys.executable).parent / "uvicorn"), "upload_throughput:minimal_app", "--app-dir",
             str(ROOT / "bench"), "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
             "--log-level", "warning"], env={**os.environ, "BENCH_SINK_DIR": str(sink)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            say("starting the API")
            # as Deployment.start_api, with more patience: on a busy shared machine the imports alone
            # have taken over a minute
            d._spawn("api", [str(Path(sys.executable).parent / "uvicorn"), "upload_api.app:app", "--host",
                             "127.0.0.1", "--port", str(d.ports["api"]), "--no-access-log"])
            d._wait(lambda: d._http_ok(f"{d.url}/api/health", (200, 503)), "api", 300)
            import httpx

            for _ in range(100):
                try:
                    httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            token = d.tokens["alice"]
            pid = d.procs["api"].pid
            client = httpx.Client(base_url=d.url, headers={"Authorization": f"Bearer {token}"}, timeout=600)
            warm = work / "warm.wav"
            warm_sha = make_source(warm, 16 * MIB)
            for _ in range(2):  # imports, caches, connections, allocator pools
                shutil.rmtree(d.root / "data" / "uploads" / chunk_upload(client, warm, 16 * MIB, warm_sha)[0])
                shutil.rmtree(d.root / "data" / "uploads" / tus_upload(d.url, token, client, warm, 16 * MIB,
                                                                       warm_sha)[0])
            for size_mib in sizes:
                size = size_mib * MIB
                key = f"{size_mib}MiB"
                src = work / f"talk_{size_mib}.wav"
                say(f"{key}: writing the source file")
                sha = make_source(src, size)
                runs: dict[str, list] = {"dd": [], "put": [], "chunk_api": [], "tus": []}
                for rep in range(args.repeat):
                    runs["dd"].append(dd_baseline(src, work / "dd.out", size))
                    runs["put"].append(put_baselines(f"http://127.0.0.1:{port}/put", src, sink, size))
                    say(f"{key} #{rep + 1}: dd {runs['dd'][-1]} MB/s, curl PUT {runs['put'][-1]['curl_put_MBps']} "
                        f"MB/s, httpx PUT {runs['put'][-1]['httpx_put_MBps']} MB/s")
                    for proto in ("chunk_api", "tus"):
                        with RssSampler(pid) as rss:
                            if proto == "chunk_api":
                                upload_id, timing = chunk_upload(client, src, size, sha)
                            else:
                                upload_id, timing = tus_upload(d.url, token, client, src, size, sha)
                        stored = d.root / "data" / "uploads" / upload_id / "data"
                        ok = stored.stat().st_size == size and sha256_file(stored) == sha
                        assert ok, f"{proto} {key}: the stored file differs from the source"
                        shutil.rmtree(stored.parent)
                        entry = {"MBps": mbps(size, timing["seconds"]), **timing, **rss.result(), "verified": ok}
                        runs[proto].append(entry)
                        say(f"{key} #{rep + 1}: {proto} {entry['MBps']} MB/s, peak RSS "
                            f"{entry['server_peak_rss_mb']} MB (+{entry['rss_growth_mb']} MB) {json.dumps(timing)}")
                src.unlink()
                results["baselines_by_size"][key] = {
                    "dd_MBps": statistics.median(runs["dd"]),
                    "curl_put_MBps": statistics.median(r["curl_put_MBps"] for r in runs["put"]),
                    "httpx_put_MBps": statistics.median(r["httpx_put_MBps"] for r in runs["put"])}
                for proto in ("chunk_api", "tus"):
                    med = median_run(runs[proto])
                    results[proto][key] = {**med, "runs_MBps": [r["MBps"] for r in runs[proto]]}
            client.close()
        finally:
            minimal.terminate()
            minimal.wait(timeout=30)
            shutil.rmtree(work, ignore_errors=True)  # the big files; a failed run keeps only the logs
            shutil.rmtree(d.root / "data" / "uploads", ignore_errors=True)
    return summarise(results, sizes)


def median_run(runs: list[dict]) -> dict:
    """The run with the median MB/s, with the worst peak RSS and growth of all runs."""
    ordered = sorted(runs, key=lambda r: r["MBps"])
    med = dict(ordered[len(ordered) // 2])
    med["server_peak_rss_mb"] = max(r["server_peak_rss_mb"] for r in runs)
    med["rss_growth_mb"] = max(r["rss_growth_mb"] for r in runs)
    return med


def summarise(results: dict, sizes: list[int]) -> dict:
    small, large = f"{min(sizes)}MiB", f"{max(sizes)}MiB"
    base = results["baselines_by_size"]
    results["baselines"] = {**base[large], "size": large}
    results["ratio_vs_curl"] = {p: {k: round(v["MBps"] / base[k]["curl_put_MBps"], 2) for k, v in results[p].items()}
                                for p in ("chunk_api", "tus")}
    results["ratio_vs_dd"] = {p: {k: round(v["MBps"] / base[k]["dd_MBps"], 2) for k, v in results[p].items()}
                              for p in ("chunk_api", "tus")}
    growth = {p: round(results[p][large]["rss_growth_mb"] - results[p][small]["rss_growth_mb"], 1)
              for p in ("chunk_api", "tus")}
    results["rss_growth_by_size_mb"] = growth  # largest file's growth minus the smallest's
    results["rss_growth_mb"] = max(growth.values())
    throughput_ok = all(r >= TARGET_RATIO for p in results["ratio_vs_curl"].values() for r in p.values())
    rss_ok = results["rss_growth_mb"] <= RSS_FLAT_MB
    results["targets"] = {"throughput_ge_0.5x_curl_put": throughput_ok,
                          f"rss_growth_flat_within_{RSS_FLAT_MB:g}MB": rss_ok}
    results["targets_met"] = throughput_ok and rss_ok
    return results


def table(results: dict) -> str:
    lines = ["| size | dd MB/s | curl PUT MB/s | chunk API MB/s (× curl) | tus MB/s (× curl) | "
             "peak RSS chunk / tus MB (growth) |", "|---|---|---|---|---|---|"]
    for key, base in results["baselines_by_size"].items():
        c, t = results["chunk_api"][key], results["tus"][key]
        ratio = {p: results["ratio_vs_curl"][p][key] for p in ("chunk_api", "tus")}
        lines.append(f"| {key} | {base['dd_MBps']} | {base['curl_put_MBps']} | {c['MBps']} "
                     f"({ratio['chunk_api']}) | {t['MBps']} ({ratio['tus']}) "
                     f"| {c['server_peak_rss_mb']} (+{c['rss_growth_mb']}) / {t['server_peak_rss_mb']} "
                     f"(+{t['rss_growth_mb']}) |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mib", default="100,1024", help="file sizes in MiB, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (median reported)")
    parser.add_argument("--json", type=Path, help="write the results dict here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 16 and 64 MiB, one run each")
    args = parser.parse_args()
    if args.quick:
        args.sizes_mib, args.repeat = "16,64", 1
    started = time.time()
    results = run(args)
    results["wall_s"] = round(time.time() - started, 1)
    print(table(results))
    print(json.dumps({k: results[k] for k in ("baselines", "ratio_vs_curl", "rss_growth_mb", "targets_met")}))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
