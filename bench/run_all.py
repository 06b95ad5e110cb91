#!/usr/bin/env python3
"""`make bench`: every benchmark of issue 8, one after another (never two at once: they share the
machine's cores), each writing its figures as JSON; then one summary table against the targets.

    .venv/bin/python bench/run_all.py [--quick] [--only whole_dub,api_load] [--out bench/results]

Results go to bench/results/<UTC time>/ (one JSON per benchmark, summary.json, summary.md and each
benchmark's log). docs/benchmarks.md holds the figures of the last full run and how to read them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (name, script, what it measures, its targets)
BENCHMARKS = [
    ("whole_dub", "whole_dub.py", "1, 2: 10-minute dub RTF; Dagster run vs direct calls",
     "RTF <= 0.15; overhead ratio <= 1.15"),
    ("upload_throughput", "upload_throughput.py", "3: 1 GiB through the chunk API and tus vs raw",
     ">= 0.5x raw baseline; RSS flat in file size"),
    ("upload_s3", "upload_s3.py", "3b: uploads with storage on S3 (SeaweedFS) vs boto3's own multipart upload",
     "reported (no target set)"),
    ("launch_latency", "launch_latency.py", "4: upload complete -> RUN_START over 20 jobs, Postgres",
     "p50 <= 8 s; p95 <= 15 s"),
    ("api_load", "api_load.py", "5: job view and upload status, 50 clients, 10,000 jobs",
     "p99 <= 50 ms; 0 errors"),
    ("redub", "redub.py", "7: a re-dub after a one-segment edit vs the whole dub and vs no segment cache",
     "reported (no target set)"),
    ("partition_scale", "partition_scale.py", "6: 10,000 partitions: sensor tick, job list, timeline",
     "tick <= 2 s; list <= 100 ms"),
    ("quality", "quality.py", "9: the fit and the quality checks on five generated talks, before and after",
     "extend_video cuts 0 words of the fast talk; review names every cut; sync p95 <= 150 ms; loudness +-1 LU"),
    ("rotation", "rotation.py", "8: a 60 s 1080x1920 phone video's export: MP4 copy vs MKV turned upright",
     "reported (no target set)"),
]


def bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def run_one(name: str, script: str, out: Path, quick: bool) -> dict:
    result_file = out / f"{name}.json"
    argv = [sys.executable, str(ROOT / "bench" / script), "--json", str(result_file)]
    if quick:
        argv.append("--quick")
    started = time.perf_counter()
    with open(out / f"{name}.log", "wb") as log:
        code = subprocess.run(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = round(time.perf_counter() - started, 1)
    if code != 0 or not result_file.exists():
        tail = (out / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
        return {"ok": False, "exit_code": code, "bench_wall_s": wall, "log_tail": tail}
    return {"ok": True, "bench_wall_s": wall, "figures": json.loads(result_file.read_text())}


def verdict(figures: dict) -> str:
    met = figures.get("targets_met")
    if isinstance(met, dict):
        met = all(met.values()) if met else None
    return {True: "met", False: "NOT met", None: "n/a"}[met]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke sizes (a few minutes in all)")
    parser.add_argument("--only", default="", help="comma-separated names: " +
                        ", ".join(b[0] for b in BENCHMARKS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    chosen = [b for b in BENCHMARKS if not args.only or b[0] in args.only.split(",")]
    unknown = set(filter(None, args.only.split(","))) - {b[0] for b in BENCHMARKS}
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(b[0] for b in BENCHMARKS)}")
    out = args.out / dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True)
    summary: dict = {"started": dt.datetime.now(dt.timezone.utc).isoformat(), "quick": args.quick,
                     "benchmarks": {}}
    for n, (name, script, what, target) in enumerate(chosen):
        print(f"{bar(n, len(chosen))} {name}: {what} ...", flush=True)
        result = run_one(name, script, out, args.quick)
        result.update({"measures": what, "target": target})
        summary["benchmarks"][name] = result
        state = verdict(result["figures"]) if result["ok"] else f"FAILED (exit {result['exit_code']})"
        print(f"    {name}: target {state} ({result['bench_wall_s']} s)", flush=True)
        if not result["ok"]:
            print("    " + "\n    ".join(result["log_tail"]), flush=True)
    print(bar(len(chosen), len(chosen)), flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = ["| benchmark | measures | target | result |", "|---|---|---|---|"]
    for name, r in summary["benchmarks"].items():
        state = verdict(r["figures"]) if r["ok"] else "failed to run"
        lines.append(f"| {name} | {r['measures']} | {r['target']} | {state} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"figures: {out}/<name>.json; logs: {out}/<name>.log")
    return 0 if all(r["ok"] for r in summary["benchmarks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
