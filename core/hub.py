"""The released MAWS and MAE weights by name: download once into a cache folder, check, load.

Sources (read from the publishers' own repositories in November 2026):

* facebookresearch/maws, ``maws/model_builder.py`` and its README's model zoo: MAWS (MAE -> WSP on IG-3B) and
  MAE (on IG-3B) encoders as timm ``VisionTransformer`` state dicts, and MAWS encoders fine-tuned on ImageNet-1k
  at 512 px (B, L) / 518 px (H, 2B, 6.5B) with a 1000-way head.  The release publishes **no checksums**.
* facebookresearch/mae, README: MAE on ImageNet-1k (``{"model": ...}`` encoder checkpoints) with the first six
  hex digits of each file's **md5**; and ``mae_visualize_vit_large.pth`` (encoder + decoder, trained on raw
  pixels) from its visualisation demo, without a checksum.

What is checked: the byte count the server announces; the published md5 prefix where there is one; and, since
nobody publishes a sha256, the sha256 of the first complete download is recorded beside the file
(``<file>.sha256``) and every later use verifies the cached file against it, so a truncated or altered cache is
caught (a file that was wrong at its first download is not: we have no published digest to compare with).

The cache is ``$MAWSTRON_CACHE`` if set, else ``$XDG_CACHE_HOME/mawstron`` or ``~/.cache/mawstron``.  Offline, a
download fails with one line naming the URL and where to put the file by hand.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field

MAWS_URL = "https://dl.fbaipublicfiles.com/maws"
MAE_URL = "https://dl.fbaipublicfiles.com/mae"


class WeightsDownloadError(RuntimeError):
    """A release could not be downloaded or failed its check; the message is one line with the fix."""


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
             progress=None) -> str:
    """``url`` to ``dest`` (through ``dest.part``, renamed only once complete and checked); returns the file's
    sha256.  Raises WeightsDownloadError (one line) when offline, on an HTTP error, a short read or a checksum
    mismatch; nothing is left at ``dest`` then."""
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part = dest + ".part"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "mawstron"}),
                                    timeout=timeout_s) as response, open(part, "wb") as out:
            expected = int(response.headers.get("Content-Length") or -1)
            done = 0
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, expected)
        if expected >= 0 and done != expected:
            raise WeightsDownloadError(f"download of {url} stopped at {done} of {expected} bytes; run it again")
    except urllib.error.HTTPError as e:
        _remove(part)
        raise WeightsDownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}; the release may have moved "
                                   f"(check its repository), or put the file at {dest} by hand") from None
    except (urllib.error.URLError, OSError) as e:
        _remove(part)
        reason = getattr(e, "reason", None) or e
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
    os.replace(part, dest)
    return actual_sha


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
    """Path of release ``name`` in the cache, downloading it first if needed; a cached file is verified against
    the sha256 recorded at its download (and the published one, if any)."""
    r = release(name, releases)
    path = cached_path(name, releases)
    record = path + ".sha256"
    if os.path.isfile(path):
        recorded = r.sha256 or (open(record).read().split()[0] if os.path.isfile(record) else "")
        if recorded:
            actual, _ = file_digests(path)
            if actual != recorded:
                raise WeightsDownloadError(f"cached {path} has sha256 {actual}, not the {recorded} recorded at its "
                                           f"download; delete it and run `mawstron weights get {name}` again")
        return path
    sha = download(r.url, path, sha256=r.sha256, md5_prefix=r.md5_prefix, progress=progress)
    with open(record, "w") as f:
        f.write(f"{sha}  {os.path.basename(path)}  {r.url}\n")
    return path


def clear_partial(name: str) -> None:
    """Remove a leftover ``.part`` of ``name`` (a download killed mid-way)."""
    _remove(cached_path(name) + ".part")


__all__ = ["RELEASES", "Release", "WeightsDownloadError", "cache_dir", "cached_path", "clear_partial",
           "download", "file_digests", "get_weights", "release"]
