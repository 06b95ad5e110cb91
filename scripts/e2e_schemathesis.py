#!/usr/bin/env python3
"""Gate 7: bad input at scale. Schemathesis generates requests from the app's OpenAPI schema (valid
and invalid bodies, parameters and headers) for every operation, as a logged-in user, for a bounded
number of examples each; the API must never answer 5xx.

    .venv/bin/python scripts/e2e_schemathesis.py [--max-examples 25] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_harness import BIN, Deployment, check, run_gate  # noqa: E402


def gate(max_examples: int, seed: int) -> str:
    with Deployment("schemathesis") as d:
        d.start("api")  # the API alone: requests that create jobs only write job records
        report = d.root / "schemathesis.json"
        ndjson = d.root / "events.ndjson"
        proc = subprocess.run(
            [str(BIN / "schemathesis"), "--no-color", "run", f"{d.url}/openapi.json",
             "--checks", "not_a_server_error", "--max-examples", str(max_examples), "--seed", str(seed),
             "--workers", "1", "--request-timeout", "30", "--no-shrink", "--continue-on-failure",
             "--header", f"Authorization: Bearer {d.tokens['alice']}",
             # the log stream is an endless SSE response while a job runs; a fuzzer gains nothing there
             "--exclude-path-regex", "/logs/stream$",
             "--report", "ndjson", "--report-ndjson-path", str(ndjson)],
            env=d.env, cwd=d.root, capture_output=True, text=True, timeout=1800)  # its cache stays there
        out = proc.stdout + proc.stderr
        tail = "\n".join(out.splitlines()[-40:])
        print(tail)
        operations = re.search(r"Tested: (\d+)", out)
        cases = failures = server_errors = 0
        internal: list[str] = []
        for line in ndjson.read_text().splitlines() if ndjson.exists() else []:
            event = json.loads(line)
            kind = next(iter(event))
            if kind == "ScenarioFinished":
                cases += 1
                failures += event[kind].get("status") == "failure"
                server_errors += len(re.findall(r'"status_code":\s*5\d\d', line))
            elif kind == "NonFatalError":  # the fuzzer's own trouble, not an answer of the API
                internal.append(f"{event[kind].get('label')}: {event[kind]['value'].get('message')}")
        report.write_text(json.dumps({"returncode": proc.returncode, "tail": tail, "internal": internal}))
        api_500 = sum(1 for ln in (d.root / "api.log").read_text(errors="replace").splitlines()
                      if '"status": 500' in ln)
        check(api_500 == 0, f"the API log shows {api_500} answers with status 500")
        check(server_errors == 0, f"{server_errors} responses with a 5xx status (see {ndjson})")
        check(failures == 0, f"{failures} scenarios failed a check (see {ndjson})")
        check(cases > 0 and operations, f"schemathesis tested nothing (exit {proc.returncode})")
        if internal:
            print(f"note: schemathesis reported {len(internal)} internal error(s), not API answers: {internal}")
        return (f"{operations.group(1) if operations else '?'} operations, up to {max_examples} examples each "
                f"(seed {seed}), {cases} scenarios, 0 failed, 0 x 5xx")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=25)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    run_gate("e2e_schemathesis", lambda: gate(args.max_examples, seed))
