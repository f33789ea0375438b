"""The released MAWS and MAE weights by name: download once into a cache folder, check, load.

Sources (read from the publishers' own repositories in November 2026):

* facebookresearch/maws, ``maws/model_builder.py`` and its README's model zoo: MAWS (MAE -> WSP on IG-3B) and
  MAE (on IG-3B) encoders as timm ``VisionTransformer`` state dicts, and MAWS encoders fine-tuned on ImageNet-1k
  at 512 px (B, L) / 518 px (H, 2B, 6.5B) with a 1000-way head.  The release publishes **no checksums**.
* facebookresearch/mae, README: MAE on ImageNet-1k (``{"model": ...}`` encoder checkpoints) with the first six
  hex digits of each file's **md5**; and ``mae_visualize_vit_large.pth`` (encoder + decoder, trained on raw
  pixels) from its visualisation demo, without a checksum.

What is checked: the byte count the server announces; the published md5 prefix where there is one (at download and
on every use of a cached file); and, since nobody publishes a sha256, the sha256 of the first complete download is
recorded beside the file (``<file>.sha256``, written atomically before the file itself appears) and every later
use verifies the cached file against it, so a truncated or altered cache is caught (a file that was wrong at its
first download is not: we have no published digest to compare with).

Shared caches: every process that wants a release (each rank calling ``create_vit(pretrained=...)``) takes an
exclusive lock on ``<file>.lock``; one downloads, the others wait and then find the verified file.  A download
refuses a redirect from https to http, stops at an overall deadline (``MAWSTRON_DOWNLOAD_DEADLINE_S``, default
6 h; the per-read timeout catches a stalled server, the deadline a trickling one), and at a size limit: never past
the announced size, and never beyond ``MAWSTRON_DOWNLOAD_MAX_GIB`` (default 64 GiB; the largest release, 6.5B
parameters in fp32, is 26 GB).

The cache is ``$MAWSTRON_CACHE`` if set, else ``$XDG_CACHE_HOME/mawstron`` or ``~/.cache/mawstron``.  Offline, a
download fails with one line naming the URL and where to put the file by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

MAWS_URL = "https://dl.fbaipublicfiles.com/maws"
MAE_URL = "https://dl.fbaipublicfiles.com/mae"


class WeightsDownloadError(RuntimeError):
    """A release could not be downloaded or failed its check; the message is one line with the fix."""


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        raise WeightsDownloadError(f"{name}={os.environ[name]!r} is not a number; unset it or give seconds/GiB") from None


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follow redirects, except from https to http (the bytes would travel unauthenticated)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urllib.parse.urlsplit(req.full_url).scheme, urllib.parse.urlsplit(newurl).scheme
        if old == "https" and new != "https":
            raise WeightsDownloadError(f"{req.full_url} redirects to {newurl}, from https to {new}: refused (the "
                                       f"download would not be authenticated); download it yourself if you trust it")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_NoDowngrade)


@dataclass(frozen=True)
class Release:
    url: str
    preset: str
    description: str
    md5_prefix: str = ""  # as published (MAE's README prints six hex digits)
    sha256: str = ""  # none is published today; kept for releases that do
    vit_overrides: dict = field(default_factory=dict)  # what the checkpoint needs beyond the preset


def _maws_releases() -> dict[str, Release]:
    out = {}
    for preset in ("vit_b16", "vit_l16", "vit_h14", "vit_2b14", "vit_6.5b14"):
        out[f"maws_{preset}"] = Release(f"{MAWS_URL}/pretrain/maws/{preset}.pt", preset,
                                        "MAWS: MAE pre-pretraining then WSP on IG-3B (encoder)")
        out[f"mae_{preset}"] = Release(f"{MAWS_URL}/pretrain/mae/{preset}.pt", preset,
                                       "MAE pre-pretrained on IG-3B (encoder), the first MAWS stage")
        size = 512 if preset in ("vit_b16", "vit_l16") else 518
        out[f"maws_{preset}_ft_in1k"] = Release(
            f"{MAWS_URL}/finetune/in1k/maws/{preset}_{size}.pt", preset,
            f"MAWS fine-tuned on ImageNet-1k at {size} px (1000-way head)",
            vit_overrides={"img_size": size, "num_classes": 1000})
    return out


RELEASES: dict[str, Release] = {
    **_maws_releases(),
    "mae_in1k_vit_2b14": Release(f"{MAWS_URL}/pretrain/mae_in1k/vit_2b14.pt", "vit_2b14",
                                 "MAE pretrained on ImageNet-1k (MAWS release, encoder)"),
    "mae_in21k_vit_l16": Release(f"{MAWS_URL}/pretrain/mae_in21k/vit_l16.pt", "vit_l16",
                                 "MAE pretrained on ImageNet-21k (MAWS release, encoder)"),
    "mae_in1k_vit_b16": Release(f"{MAE_URL}/pretrain/mae_pretrain_vit_base.pth", "vit_b16",
                                "MAE pretrained on ImageNet-1k (MAE release, encoder)", md5_prefix="8cad7c"),
    "mae_in1k_vit_l16": Release(f"{MAE_URL}/pretrain/mae_pretrain_vit_large.pth", "vit_l16",
                                "MAE pretrained on ImageNet-1k (MAE release, encoder)", md5_prefix="b8b06e"),
    "mae_in1k_vit_h14": Release(f"{MAE_URL}/pretrain/mae_pretrain_vit_huge.pth", "vit_h14",
                                "MAE pretrained on ImageNet-1k (MAE release, encoder)", md5_prefix="9bdbb0"),
    "mae_visualize_vit_l16": Release(f"{MAE_URL}/visualize/mae_visualize_vit_large.pth", "vit_l16",
                                     "MAE ViT-L with its decoder, raw-pixel loss (MAE's visualisation demo)"),
}


def cache_dir() -> str:
    base = os.environ.get("MAWSTRON_CACHE")
    if not base:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                            "mawstron")
    return os.path.join(base, "weights")


def file_digests(path: str) -> tuple[str, str]:
    """(sha256, md5) hex digests of a file, read once."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def download(url: str, dest: str, *, sha256: str = "", md5_prefix: str = "", timeout_s: float = 60.0,
             progress=None, deadline_s: float | None = None, max_bytes: int | None = None,
             record: str | None = None) -> str:
    """``url`` to ``dest`` (through ``dest.part``, renamed only once complete and checked); returns the file's
    sha256.  ``record``: a path where ``"<sha256>  <name>  <url>"`` is written atomically *before* ``dest``
    appears.  Raises WeightsDownloadError (one line) when offline, on an HTTP error, an https->http redirect, a
    short or overlong read, past ``deadline_s`` or ``max_bytes``, or on a checksum mismatch; nothing is left at
    ``dest`` then.  Callers that share a cache hold ``cache_lock(dest)`` (``get_weights`` does)."""
    deadline_s = _env_float("MAWSTRON_DOWNLOAD_DEADLINE_S", 6 * 3600) if deadline_s is None else deadline_s
    max_bytes = int(_env_float("MAWSTRON_DOWNLOAD_MAX_GIB", 64) * 2**30) if max_bytes is None else max_bytes
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part = dest + ".part"
    started = time.monotonic()
    try:
        with _OPENER.open(urllib.request.Request(url, headers={"User-Agent": "mawstron"}),
                          timeout=timeout_s) as response, open(part, "wb") as out:
            expected = int(response.headers.get("Content-Length") or -1)
            if expected > max_bytes:
                raise WeightsDownloadError(f"{url} announces {expected} bytes, more than the limit of {max_bytes} "
                                           f"(MAWSTRON_DOWNLOAD_MAX_GIB); raise it if the release is that large")
            limit = expected if expected >= 0 else max_bytes
            done = 0
            read = getattr(response, "read1", response.read)  # what has arrived: the deadline is checked often
            while chunk := read(min(1 << 20, limit + 1 - done)):
                out.write(chunk)
                done += len(chunk)
                if done > limit:
                    raise WeightsDownloadError(
                        f"{url} sent more than {'the announced' if expected >= 0 else 'the limit of'} {limit} bytes; "
                        f"stopped (raise MAWSTRON_DOWNLOAD_MAX_GIB if the release is that large)")
                if time.monotonic() - started > deadline_s:
                    raise WeightsDownloadError(
                        f"download of {url} took longer than {deadline_s:g} s ({done} bytes so far); stopped: try "
                        f"again on a faster network, or raise MAWSTRON_DOWNLOAD_DEADLINE_S")
                if progress:
                    progress(done, expected)
            out.flush()
            os.fsync(out.fileno())
        if expected >= 0 and done != expected:
            raise WeightsDownloadError(f"download of {url} stopped at {done} of {expected} bytes; run it again")
    except WeightsDownloadError:
        _remove(part)
        raise
    except urllib.error.HTTPError as e:
        _remove(part)
        raise WeightsDownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}; the release may have moved "
                                   f"(check its repository), or put the file at {dest} by hand") from None
    except (urllib.error.URLError, OSError) as e:
        _remove(part)
        reason = getattr(e, "reason", None) or e
        if isinstance(reason, WeightsDownloadError):  # raised by the redirect handler, wrapped by urllib
            raise reason from None
        raise WeightsDownloadError(
            f"cannot download {url} ({reason}); check the network, or download it elsewhere and put it at {dest}"
        ) from None
    except BaseException:
        _remove(part)
        raise
    actual_sha, actual_md5 = file_digests(part)
    problem = ""
    if sha256 and actual_sha != sha256.lower():
        problem = f"sha256 {actual_sha} differs from the published {sha256}"
    elif md5_prefix and not actual_md5.startswith(md5_prefix.lower()):
        problem = f"md5 {actual_md5} does not start with the published {md5_prefix}"
    if problem:
        _remove(part)
        raise WeightsDownloadError(f"{url}: {problem}; the download is corrupt or the release changed")
    if record:
        _write_record(record, actual_sha, dest, url)
    os.replace(part, dest)
    return actual_sha


def _write_record(record: str, sha: str, dest: str, url: str) -> None:
    tmp = f"{record}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{sha}  {os.path.basename(dest)}  {url}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, record)


def _read_record(record: str) -> str:
    """The sha256 a record holds; "" for a missing, empty or garbled one (then the file is checked otherwise)."""
    try:
        with open(record) as f:
            fields = f.read().split()
    except (FileNotFoundError, UnicodeDecodeError):
        return ""
    sha = fields[0].lower() if fields else ""
    return sha if len(sha) == 64 and all(c in "0123456789abcdef" for c in sha) else ""


@contextlib.contextmanager
def cache_lock(path: str):
    """An exclusive lock on ``<path>.lock`` (``flock``: released if the holder dies): one process downloads a
    release while the others sharing the cache wait."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        f = open(path + ".lock", "a")
    except OSError:
        if not os.path.isfile(path):
            raise
        yield  # a read-only cache filled beforehand: nobody downloads into it, there is nothing to wait for
        return
    with f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def release(name: str, releases: dict[str, Release] | None = None) -> Release:
    releases = RELEASES if releases is None else releases
    if name not in releases:
        raise KeyError(f"no released weights named {name!r}; known: {', '.join(sorted(releases))}")
    return releases[name]


def cached_path(name: str, releases: dict[str, Release] | None = None) -> str:
    r = release(name, releases)
    return os.path.join(cache_dir(), f"{name}{os.path.splitext(r.url)[1] or '.pt'}")


def get_weights(name: str, releases: dict[str, Release] | None = None, progress=None) -> str:
    """Path of release ``name`` in the cache, downloading it first if needed (one process at a time: the others
    wait on the cache lock); a cached file is verified against the published digest (sha256 or md5 prefix) and the
    sha256 recorded at its download."""
    r = release(name, releases)
    path = cached_path(name, releases)
    record = path + ".sha256"
    with cache_lock(path):
        if os.path.isfile(path):
            _verify_cached(name, r, path, record)
            return path
        download(r.url, path, sha256=r.sha256, md5_prefix=r.md5_prefix, progress=progress, record=record)
    return path


def _verify_cached(name: str, r: Release, path: str, record: str) -> None:
    recorded = r.sha256.lower() or _read_record(record)
    if not recorded and not r.md5_prefix:
        return  # nothing published, nothing recorded (a file put there by hand): nothing to compare with
    actual, md5 = file_digests(path)
    fix = f"delete it and run `mawstron weights get {name}` again"
    if recorded and actual != recorded:
        raise WeightsDownloadError(f"cached {path} has sha256 {actual}, not the {recorded} "
                                   f"{'published' if r.sha256 else 'recorded at its download'}; {fix}")
    if r.md5_prefix and not md5.startswith(r.md5_prefix.lower()):
        raise WeightsDownloadError(f"cached {path} has md5 {md5}, which does not start with the published "
                                   f"{r.md5_prefix}; {fix}")
    if not _read_record(record):
        try:
            _write_record(record, actual, path, r.url)  # verified against the published prefix: record it
        except OSError:
            pass  # a read-only cache: checked again next time


def clear_partial(name: str) -> None:
    """Remove a leftover ``.part`` of ``name`` (a download killed mid-way)."""
    _remove(cached_path(name) + ".part")


__all__ = ["RELEASES", "Release", "WeightsDownloadError", "cache_dir", "cache_lock", "cached_path", "clear_partial",
           "download", "file_digests", "get_weights", "release"]
