"""Real object-storage servers on 127.0.0.1 for the data tests: moto's S3 server and http.server with ranges."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import subprocess
import sys
import threading


class RangeRequestHandler(http.server.SimpleHTTPRequestHandler):
    """http.server's file handler plus single byte ranges (``Range: bytes=a-b``), as S3, nginx and CDNs answer."""

    def log_message(self, *args):
        pass

    def send_head(self):
        rng = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not rng or not os.path.isfile(path):
            return super().send_head()
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
        size = os.path.getsize(path)
        if not m:
            self.send_error(416)
            return None
        start = int(m.group(1)) if m.group(1) else max(0, size - int(m.group(2)))
        end = min(int(m.group(2)), size - 1) if m.group(1) and m.group(2) else size - 1
        if start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return None
        f = open(path, "rb")
        f.seek(start)
        self._remaining = end - start + 1
        self.send_response(206)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(self._remaining))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return f

    def copyfile(self, source, outputfile):
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            return super().copyfile(source, outputfile)
        while remaining > 0:
            chunk = source.read(min(65536, remaining))
            if not chunk:
                break
            outputfile.write(chunk)
            remaining -= len(chunk)
        self._remaining = None


@contextlib.contextmanager
def http_server(directory: str):
    """``http://127.0.0.1:PORT`` serving ``directory``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(RangeRequestHandler, directory=directory))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


_MOTO_CHILD = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the test closes stdin (or dies)
server.stop()
"""


@contextlib.contextmanager
def _moto_in_child():
    """moto's S3 server in a child process: DALI's S3 client (C++) sends its first requests from inside
    ``Pipeline.build``, which holds the GIL, so a server thread in the test's own process cannot answer them."""
    child = subprocess.Popen([sys.executable, "-c", _MOTO_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    watchdog = threading.Timer(60, child.kill)  # a server that never starts fails the test, not the CI run
    watchdog.start()
    try:
        port = child.stdout.readline().strip()
        watchdog.cancel()
        if not port.isdigit():
            raise RuntimeError(f"moto's server did not start (exit status {child.wait(timeout=30)})")
        yield f"http://127.0.0.1:{port}"
    finally:
        watchdog.cancel()
        child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@contextlib.contextmanager
def _moto_in_thread():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextlib.contextmanager
def s3_server(monkeypatch, *, process=False):
    """moto's S3 server on 127.0.0.1 with the AWS settings that point s3fs (and DALI) at it; yields the endpoint.
    ``process=True`` runs it in a child process (needed by DALI, see ``_moto_in_child``)."""
    with (_moto_in_child() if process else _moto_in_thread()) as endpoint:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        import fsspec

        fsspec.filesystem("s3").clear_instance_cache()
        try:
            yield endpoint
        finally:
            fsspec.filesystem("s3").clear_instance_cache()
