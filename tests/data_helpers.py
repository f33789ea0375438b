"""Shard collections for data tests: `mawstron data synth` output, optionally with deliberately bad samples."""

from __future__ import annotations

import io
import os
import tarfile

from mawstron.core.data.synth import synthesize


def rewrite_shard(path: str, edit) -> None:
    """Rewrite tar ``path`` member by member; ``edit(name, data)`` returns new bytes or None to drop it."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            data = edit(name, data)
            if data is None:
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def break_jpeg(path: str, key: str, how: str = "truncate") -> None:
    def edit(name, data):
        if name != f"{key}.jpg":
            return data
        if how == "truncate":
            return data[: len(data) // 2]
        # header and end markers intact, entropy-coded data replaced by garbage: only a decode finds it
        return data[:20] + bytes((i * 37) % 256 for i in range(len(data) - 22)) + data[-2:]

    rewrite_shard(path, edit)


def drop_member(path: str, name_to_drop: str) -> None:
    rewrite_shard(path, lambda name, data: None if name == name_to_drop else data)


def make_collection(out: str, *, images: int = 64, shard_size: int = 16, size: int = 32, seed: int = 0,
                    eval_images: int = 30) -> dict:
    return synthesize(out, images=images, seed=seed, size=size, eval_images=eval_images, shard_size=shard_size)


def tiny_jpeg(seed: int = 0, size: int = 16) -> bytes:
    """A real JPEG of a flat colour (PIL)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), ((seed * 53) % 256, (seed * 97) % 256, (seed * 29) % 256)).save(buf, "JPEG")
    return buf.getvalue()


def write_shard(path: str, members: list[tuple[str, bytes]]) -> str:
    """A USTAR tar with exactly these members, in this order."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
