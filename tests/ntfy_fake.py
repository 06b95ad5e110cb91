"""A small local server speaking ntfy's publish API (no ntfy server can be installed here).

It accepts what ntfy accepts and records it:
- POST/PUT /{topic} with the message as the body and Title, Priority, Tags, Click, Actions headers
  (and their X- variants);
- POST/PUT / with a JSON message {topic, title, message, priority, tags, click, actions};
- the Authorization header is checked against the expected one (401 without, 403 when wrong);
- topics are checked against ntfy's rule (^[-_A-Za-z0-9]{1,64}$) and the message against 4,096 bytes;
- `fail_next(n, status)` answers the next n publishes with 429 or 5xx; `stop()`/`start()` take the
  server away and bring it back on the same port (connection refused in between).
Answers are ntfy's: {"id", "time", "expires", "event": "message", "topic", ...} or
{"code", "http", "error"}.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOPIC_RE = re.compile(r"^[-_A-Za-z0-9]{1,64}$")
PRIORITIES = {"min": 1, "low": 2, "default": 3, "high": 4, "max": 5, "urgent": 5}


@dataclass
class Published:
    topic: str
    title: str | None
    message: str
    priority: int
    tags: list[str]
    click: str | None
    actions: list
    authorization: str | None
    raw_headers: dict = field(default_factory=dict)


class FakeNtfy:
    def __init__(self, auth: str | None = None, port: int = 0):
        self.expected_auth = auth  # the full Authorization header value, or None for open access
        self.messages: list[Published] = []
        self.requests: list[dict] = []  # every request, accepted or not
        self._fail: list[int] = []
        self._lock = threading.Lock()
        self.port = port or _free_port()
        self._server: ThreadingHTTPServer | None = None

    # -- control

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeNtfy":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                fake._handle(self)

            do_PUT = do_POST

        server = None
        for _ in range(50):  # the port may linger in TIME_WAIT after stop()
            try:
                server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
                break
            except OSError:
                time.sleep(0.1)
        if server is None:
            raise RuntimeError(f"port {self.port} stays busy")
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def fail_next(self, count: int, status: int = 503) -> None:
        with self._lock:
            self._fail.extend([status] * count)

    def to(self, topic: str) -> list[Published]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    # -- the API

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        path = req.path.split("?", 1)[0]
        auth = req.headers.get("Authorization")
        with self._lock:
            self.requests.append({"method": req.command, "path": path, "authorization": auth,
                                  "headers": dict(req.headers), "body": body})
            fail = self._fail.pop(0) if self._fail else None
        if fail is not None:
            return self._error(req, fail, 42901 if fail == 429 else 50001,
                               "limit reached" if fail == 429 else "internal server error")
        if self.expected_auth is not None:
            if not auth:
                return self._error(req, 401, 40101, "unauthorized")
            if auth != self.expected_auth:
                return self._error(req, 403, 40301, "forbidden")
        if path == "/":
            try:
                data = json.loads(body)
                assert isinstance(data, dict)
            except (ValueError, AssertionError):
                return self._error(req, 400, 40017, "invalid request: request body must be message JSON")
            topic = str(data.get("topic") or "")
            message = str(data.get("message") or "")
            title = data.get("title")
            priority = data.get("priority") or 3
            tags = list(data.get("tags") or [])
            click = data.get("click")
            actions = list(data.get("actions") or [])
        else:
            topic = path.strip("/")
            message = body.decode("utf-8", errors="replace")
            h = req.headers
            title = h.get("X-Title") or h.get("Title") or h.get("t")
            raw_priority = (h.get("X-Priority") or h.get("Priority") or h.get("p") or "3").lower()
            priority = PRIORITIES.get(raw_priority) or (int(raw_priority) if raw_priority.isdigit() else 0)
            tags = [t.strip() for t in (h.get("X-Tags") or h.get("Tags") or "").split(",") if t.strip()]
            click = h.get("X-Click") or h.get("Click")
            actions = [a for a in (h.get("X-Actions") or h.get("Actions") or "").split(";") if a.strip()]
        if not TOPIC_RE.match(topic):
            return self._error(req, 400, 40010, "invalid request: topic invalid")
        if not isinstance(priority, int) or not 1 <= priority <= 5:
            return self._error(req, 400, 40007, "invalid priority")
        if len(message.encode()) > 4096:
            return self._error(req, 413, 41301, "message too large")
        if len(actions) > 3:
            return self._error(req, 400, 40018, "too many actions")
        published = Published(topic=topic, title=title, message=message, priority=priority, tags=tags,
                              click=click, actions=actions, authorization=auth, raw_headers=dict(req.headers))
        with self._lock:
            self.messages.append(published)
        now = int(time.time())
        self._json(req, 200, {"id": secrets.token_hex(6), "time": now, "expires": now + 43200,
                              "event": "message", "topic": topic, "title": title, "message": message,
                              "priority": priority, "tags": tags, "click": click})

    @staticmethod
    def _json(req: BaseHTTPRequestHandler, status: int, data: dict) -> None:
        raw = json.dumps(data).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(raw)))
        req.end_headers()
        req.wfile.write(raw)

    def _error(self, req, status: int, code: int, text: str) -> None:
        self._json(req, status, {"code": code, "http": status, "error": text,
                                 "link": "https://ntfy.sh/docs/publish/"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
