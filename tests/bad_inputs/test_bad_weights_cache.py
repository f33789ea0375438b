"""A weights cache shared by many processes, altered on disk, or fed by a hostile server (real http.server and an
https server on 127.0.0.1): one download, verified files, one-line refusals."""

import functools
import hashlib
import http.server
import os
import shutil
import ssl
import subprocess
import threading
import time

import pytest

from mawstron.core import hub
from mawstron.core.hub import Release, WeightsDownloadError, get_weights

PAYLOAD = os.urandom(256 * 1024 + 7)
MD5_PREFIX = hashlib.md5(PAYLOAD).hexdigest()[:6]


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder, plus: /slow/NAME (the file in 64 KiB pieces, 0.1 s apart), /nolength (bytes without a
    Content-Length, until the connection closes), /to/URL (a 302 to URL)."""

    log: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.log.append(self.path)
        if self.path.startswith("/slow/"):
            data = open(os.path.join(self.directory, self.path[6:]), "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            for i in range(0, len(data), 65536):
                self.wfile.write(data[i:i + 65536])
                self.wfile.flush()
                time.sleep(0.1)
            return
        if self.path == "/nolength":
            self.close_connection = True
            self.send_response(200)
            self.end_headers()
            self.wfile.write(PAYLOAD)
            return
        if self.path.startswith("/to/"):
            self.send_response(302)
            self.send_header("Location", self.path[4:])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()


def _serve(root, context=None):
    Handler.log = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    if context is not None:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    (root / "w.pt").write_bytes(PAYLOAD)
    httpd = _serve(root)
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAWSTRON_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MAWSTRON_DOWNLOAD_DEADLINE_S", raising=False)
    monkeypatch.delenv("MAWSTRON_DOWNLOAD_MAX_GIB", raising=False)


def test_concurrent_downloads_of_one_name_download_once(server):
    """Every rank calling create_vit(pretrained=...) at once: one download, the others wait for the lock."""
    base, _ = server
    releases = {"toy": Release(f"{base}/slow/w.pt", "vit_micro", "toy", md5_prefix=MD5_PREFIX)}
    results, errors = [], []

    def fetch():
        try:
            results.append(get_weights("toy", releases))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(set(results)) == 1 and open(results[0], "rb").read() == PAYLOAD
    assert Handler.log.count("/slow/w.pt") == 1, Handler.log
    assert not os.path.exists(results[0] + ".part")


def test_a_cached_file_without_a_record_is_checked_against_the_published_md5_prefix(server):
    """A cached file with no checksum record is verified against the release's published md5 prefix."""
    base, _ = server
    releases = {"toy": Release(f"{base}/w.pt", "vit_micro", "toy", md5_prefix=MD5_PREFIX)}
    path = hub.cached_path("toy", releases)
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(PAYLOAD[:-1] + b"!")  # altered, and no .sha256 beside it
    with pytest.raises(WeightsDownloadError, match="does not start with the published"):
        get_weights("toy", releases)
    with open(path, "wb") as f:
        f.write(PAYLOAD)
    assert get_weights("toy", releases) == path
    assert open(path + ".sha256").read().split()[0] == hashlib.sha256(PAYLOAD).hexdigest()  # recorded now
    assert Handler.log == []  # nothing was downloaded


def test_an_empty_checksum_record_is_no_indexerror(server):
    """An empty (or garbled) .sha256 record: the file is checked otherwise and the record rewritten."""
    base, _ = server
    releases = {"toy": Release(f"{base}/w.pt", "vit_micro", "toy", md5_prefix=MD5_PREFIX)}
    path = get_weights("toy", releases)
    open(path + ".sha256", "w").close()
    assert get_weights("toy", releases) == path
    assert open(path + ".sha256").read().split()[0] == hashlib.sha256(PAYLOAD).hexdigest()


def test_the_record_is_written_atomically_before_the_file_appears(server, monkeypatch):
    """The .sha256 record is in place (renamed whole) before the weights file becomes visible."""
    base, _ = server
    releases = {"toy": Release(f"{base}/w.pt", "vit_micro", "toy")}
    renamed, real_replace = [], os.replace

    def spy(src, dst):
        renamed.append(os.path.basename(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    path = get_weights("toy", releases)
    assert renamed == [os.path.basename(path) + ".sha256", os.path.basename(path)]


def test_a_trickling_server_stops_at_the_deadline(server, monkeypatch):
    """A server that trickles (never stalls long enough for the read timeout) is stopped at an overall deadline."""
    base, _ = server
    monkeypatch.setenv("MAWSTRON_DOWNLOAD_DEADLINE_S", "0.3")
    releases = {"toy": Release(f"{base}/slow/w.pt", "vit_micro", "toy")}
    with pytest.raises(WeightsDownloadError, match="took longer than 0.3 s"):
        get_weights("toy", releases)
    path = hub.cached_path("toy", releases)
    assert not os.path.exists(path) and not os.path.exists(path + ".part")


def test_a_download_stops_at_the_size_limit(server, monkeypatch):
    """A file larger than the limit (announced or not) is refused or stopped at the limit."""
    base, _ = server
    monkeypatch.setenv("MAWSTRON_DOWNLOAD_MAX_GIB", str(64 * 1024 / 2**30))  # 64 KiB
    with pytest.raises(WeightsDownloadError, match="announces .* more than the limit"):
        get_weights("a", {"a": Release(f"{base}/w.pt", "vit_micro", "toy")})
    with pytest.raises(WeightsDownloadError, match="sent more than the limit of 65536 bytes"):
        get_weights("b", {"b": Release(f"{base}/nolength", "vit_micro", "toy")})


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_an_https_to_http_redirect_is_refused(server, tmp_path, monkeypatch):
    """An https release that redirects to plain http is refused (the bytes would not be authenticated)."""
    base, root = server
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpsd = _serve(root, context)
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # the client trusts this test's certificate, nothing else changes
    https = f"https://127.0.0.1:{httpsd.server_address[1]}"
    try:
        assert open(get_weights("ok", {"ok": Release(f"{https}/w.pt", "vit_micro", "toy")}), "rb").read() == PAYLOAD
        releases = {"toy": Release(f"{https}/to/{base}/w.pt", "vit_micro", "toy")}
        with pytest.raises(WeightsDownloadError, match="from https to http: refused"):
            get_weights("toy", releases)
        assert "/w.pt" not in Handler.log[Handler.log.index(f"/to/{base}/w.pt"):][1:]  # the http URL was not fetched
        assert not os.path.exists(hub.cached_path("toy", releases))
    finally:
        httpsd.shutdown()
        httpsd.server_close()
