#!/usr/bin/env python3
"""Send one test notification through the configured ntfy server and say in one line whether it
arrived, and if not, why and what to fix. Exits 0 when delivered, 1 when not, 2 on bad usage.

    NTFY_URL=https://ntfy.example.com NTFY_AUTH=tk_... .venv/bin/python scripts/verify_ntfy.py
    .venv/bin/python scripts/verify_ntfy.py --topic dub-alice --priority 4

Reads the same environment as the platform (NTFY_URL, NTFY_AUTH, NTFY_TOPIC_PREFIX, PUBLIC_BASE_URL)
through NtfyResource.from_env(). The default topic is NTFY_TOPIC_PREFIX + "verify" (dub-verify).
NTFY_AUTH is a secret: it is sent in the Authorization header and never printed."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resources.notify import NtfyResource, topic_problem  # noqa: E402


def _fix(status: int | None, ntfy: NtfyResource, server: str) -> str:
    """What to change, for the status of the ntfy server's answer (None: no answer)."""
    if status is None:
        return f"check NTFY_URL ({server}) and that the ntfy server is running and reachable from here"
    if status == 401:
        if not ntfy._auth_header():
            return "set NTFY_AUTH to the platform account's token (tk_...) or user:password"
        return ("NTFY_AUTH is not a valid token or user:password on this server "
                "(ntfy token add dubbing-platform makes a new token)")
    if status == 403:
        return ("the account of NTFY_AUTH needs write access to the topic: "
                f"ntfy access dubbing-platform '{ntfy.topic_prefix}*' write-only")
    if status == 404:
        return "NTFY_URL must be the ntfy server's base URL (no topic, no other service's path)"
    if status == 429:
        return "the server is rate-limiting this client: try again in a minute"
    if status >= 500:
        return "the ntfy server has a problem: look at its log"
    return "check --topic and --priority"


def _clean(text: str, secret: str) -> str:
    """The text without the secret (whole, or its token or password part)."""
    for part in {secret, secret.split(" ", 1)[-1], secret.split(":", 1)[-1]}:
        if len(part) >= 4:
            text = text.replace(part, "***")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send a test notification through NTFY_URL.")
    prefix = os.environ.get("NTFY_TOPIC_PREFIX", "dub-")
    parser.add_argument("--topic", default=prefix + "verify", help="topic to publish to (default: %(default)s)")
    parser.add_argument("--priority", type=int, default=3, choices=range(1, 6), metavar="1-5",
                        help="ntfy priority, 1 (min) to 5 (max); default 3")
    args = parser.parse_args(argv)

    ntfy = NtfyResource.from_env()
    secret = ntfy.auth.strip()
    if not ntfy.configured:
        print("not delivered: NTFY_URL is not set: set it to your ntfy server's URL, "
              "e.g. NTFY_URL=https://ntfy.example.com", file=sys.stderr)
        return 1
    problem = topic_problem(args.topic)
    if problem:
        print(f"not delivered: {problem} (--topic)", file=sys.stderr)
        return 2
    server = ntfy.server_label()
    auth = "with NTFY_AUTH" if ntfy._auth_header() else "without credentials"
    delivery = ntfy.publish(ntfy.test_message(args.topic, args.priority, "this topic"))
    if delivery.ok:
        print(f"delivered: a test message to topic {args.topic} at {server} (priority {args.priority}, {auth}); "
              f"subscribe to {args.topic} in the ntfy app to see it")
        return 0
    line = (f"not delivered to topic {args.topic} at {server} ({auth}): {delivery.reason}. "
            f"Fix: {_fix(delivery.status, ntfy, server)}")
    print(_clean(line, secret), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
