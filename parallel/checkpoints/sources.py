"""What every command that reads a checkpoint accepts, resolved in one place.

A checkpoint is given as a run folder (``runs/demo/wsp``), its ``checkpoints/`` folder (ZeRO-3 shards), a weights
file (``.safetensors`` from ``mawstron consolidate``, or a ``.pt``/``.pth``), or a released name
(``maws_vit_b16``, see ``mawstron weights list``; downloaded into the cache once).  A step of a checkpoint folder
is picked with ``--tag`` in any of the forms ``200``, ``step_200``, ``step_00000200`` or ``latest``.

Without ``--tag`` the step ``latest`` names is used if it is complete and verifies against its manifest; when it
does not (a torn save, a missing folder, a damaged file), the newest older checkpoint that verifies is used and
that is said on stderr with both tags, always; ``strict=True`` refuses instead.
"""

from __future__ import annotations

import os
import re
import sys
import zipfile

from mawstron.core.data.image_folder import IMAGE_SUFFIXES
from mawstron.core.data.shards import _expand_braces
from mawstron.core.hub import RELEASES, WeightsDownloadError, get_weights

from . import store as ckpt
from .store import find_checkpoint_dir

FORMS = "a run folder, its checkpoints/ folder, a .safetensors file or a released name (`mawstron weights list`)"
_STEP = re.compile(r"^(?:step_?)?(\d+)$")


def normalize_tag(tag: str | int | None) -> str | None:
    """``200``, ``step_200``, ``step_00000200`` -> ``step_00000200``; ``latest``/empty/None -> None (the one
    ``latest`` names); ValueError for anything else."""
    if tag is None or str(tag).strip() in ("", ckpt.LATEST):
        return None
    match = _STEP.match(str(tag).strip())
    if not match:
        raise ValueError(f"--tag {tag!r} is not a checkpoint tag: give a step (200), its tag (step_00000200 or "
                         f"step_200) or latest")
    return ckpt.tag_for_step(int(match.group(1)))


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pick_tag(ckpt_dir: str, tag: str | int | None = None, strict: bool = False, say=_stderr) -> str:
    """The complete, verified tag of ``ckpt_dir`` to read: ``tag`` (any form; it must be complete and verify),
    else the one ``latest`` names.  When ``latest`` is missing or names a torn, missing or damaged checkpoint,
    ``say`` gets one line naming both tags and the newest older one that verifies is returned; ``strict``
    raises ValueError instead."""
    done = ckpt.complete_tags(ckpt_dir)
    wanted = normalize_tag(tag)
    if wanted:
        if wanted not in done:
            raise ValueError(f"--tag {tag}: no complete checkpoint {wanted} in {ckpt_dir}; complete tags: "
                             f"{', '.join(done) or 'none'}")
        problems = ckpt.verify_files(ckpt_dir, wanted)
        if problems:
            raise ValueError(f"checkpoint {wanted} failed verification: {problems[0]}; pick another with --tag "
                             f"(`mawstron checkpoints verify --checkpoint {ckpt_dir}` lists them)")
        return wanted
    latest_file = os.path.join(ckpt_dir, ckpt.LATEST)
    named = open(latest_file).read().strip() if os.path.isfile(latest_file) else None
    if named and named in done:
        problems = ckpt.verify_files(ckpt_dir, named)
        if not problems:
            return named
        reason = f"'latest' names {named}, which failed verification ({problems[0]})"
    elif named and os.path.isdir(os.path.join(ckpt_dir, named)):
        reason = f"'latest' names {named}, which is incomplete (no {ckpt.COMPLETE} marker: a torn save)"
    elif named:
        reason = f"'latest' names {named}, which does not exist"
    else:
        reason = "it has no 'latest' file"
    for candidate in sorted((t for t in done if t != named), reverse=True):
        if not ckpt.verify_files(ckpt_dir, candidate):
            if strict:
                raise ValueError(f"{ckpt_dir}: {reason}; --strict refuses to fall back: give --tag {candidate} "
                                 f"(the newest that verifies) or drop --strict")
            say(f"[mawstron] {ckpt_dir}: {reason}; using {candidate} instead, the newest complete checkpoint "
                f"that verifies (--strict refuses to fall back)")
            return candidate
    raise ValueError(f"{ckpt_dir}: {reason}, and no other complete checkpoint verifies; restore the files from a "
                     f"copy or train again")


def check_weights_file(path: str) -> None:
    """A weights file that cannot be read as what its name says gets one line naming the file and the problem
    (ValueError), before anything loads it."""
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(f"{path} is empty (0 bytes): copy it again, or rewrite it with `mawstron consolidate`")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, "pt") as f:
                f.metadata()
        except (SafetensorError, OSError) as e:
            problem = str(e).replace("Error while deserializing header: ", "")
            raise ValueError(f"{path} is not a readable safetensors file ({problem}; {size} bytes): it is truncated "
                             f"or not a safetensors file; copy it again, or rewrite it with `mawstron consolidate`"
                             ) from None
        return
    if path.endswith((".pt", ".pth", ".bin")):
        with open(path, "rb") as f:
            head = f.read(2)
        if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
            raise ValueError(f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle; {size} bytes): "
                             f"it is truncated or of another format; copy it again")


def resolve_checkpoint(source: str, tag: str | int | None = None, strict: bool = False,
                       say=_stderr) -> tuple[str, str | None]:
    """(path, tag) for ``source`` in any of the accepted forms (module docstring): a checkpoint folder with the
    verified tag to read, or a weights file (tag None).  ValueError / FileNotFoundError with one line naming the
    input and the fix."""
    if os.path.exists(source):
        ckpt_dir = find_checkpoint_dir(source)
        if ckpt_dir:
            return ckpt_dir, pick_tag(ckpt_dir, tag, strict=strict, say=say)
        if os.path.isdir(source):
            raise FileNotFoundError(f"{source} holds no complete checkpoint ('latest' or a complete step_* folder, "
                                    f"itself or in checkpoints/); give {FORMS}")
        if normalize_tag(tag):
            raise ValueError(f"--tag picks a step of a checkpoint folder; {source} is a weights file: drop --tag")
        check_weights_file(source)
        return source, None
    if source in RELEASES:
        if normalize_tag(tag):
            raise ValueError(f"--tag picks a step of a checkpoint folder; {source} is a released name: drop --tag")
        try:
            path = get_weights(source)
        except WeightsDownloadError as e:
            raise FileNotFoundError(str(e)) from None
        check_weights_file(path)
        return path, None
    raise FileNotFoundError(f"checkpoint {source!r} does not exist and is no released name; give {FORMS}")


# ------------------------------------------------------------------------------------------ local data inputs
REMOTE_READERS = ("training (`data.shards`), `mawstron eval --train-shards/--test-shards` and the `mawstron data` "
                  "commands (`'s3://BUCKET/train-{000000..000099}.tar'`)")


def check_local_input(spec: str, what: str, command: str = "this command", remote_ok: bool = False) -> None:
    """ValueError, one line naming ``spec`` and the fix, for what a command that reads local files only would
    otherwise report as a missing file: an ``s3://`` (or other remote) path, an ImageFolder whose class folders
    hold no image, a shard pattern that matches nothing.  ``remote_ok``: the command's loaders read ``s3://`` and
    ``https://`` shards themselves (they check those), so only the local parts are checked here."""
    if not spec:
        return
    for part in (p.strip() for p in spec.split(",")):
        if "://" in part and not remote_ok:
            scheme = part.split("://", 1)[0]
            raise ValueError(f"{what} {part!r} is remote ({scheme}://) and {command} reads local files only: copy "
                             f"it to a local or shared file system first (e.g. `aws s3 sync s3://BUCKET/PREFIX DIR`); "
                             f"remote shards are read by {REMOTE_READERS}")
    if os.path.isdir(spec):
        entries = sorted(os.scandir(spec), key=lambda e: e.name)
        subdirs = [e for e in entries if e.is_dir()]
        has_files = any(e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES + (".tar",)) for e in entries)
        if subdirs and not has_files and not any(
                f.lower().endswith(IMAGE_SUFFIXES) for d in subdirs for f in os.listdir(d.path)):
            names = ", ".join(d.name for d in subdirs[:4]) + (", ..." if len(subdirs) > 4 else "")
            raise ValueError(f"{what} {spec}: its {len(subdirs)} class folder{'s' if len(subdirs) != 1 else ''} "
                             f"({names}) hold no image ({', '.join(IMAGE_SUFFIXES)}): put each class's images in "
                             f"{spec}/<class>/, or give webdataset shards")
        return
    import glob

    for part in (p.strip() for p in (spec.split(",") if "{" not in spec else [spec])):
        if "://" in part:
            continue
        for name in _expand_braces(part):
            if any(c in name for c in "*?[") and not glob.glob(name):
                folder = os.path.dirname(name) or "."
                where = (f"{folder} does not exist" if not os.path.isdir(folder) else
                         f"{folder} holds {', '.join(sorted(os.listdir(folder))[:4]) or 'nothing'}")
                raise ValueError(f"{what} {spec!r}: no file matches {name!r} ({where}); check the path, or write "
                                 f"shards with `mawstron data from-folder` / `mawstron data synth`")
