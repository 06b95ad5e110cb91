"""The Dagster UI under /dagster is reachable for admins only (the webserver's own ASGI app inside
the API process, behind this service's login)."""

import httpx
import pytest

pytestmark = pytest.mark.slow


def login(api, name):
    c = httpx.Client(base_url=api.url, timeout=120)
    with c:
        r = c.post("/api/auth/login", json={"username": name, "password": f"{name}-password-123"})
    assert r.status_code == 200
    return httpx.Client(base_url=api.url, timeout=120, cookies=c.cookies)


def test_dagster_ui_needs_an_admin(api):
    anon = httpx.Client(base_url=api.url, timeout=60)
    r = anon.get("/dagster", headers={"Accept": "text/html"})
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
    r = anon.post("/dagster/graphql", json={"query": "{ version }"})
    assert r.status_code == 401 and "admin" in r.json()["detail"]
    with login(api, "alice") as alice:
        assert alice.get("/dagster").status_code == 403
        assert alice.post("/dagster/graphql", json={"query": "{ version }"}).status_code == 403
    user_token = httpx.post(f"{api.url}/dagster/graphql", json={"query": "{ version }"},
                            headers={"Authorization": f"Bearer {api.tokens['bob']}"})
    assert user_token.status_code == 403

    with login(api, "root") as root:
        page = root.get("/dagster", follow_redirects=True)
        assert page.status_code == 200 and "Dagster" in page.text
        q = root.post("/dagster/graphql", json={"query": "{ version workspaceOrError { __typename } }"})
        assert q.status_code == 200, q.text
        assert q.json()["data"]["workspaceOrError"]["__typename"] == "Workspace"
        jobs = root.post("/dagster/graphql", json={"query": """{ repositoriesOrError { ... on RepositoryConnection {
            nodes { jobs { name } } } } }"""}).json()
        names = {j["name"] for n in jobs["data"]["repositoriesOrError"]["nodes"] for j in n["jobs"]}
        assert "dub_job" in names
    token = httpx.post(f"{api.url}/dagster/graphql", json={"query": "{ version }"},
                       headers={"Authorization": f"Bearer {api.tokens['root']}"})
    assert token.status_code == 200


def test_dagster_websocket_refused_without_admin(api):
    import socket

    key = "dGhlIHNhbXBsZSBub25jZQ=="
    req = (f"GET /dagster/graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: graphql-ws\r\n\r\n")
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as s:
        s.sendall(req.encode())
        answer = s.recv(4096).decode(errors="replace")
    assert " 101 " not in answer.splitlines()[0], answer
