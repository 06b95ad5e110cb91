#!/usr/bin/env python3
"""Benchmark 3b (issue 9): uploads with DUBBING_STORAGE=s3. One file of each size through the chunk API
and through tus (as bench/upload_throughput.py sends them), against the deployed shape's API (uvicorn,
one worker, Postgres) with its storage on a real S3 server (SeaweedFS `weed mini`, on this machine),
against the fair baseline in the same run: boto3's own multipart upload of the same file to the same
server with the same part size (upload_file, TransferConfig with the API's chunk size as part size).

Reports MB/s (10^6 bytes per second) of each and the API's ratio to the boto3 baseline, median of
--repeat interleaved runs. Every uploaded object is read back from S3 and its sha256 checked.

    .venv/bin/python bench/upload_s3.py [--sizes-mib 64,256] [--repeat 3] [--json OUT.json] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "scripts"))

from upload_throughput import MIB, chunk_upload, make_source, mbps, tus_upload  # noqa: E402

STARTED = time.time()


def say(msg: str) -> None:
    print(f"[upload_s3 {time.time() - STARTED:5.1f} s] {msg}", file=sys.stderr, flush=True)


def object_sha256(client, bucket: str, key: str) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    for piece in client.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(MIB):
        h.update(piece)
        size += len(piece)
    return size, h.hexdigest()


def boto3_baseline(client, bucket: str, src: Path, part: int) -> float:
    from boto3.s3.transfer import TransferConfig

    key = f"bench/baseline/{src.name}"
    started = time.perf_counter()
    client.upload_file(str(src), bucket, key, Config=TransferConfig(
        multipart_threshold=part, multipart_chunksize=part, max_concurrency=1, use_threads=False))
    seconds = time.perf_counter() - started
    client.delete_object(Bucket=bucket, Key=key)
    return mbps(src.stat().st_size, seconds)


def run(args) -> dict:
    import httpx
    from e2e_harness import Deployment
    from s3_server import SeaweedS3

    sizes = [int(s) for s in args.sizes_mib.split(",")]
    results: dict = {"sizes_mib": sizes, "repeat": args.repeat, "boto3_MBps": {}, "chunk_api": {}, "tus": {}}
    with SeaweedS3() as server, Deployment("bench_upload_s3", env=server.env) as d:
        d.env.pop("UPLOAD_CHUNK_BYTES", None)  # the production default (8 MiB: one chunk is one part)
        bucket, s3c = server.bucket, server.client()
        say("starting the API")
        d._spawn("api", [str(Path(sys.executable).parent / "uvicorn"), "upload_api.app:app", "--host",
                         "127.0.0.1", "--port", str(d.ports["api"]), "--no-access-log"])
        d._wait(lambda: d._http_ok(f"{d.url}/api/health", (200, 503)), "api", 300)
        token = d.tokens["alice"]
        client = httpx.Client(base_url=d.url, headers={"Authorization": f"Bearer {token}"}, timeout=600)
        work = d.root / "bench"
        work.mkdir()
        warm = work / "warm.wav"
        warm_sha = make_source(warm, 16 * MIB)
        chunk_upload(client, warm, 16 * MIB, warm_sha)  # imports, connections
        tus_upload(d.url, token, client, warm, 16 * MIB, warm_sha)
        for size_mib in sizes:
            size, key = size_mib * MIB, f"{size_mib}MiB"
            src = work / f"talk_{size_mib}.wav"
            sha = make_source(src, size)
            runs: dict[str, list] = {"boto3": [], "chunk_api": [], "tus": []}
            for rep in range(args.repeat):
                for proto in ("boto3", "chunk_api", "tus"):
                    if proto == "boto3":
                        runs["boto3"].append(boto3_baseline(s3c, bucket, src, 8 * MIB))
                        say(f"{key} #{rep + 1}: boto3 multipart {runs['boto3'][-1]} MB/s")
                        continue
                    if proto == "chunk_api":
                        upload_id, timing = chunk_upload(client, src, size, sha)
                    else:
                        upload_id, timing = tus_upload(d.url, token, client, src, size, sha)
                    stored = object_sha256(s3c, bucket, f"uploads/{upload_id}/data")  # no DUBBING_S3_PREFIX
                    assert stored == (size, sha), f"{proto} {key}: the object in S3 differs from the source"
                    runs[proto].append({"MBps": mbps(size, timing["seconds"]), **timing, "verified": True})
                    say(f"{key} #{rep + 1}: {proto} {runs[proto][-1]['MBps']} MB/s {json.dumps(timing)}")
            src.unlink()
            results["boto3_MBps"][key] = statistics.median(runs["boto3"])
            for proto in ("chunk_api", "tus"):
                ordered = sorted(runs[proto], key=lambda r: r["MBps"])
                results[proto][key] = {**ordered[len(ordered) // 2], "runs_MBps": [r["MBps"] for r in ordered]}
        client.close()
    results["ratio_vs_boto3"] = {p: {k: round(v["MBps"] / results["boto3_MBps"][k], 2)
                                     for k, v in results[p].items()} for p in ("chunk_api", "tus")}
    return results


def table(results: dict) -> str:
    lines = ["| size | boto3 multipart MB/s | chunk API MB/s (× boto3) | tus MB/s (× boto3) |", "|---|---|---|---|"]
    for key, base in results["boto3_MBps"].items():
        r = results["ratio_vs_boto3"]
        lines.append(f"| {key} | {base} | {results['chunk_api'][key]['MBps']} ({r['chunk_api'][key]}) "
                     f"| {results['tus'][key]['MBps']} ({r['tus'][key]}) |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mib", default="64,256", help="file sizes in MiB, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (median reported)")
    parser.add_argument("--json", type=Path, help="write the results dict here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 16 MiB, one run")
    args = parser.parse_args()
    if args.quick:
        args.sizes_mib, args.repeat = "16", 1
    results = run(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
