"""An S3-compatible server on loopback for tests: moto's server, one request at a time.

    with LocalS3() as s3:            # sets nothing globally; s3.environ() has the variables to use
        ...

What moto emulates here: buckets, objects, listing, ETags, and conditional PutObject
(`If-None-Match: *`, `If-Match`). What it does not: S3's atomic check-and-write under concurrent
requests (moto checks, then writes, in a request thread), so the server is run single-threaded,
which makes each conditional write atomic as on S3; latency, eventual listing, multipart limits,
IAM, and the 409 S3 answers to two conditional writes in flight at once.
"""

from __future__ import annotations

import subprocess
import sys
import time
from types import TracebackType

import httpx

from devtools.kafka_local import free_port

_SERVE = """
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app), threaded=False)
"""


class LocalS3:
    def __init__(self, bucket: str = "rlhf"):
        self.bucket = bucket
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def environ(self) -> dict[str, str]:
        """The variables s3fs/botocore read: this server, and throwaway credentials."""
        return {
            "AWS_ENDPOINT_URL_S3": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def __enter__(self) -> LocalS3:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVE, str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.put(f"{self.url}/{self.bucket}", timeout=2).raise_for_status()  # create the bucket
                return self
            except httpx.HTTPError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not start on port {self.port}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
