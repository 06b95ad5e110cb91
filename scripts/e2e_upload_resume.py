#!/usr/bin/env python3
"""Gate 2: uploads interrupted at random points (the connection dropped in the middle of a chunk,
and the API process restarted once in between) all resume from the server's status and finish
with the sha256 of the original file.

    .venv/bin/python scripts/e2e_upload_resume.py [--uploads 20] [--seed N]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_harness import Deployment, check, make_talk, run_gate, sha256_file  # noqa: E402

CHUNK = 32 * 1024


def drop_mid_chunk(port: int, token: str, upload_id: str, index: int, piece: bytes, cut: int) -> None:
    """Start a chunk PUT, send `cut` bytes of its body, and drop the connection (RST)."""
    head = (f"PUT /api/uploads/{upload_id}/chunk?index={index} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
            f"X-Chunk-SHA256: {hashlib.sha256(piece).hexdigest()}\r\nContent-Length: {len(piece)}\r\n\r\n")
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(head.encode() + piece[:cut])
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
    s.close()


def gate(count: int, seed: int) -> str:
    rng = random.Random(seed)
    with Deployment("upload_resume", env={"UPLOAD_CHUNK_BYTES": str(CHUNK)}) as d:
        d.start("api")
        video = make_talk(d.root / "media", sentences=3)
        data = video.read_bytes()
        want = hashlib.sha256(data).hexdigest()
        chunks = -(-len(data) // CHUNK)
        check(chunks >= 4, f"the test video is too small to interrupt ({chunks} chunks)")
        restart_at = rng.randrange(count)
        from resources.jobstore import JobStore
        from resources.uploads import UploadStore

        store = UploadStore(JobStore(database_url=d.db_url))
        resumed_chunks = 0
        for n in range(count):
            who = ("alice", "bob")[n % 2]
            c = d.client(who)
            r = c.request("POST", "/api/uploads/init", json={"filename": f"talk{n}.mp4", "size_bytes": len(data),
                                                             "content_type": "video/mp4", "sha256": want})
            check(r.status_code == 201, f"init {n}: {r.status_code} {r.text}")
            upload_id = r.json()["upload_id"]
            stop = rng.randrange(chunks)  # chunks before it go through, it is cut
            order = list(range(chunks))
            rng.shuffle(order)  # clients may send in any order (several at once)
            sent = [i for i in order if i != stop][:stop]
            for i in sent:
                piece = data[i * CHUNK:(i + 1) * CHUNK]
                r = c.request("PUT", f"/api/uploads/{upload_id}/chunk", params={"index": i}, content=piece,
                              headers={"X-Chunk-SHA256": hashlib.sha256(piece).hexdigest()})
                check(r.status_code == 200, f"upload {n} chunk {i}: {r.status_code} {r.text}")
            piece = data[stop * CHUNK:(stop + 1) * CHUNK]
            drop_mid_chunk(d.ports["api"], d.tokens[who], upload_id, stop, piece, rng.randrange(1, len(piece)))
            if n == restart_at:
                d.restart("api")
            status = c.request("GET", f"/api/uploads/{upload_id}", retry_s=30).json()
            check(not status["received"][stop], f"upload {n}: the cut chunk {stop} was counted")
            check(sum(status["received"]) == len(sent), f"upload {n}: server has {sum(status['received'])} "
                                                        f"chunks, client sent {len(sent)}")
            resumed_chunks += c.send_missing(upload_id, data)
            done = c.complete(upload_id, "es")
            check(done.get("job_id"), f"upload {n}: no job after complete")
            got = sha256_file(store.data_path(upload_id))
            check(got == want, f"upload {n}: sha256 {got} != {want}")
            c.close()
        return (f"{count} uploads of {len(data)} bytes ({chunks} chunks) cut mid-chunk, API restarted once "
                f"(after upload {restart_at}); {resumed_chunks} chunks resent; all sha256 match")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"seed {seed} (repeat with --seed {seed})")
    run_gate("e2e_upload_resume", lambda: gate(args.uploads, seed))
