"""Released weights by name: download, checksums and cache, against files served from 127.0.0.1 (CI has no
network), and `create_vit(..., pretrained=...)` / `mawstron weights get` on top."""

import functools
import hashlib
import http.server
import os
import socket
import threading

import pytest
import torch

from mawstron.cli.main import main
from mawstron.core import create_vit
from mawstron.core.hub import RELEASES, Release, WeightsDownloadError, cached_path, download, get_weights


@pytest.fixture
def server(tmp_path):
    """(folder served, base URL, request log)."""
    root = tmp_path / "served"
    root.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAWSTRON_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/w.pt"


def test_download_checks_sha256_and_md5_prefix(server, tmp_path):
    root, base, _ = server
    payload = os.urandom(3 * 2**20 + 5)  # more than one read chunk
    (root / "w.bin").write_bytes(payload)
    sha, md5 = hashlib.sha256(payload).hexdigest(), hashlib.md5(payload).hexdigest()
    dest = str(tmp_path / "out" / "w.bin")
    assert download(f"{base}/w.bin", dest, sha256=sha, md5_prefix=md5[:6]) == sha
    assert open(dest, "rb").read() == payload
    bad = str(tmp_path / "out" / "bad.bin")
    with pytest.raises(WeightsDownloadError, match="sha256"):
        download(f"{base}/w.bin", bad, sha256="0" * 64)
    with pytest.raises(WeightsDownloadError, match="md5"):
        download(f"{base}/w.bin", bad, md5_prefix="zzzzzz")
    assert not os.path.exists(bad) and not os.path.exists(bad + ".part")  # nothing half-written is left
    with pytest.raises(WeightsDownloadError, match="404|Not Found"):
        download(f"{base}/missing.bin", bad)


def test_offline_fails_with_one_line_naming_the_url_and_the_fix(tmp_path):
    url = closed_port_url()
    with pytest.raises(WeightsDownloadError) as e:
        download(url, str(tmp_path / "w.pt"), timeout_s=5)
    message = str(e.value)
    assert "\n" not in message and url in message and "put it at" in message


def test_cache_downloads_once_and_catches_a_changed_file(server, monkeypatch):
    root, base, requests = server
    (root / "w.pt").write_bytes(b"weights v1" * 1000)
    releases = {"toy": Release(f"{base}/w.pt", "vit_micro", "a toy release")}
    path = get_weights("toy", releases)
    assert path == cached_path("toy", releases) and os.path.isfile(path + ".sha256")
    assert get_weights("toy", releases) == path
    assert requests.count("/w.pt") == 1  # the second call read the cache
    with open(path, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(WeightsDownloadError, match="delete it"):
        get_weights("toy", releases)
    with pytest.raises(KeyError, match="maws_vit_h14"):
        get_weights("maws_vit_h15")


def test_create_vit_pretrained_and_weights_get(server, monkeypatch, capsys):
    root, base, _ = server
    torch.manual_seed(1)
    reference = create_vit("vit_micro")
    # as the MAE repository publishes its encoders: {"model": state dict}
    torch.save({"model": reference.state_dict()}, root / "micro.pth")
    monkeypatch.setitem(RELEASES, "maws_vit_micro", Release(f"{base}/micro.pth", "vit_micro", "toy"))
    model = create_vit("vit_micro", pretrained="maws")
    for name, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert main(["weights", "get", "maws_vit_micro"]) == 0
    assert capsys.readouterr().out.strip() == cached_path("maws_vit_micro")
    monkeypatch.setitem(RELEASES, "mae_vit_micro", Release(closed_port_url(), "vit_micro", "toy"))
    assert main(["weights", "get", "mae_vit_micro"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mawstron weights get: cannot download") and "\n" not in err


def test_registry_names_the_published_releases():
    assert RELEASES["maws_vit_h14"].url == "https://dl.fbaipublicfiles.com/maws/pretrain/maws/vit_h14.pt"
    assert RELEASES["mae_in1k_vit_b16"].md5_prefix == "8cad7c"
    assert RELEASES["maws_vit_h14_ft_in1k"].vit_overrides == {"img_size": 518, "num_classes": 1000}
    assert all(r.preset in ("vit_b16", "vit_l16", "vit_h14", "vit_2b14", "vit_6.5b14") for r in RELEASES.values())
