"""scripts/verify_ntfy.py as an operator runs it: a subprocess with NTFY_URL/NTFY_AUTH in its
environment, against a local server speaking ntfy's publish API (tests/ntfy_fake.py)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest

from live import ROOT
from ntfy_fake import FakeNtfy

SCRIPT = ROOT / "scripts" / "verify_ntfy.py"
SECRET = "tk_" + secrets.token_hex(15)


@pytest.fixture
def fake():
    server = FakeNtfy(auth=f"Bearer {SECRET}").start()
    yield server
    server.stop()


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("NTFY_", "PUBLIC_BASE_URL"))}
    environ.update(env)
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=environ, capture_output=True, text=True,
                          timeout=60, cwd="/")


def test_delivers_to_the_default_verify_topic(fake):
    r = run(NTFY_URL=fake.url, NTFY_AUTH=SECRET)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert out.count("\n") == 1, out
    assert out.startswith(f"delivered: a test message to topic dub-verify at {fake.url} (priority 3, with NTFY_AUTH)")
    assert SECRET not in out
    [msg] = fake.to("dub-verify")
    assert msg.authorization == f"Bearer {SECRET}" and msg.priority == 3
    assert msg.title == "Test notification from the dubbing platform"


def test_topic_priority_and_prefix(fake):
    r = run("--topic", "dub-alice", "--priority", "5", NTFY_URL=fake.url + "/", NTFY_AUTH=f"Bearer {SECRET}")
    assert r.returncode == 0, r.stderr
    assert fake.to("dub-alice")[0].priority == 5
    r = run(NTFY_URL=fake.url, NTFY_AUTH=SECRET, NTFY_TOPIC_PREFIX="team_")
    assert r.returncode == 0 and "topic team_verify at" in r.stdout, r.stdout + r.stderr
    assert len(fake.to("team_verify")) == 1


def test_wrong_auth_fails_with_a_reason_naming_ntfy_auth_and_never_the_secret(fake):
    wrong = "tk_" + secrets.token_hex(15)
    r = run(NTFY_URL=fake.url, NTFY_AUTH=wrong)
    assert r.returncode == 1
    out = r.stdout + r.stderr
    assert out.count("\n") == 1, out
    assert out.startswith(f"not delivered to topic dub-verify at {fake.url} (with NTFY_AUTH): the ntfy server "
                          f"answered HTTP 403 (forbidden): check NTFY_AUTH"), out
    assert "Fix: the account of NTFY_AUTH needs write access to the topic: ntfy access dubbing-platform " \
           "'dub-*' write-only" in out
    assert wrong not in out and SECRET not in out
    assert fake.requests[-1]["authorization"] == f"Bearer {wrong}"  # it was sent, just not printed
    r = run(NTFY_URL=fake.url)  # no credentials at all
    assert r.returncode == 1 and "HTTP 401" in r.stderr, r.stderr
    assert "Fix: set NTFY_AUTH to the platform account's token (tk_...) or user:password" in r.stderr
    assert fake.messages == []


def test_server_down_unset_url_and_bad_topic(fake):
    url = fake.url
    fake.stop()
    r = run(NTFY_URL=url, NTFY_AUTH=SECRET)
    assert r.returncode == 1
    assert r.stderr.startswith(f"not delivered to topic dub-verify at {url} (with NTFY_AUTH): no connection to "
                               "the ntfy server (ConnectError). Fix: check NTFY_URL"), r.stderr
    assert SECRET not in r.stderr + r.stdout
    r = run()
    assert r.returncode == 1 and "NTFY_URL is not set" in r.stderr
    r = run("--topic", "no spaces", NTFY_URL=url, NTFY_AUTH=SECRET)
    assert r.returncode == 2 and "1 to 64 characters" in r.stderr
    fake.start()
    fake.fail_next(1, 503)
    r = run(NTFY_URL=url, NTFY_AUTH=SECRET)
    assert r.returncode == 1 and "HTTP 503" in r.stderr, r.stderr
    assert "Fix: the ntfy server has a problem: look at its log" in r.stderr
