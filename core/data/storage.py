"""Where shard bytes come from: local files, and ``s3://`` / ``https://`` objects through fsspec (s3fs, aiohttp).

* ``is_remote(path)``: an object-storage URL rather than a local path.
* ``open_shard(path)``: a seekable binary file (remote: fsspec's file with a read-ahead cache, so scanning a tar's
  headers sequentially costs a few range requests, not one per member).
* ``read_range(path, offset, size)``: one sample's bytes (remote: one range request, with retries).
* ``shard_stamp(path)``: what identifies a shard's version, for index caches (local: size and mtime; remote:
  size and ETag or modification time).
* ``OpenFiles``: a bounded set of open local files (least recently used closed first), so a rank that reads
  1,000+ shards stays under ``ulimit -n``.
* ``private_dir(kind)``: a folder only this user can read (``mkdtemp``), removed when the process exits, for
  index files that cannot go beside the shards (a read-only or remote collection without ``data.index_dir``).

S3 credentials and endpoint come from the usual AWS settings (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, ``AWS_ENDPOINT_URL`` for an S3-compatible store such as MinIO or Ceph).  HTTPS servers must
answer range requests (S3, GCS, nginx, Hugging Face all do).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from collections import OrderedDict

REMOTE_SCHEMES = ("s3://", "http://", "https://")
RETRIES = 3  # attempts for one remote read after transient errors (s3fs retries inside each attempt too)
DEFAULT_MAX_OPEN = 64


def is_remote(path: str) -> bool:
    return path.startswith(REMOTE_SCHEMES)


def filesystem(path: str):
    """The fsspec filesystem for a remote ``path`` (instances are cached per process by fsspec)."""
    try:
        import fsspec
    except ImportError:  # pragma: no cover - the data extra is part of `make install`
        raise ValueError(f"{path}: reading shards from object storage needs the data extra: "
                         f"pip install -e '.[data]'") from None
    protocol = path.split("://", 1)[0]
    try:
        return fsspec.filesystem(protocol)
    except ImportError as e:
        raise ValueError(f"{path}: reading {protocol}:// shards needs {e.name}: pip install -e '.[data]'") from None


def _retry(what: str, fn, *args):
    """``fn(*args)``, retried on transient errors; a missing object or a refusal is raised at once."""
    for attempt in range(RETRIES):
        try:
            return fn(*args)
        except (FileNotFoundError, PermissionError):
            raise
        except Exception as error:  # aiohttp / botocore errors are not all OSErrors
            if attempt == RETRIES - 1:
                raise OSError(f"{what}: {type(error).__name__}: {error} (after {RETRIES} attempts)") from error
            time.sleep(0.2 * 2 ** attempt)


def open_shard(path: str):
    if not is_remote(path):
        return open(path, "rb")
    return _retry(path, lambda: filesystem(path).open(path, "rb", block_size=1 << 20, cache_type="readahead"))


def shard_size(path: str) -> int:
    if not is_remote(path):
        return os.path.getsize(path)
    return int(_retry(path, lambda: filesystem(path).info(path))["size"])


def shard_stamp(path: str) -> list:
    """Raises OSError (FileNotFoundError) if the shard cannot be reached."""
    if not is_remote(path):
        st = os.stat(path)
        return [st.st_size, int(st.st_mtime_ns)]
    info = _retry(path, lambda: filesystem(path).info(path))
    version = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("last_modified") or ""
    return [int(info.get("size") or 0), str(version).strip('"')]


def read_range(path: str, offset: int, size: int) -> bytes:
    if not is_remote(path):
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)
    data = _retry(path, lambda: filesystem(path).cat_file(path, start=offset, end=offset + size))
    if len(data) != size:
        raise OSError(f"{path}: asked for {size} bytes at {offset}, got {len(data)} (the object changed since it "
                      f"was indexed? rebuild the index with `mawstron data index --force`)")
    return data


def read_file(path: str) -> bytes:
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    return _retry(path, lambda: filesystem(path).cat_file(path))


class OpenFiles:
    """At most ``max_open`` local shard files open at once; the least recently used is closed first.  Remote
    shards are read with one range request per sample and hold no file.  An error opening or reading a file is
    raised (an ``OSError`` naming the shard), never mistaken for a bad sample."""

    def __init__(self, max_open: int = DEFAULT_MAX_OPEN):
        if max_open < 1:
            raise ValueError(f"data.max_open_shards must be >= 1, got {max_open}")
        self.max_open = max_open
        self._files: OrderedDict[str, object] = OrderedDict()
        self.opened = 0  # files opened so far (a file closed and reopened counts twice)

    def read(self, path: str, span: tuple[int, int]) -> bytes:
        if is_remote(path):
            return read_range(path, span[0], span[1])
        f = self._files.get(path)
        if f is None:
            while len(self._files) >= self.max_open:
                self._files.popitem(last=False)[1].close()
            try:
                f = open(path, "rb")
            except OSError as e:
                raise OSError(e.errno, f"cannot open shard {path}: {e.strerror} (with {len(self._files)} shards "
                                       f"open; lower data.max_open_shards or raise `ulimit -n`)") from e
            self._files[path] = f
            self.opened += 1
        else:
            self._files.move_to_end(path)
        f.seek(span[0])
        return f.read(span[1])

    def __len__(self):
        return len(self._files)

    def close(self) -> None:
        while self._files:
            self._files.popitem()[1].close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


_PRIVATE: dict[str, str] = {}


def private_dir(kind: str) -> str:
    """A folder of this process, mode 0700 (``mkdtemp``), removed at exit; never a fixed shared name in /tmp that
    another user could create or fill first."""
    key = f"{os.getpid()}:{kind}"
    path = _PRIVATE.get(key)
    if path is None or not os.path.isdir(path):
        path = _PRIVATE[key] = tempfile.mkdtemp(prefix=f"mawstron-{kind}-")
    return path


@atexit.register
def remove_private_dirs() -> None:
    """Remove this process's private folders (at exit; a forked DataLoader worker leaves its parent's alone)."""
    mine = f"{os.getpid()}:"
    for key in [k for k in _PRIVATE if k.startswith(mine)]:
        shutil.rmtree(_PRIVATE.pop(key), ignore_errors=True)
