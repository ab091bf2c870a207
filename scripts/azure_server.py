"""An Azure Blob Storage emulator for pitlake's tests: Azurite (from npm) on 127.0.0.1.

    python scripts/azure_server.py --azurite PATH [--container NAME]... [--port-file FILE]
                                   [--parent-pid PID]

Starts `azurite-blob` on a free port of 127.0.0.1 with telemetry off and its data in a temporary
folder, creates the containers (with azure-storage-blob, as the well-known emulator account
devstoreaccount1), writes the blob endpoint `http://127.0.0.1:PORT/devstoreaccount1` to
--port-file (or prints it), and runs until SIGTERM/SIGINT or until --parent-pid has exited;
Azurite stops with it.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ACCOUNT = "devstoreaccount1"
# Azurite's documented, public development key (not a secret).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--azurite", required=True, help="the azurite-blob executable")
    parser.add_argument("--container", action="append", default=[])
    parser.add_argument("--port-file")
    parser.add_argument("--parent-pid", type=int)
    args = parser.parse_args()

    data = tempfile.mkdtemp(prefix="pitlake-azurite-")
    process = None
    for _ in range(5):
        port = free_port()
        process = subprocess.Popen(
            [args.azurite, "--blobHost", "127.0.0.1", "--blobPort", str(port),
             "--location", data, "--silent", "--skipApiVersionCheck", "--disableTelemetry"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.time() + 30
        up = False
        while time.time() < deadline and process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    up = True
                    break
            except OSError:
                time.sleep(0.1)
        if up:
            break
        process.kill()
        print(process.stdout.read(), file=sys.stderr)
        process = None
    if process is None:
        print("azurite did not start", file=sys.stderr)
        return 1
    # Drain Azurite's output so that it never blocks on a full pipe.
    threading.Thread(target=lambda: process.stdout.read(), daemon=True).start()

    endpoint = f"http://127.0.0.1:{port}/{ACCOUNT}"
    if args.container:
        from azure.storage.blob import BlobServiceClient

        client = BlobServiceClient.from_connection_string(
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={endpoint};"
        )
        for name in args.container:
            client.create_container(name)

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
        if process.poll() is not None:
            break
        if args.parent_pid is not None:
            try:
                os.kill(args.parent_pid, 0)
            except ProcessLookupError:
                break
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
    shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
