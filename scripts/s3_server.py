"""An S3-compatible server for pitlake's tests: moto's S3 on 127.0.0.1.

    python scripts/s3_server.py [--port 0] [--bucket NAME]... [--port-file FILE] [--parent-pid PID]

Binds 127.0.0.1 (port 0: a free one), creates the buckets, writes `http://127.0.0.1:PORT` to
--port-file (or prints it) once it accepts requests, and serves until SIGTERM/SIGINT, or until
the process --parent-pid names has exited (so a test binary that started it never leaves it
behind).

moto keeps objects in memory and checks `If-None-Match: *` before storing a PUT, but the check
and the store are two steps and its HTTP server runs each request on its own thread: two racing
conditional PUTs of the same key could both pass the check. S3 itself decides atomically, and
pitlake's concurrency tests depend on that, so this server runs the requests that change objects
(PUT, POST, DELETE) one at a time. Reads still run in parallel.
"""

import argparse
import os
import signal
import sys
import threading
import time

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server


class SerializedWrites:
    """WSGI middleware: one object-changing request at a time (see the module docstring)."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") in ("PUT", "POST", "DELETE"):
            with self.lock:
                # Materialize the response inside the lock: moto stores while building it.
                return list(self.app(environ, start_response))
        return self.app(environ, start_response)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--bucket", action="append", default=[])
    parser.add_argument("--port-file")
    parser.add_argument("--parent-pid", type=int)
    args = parser.parse_args()

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "pitlake-test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "pitlake-test-secret")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

    app = SerializedWrites(DomainDispatcherApplication(create_backend_app))
    server = make_server(
        "127.0.0.1", args.port, app, threaded=True, request_handler=MotoRequestHandler
    )
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    if args.bucket:
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="pitlake-test",
            aws_secret_access_key="pitlake-test-secret",
        )
        for bucket in args.bucket:
            s3.create_bucket(Bucket=bucket)

    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(endpoint + "\n")
        os.replace(tmp, args.port_file)
    else:
        print(endpoint, flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        if args.parent_pid is not None:
            try:
                os.kill(args.parent_pid, 0)
            except ProcessLookupError:
                break
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
