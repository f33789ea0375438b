"""The DALI path of evaluation: one ordered pass over a rank's share of an evaluation split, decoded by DALI.

The same deterministic transform as the PIL path (eval_loader.py): resize the shorter side to
``round(img_size / 0.875)`` (bilinear with antialiasing, as PIL's downscaling), centre-crop ``img_size``,
normalise (ImageNet mean/std), CHW float32.  Decoding runs on ``mixed`` (nvJPEG, output on this rank's GPU) when
the encoder runs on a GPU, on the CPU otherwise (``dali_eval_device``).

* Webdataset shards (``EvalLoader``): the rank's contiguous share of the ordered samples is written as one DALI
  index per shard it touches (only the samples of the share, in order), and ``fn.readers.webdataset`` reads them
  in that order, unshuffled, with the label's ``.json`` / ``.cls`` bytes beside each image; labels are parsed
  from those bytes on the host.
* ImageFolder trees and plain folders of images: ``fn.readers.file`` over the share's file list with its labels.

Either way the batches come out in the loader's order (the same order as the PIL path), so features gathered
across ranks in rank order are the same whatever the number of ranks.  A decoded image differs from PIL's by
JPEG-decoder rounding (libjpeg-turbo vs nvJPEG / DALI's resampling), a few grey levels at most.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch

from .loader import IMAGENET_MEAN, IMAGENET_STD
from .shards import _index_text, _write_atomic, parse_meta
from .storage import private_dir


def dali_installed() -> bool:
    """True when NVIDIA DALI can be imported (``make install`` installs it; the GPU machine may lack it)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):
        return False


def default_eval_loader() -> str:
    """``dali`` when DALI is installed (as training's ``data.loader`` default), ``torch`` (PIL) otherwise."""
    return "dali" if dali_installed() else "torch"


def dali_eval_device(model_device) -> str:
    """DALI's decoder device for an encoder on ``model_device``: ``mixed`` (nvJPEG, output on that GPU) for a CUDA
    device, ``cpu`` otherwise (``torch.device`` or a string such as ``"cuda:1"``)."""
    return "mixed" if torch.device(model_device).type == "cuda" else "cpu"


def dali_unsupported(loader) -> str:
    """Why DALI cannot read ``loader``'s images ("" when it can): DALI reads local files and s3:// objects."""
    paths = getattr(loader, "paths", None) or []
    web = [p for p in paths if str(p).startswith(("http://", "https://"))]
    if web:
        return f"DALI does not read https:// shards ({web[0]})"
    return ""


def _meta_label(raw: bytes) -> int | None:
    raw = raw.rstrip(b"\0")
    label = parse_meta(raw, "json" if raw[:1] == b"{" else "cls").get("label")
    return label if isinstance(label, int) else None


class DaliEvalBatches:
    """``{"images", "labels"}`` batches of ``items`` (a contiguous slice of ``loader.items()``) in their order,
    decoded by DALI on ``device`` (``cpu`` or ``mixed``) with ``threads`` CPU threads."""

    def __init__(self, loader, items, *, batch_size: int, device: str = "cpu", threads: int = 2,
                 device_id: int | None = None):
        if not items:
            raise ValueError("DaliEvalBatches needs at least one item")
        self.loader, self.items = loader, list(items)
        self.batch_size, self.device, self.threads = batch_size, device, max(1, threads)
        self.device_id = device_id
        if device == "mixed" and device_id is None:
            self.device_id = torch.cuda.current_device()
        self.shards = hasattr(self.items[0][1], "key")  # (shard path, Sample) vs (image path, label)

    def __len__(self):
        return -(-len(self.items) // self.batch_size)

    def _shard_indexes(self) -> tuple[list[str], list[str]]:
        """One index per shard the share touches, listing only the share's samples, in order."""
        out_dir = private_dir("eval-index")
        paths, index_paths, groups = [], [], []
        for path, sample in self.items:
            if not groups or groups[-1][0] != path:
                groups.append((path, []))
            groups[-1][1].append(sample)
        for k, (path, samples) in enumerate(groups):
            index_path = os.path.join(out_dir, f"{os.getpid()}-{id(self)}-{k:05d}.idx")
            _write_atomic(index_path, _index_text(samples, {}))
            paths.append(path)
            index_paths.append(index_path)
        return paths, index_paths

    def _pipeline(self):
        import nvidia.dali.fn as fn
        import nvidia.dali.math as dmath
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def

        size = self.loader.img_size
        shorter = round(size / 0.875)
        if self.shards:
            paths, index_paths = self._shard_indexes()
        else:
            files = [path for path, _ in self.items]
            labels = [int(label) for _, label in self.items]

        @pipeline_def(batch_size=self.batch_size, num_threads=self.threads, device_id=self.device_id, seed=0,
                      prefetch_queue_depth=2, exec_dynamic=True)
        def pipe():
            if self.shards:
                jpegs, meta = fn.readers.webdataset(
                    paths=paths, index_paths=index_paths, ext=["jpg", "json;cls;txt"], random_shuffle=False,
                    name="reader", dtypes=[types.UINT8, types.UINT8], missing_component_behavior="error",
                    pad_last_batch=False)
                meta = fn.pad(meta, fill_value=0)
            else:
                jpegs, meta = fn.readers.file(files=files, labels=labels, random_shuffle=False, name="reader",
                                              pad_last_batch=False)
            # the PIL path's geometry exactly: PIL's rounded resized size, the crop's floor((W - size) / 2) corner
            # (crop_pos a quarter pixel past it, so that DALI's rounding of the anchor cannot move it)
            shape = fn.peek_image_shape(jpegs, dtype=types.FLOAT, adjust_orientation=False)
            h, w = shape[0], shape[1]
            short = dmath.min(h, w)
            nh = dmath.max(float(shorter), dmath.floor(h * shorter / short + 0.5))
            nw = dmath.max(float(shorter), dmath.floor(w * shorter / short + 0.5))
            pos_y = (dmath.floor((nh - size) / 2) + 0.25) / dmath.max(nh - size, 1.0)
            pos_x = (dmath.floor((nw - size) / 2) + 0.25) / dmath.max(nw - size, 1.0)
            images = fn.decoders.image(jpegs, device=self.device, output_type=types.RGB, adjust_orientation=False)
            images = fn.resize(images, resize_x=nw, resize_y=nh, interp_type=types.INTERP_LINEAR, antialias=True)
            images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", crop=(size, size),
                                              crop_pos_x=pos_x, crop_pos_y=pos_y,
                                              mean=[m * 255 for m in IMAGENET_MEAN],
                                              std=[s * 255 for s in IMAGENET_STD])
            return images, meta

        p = pipe()
        p.build()
        return p

    def _labels(self, meta: torch.Tensor) -> torch.Tensor:
        if not self.shards:
            return meta.reshape(-1).to(torch.int64).cpu()
        labels = []
        require = getattr(self.loader, "require_labels", True)
        for row in meta.cpu().numpy():
            label = _meta_label(bytes(np.asarray(row, dtype=np.uint8)))
            if label is None:
                if require:
                    raise ValueError("an evaluation sample has no json 'label' / .cls; evaluation needs labelled "
                                     "shards (eval-train-*.tar / eval-test-*.tar from `mawstron data synth`)")
                label = -1
            labels.append(label)
        return torch.tensor(labels, dtype=torch.int64)

    def _undecodable(self, seen: int) -> str | None:
        """The first image from position ``seen`` on (the batches in flight when DALI failed) that PIL cannot
        decode either, named as ``file`` or ``shard:key``; None if there is none."""
        from .shards import decodes_with_pil, read_bytes

        for item in self.items[seen:seen + 4 * self.batch_size]:
            if self.shards:
                path, sample = item
                name, data = f"{path}:{sample.key}", read_bytes(path, sample.image)
            else:
                name = item[0]
                with open(name, "rb") as f:
                    data = f.read()
            if not decodes_with_pil(data):
                return name
        return None

    def _check_jpeg_markers(self) -> None:
        """Files (not shards: their index checked them): a JPEG without its start / end markers, a truncated one
        most often, is named before DALI sees it (DALI 2.4's decoder can crash the process on one)."""
        from .shards import looks_like_jpeg

        for path, _ in self.items:
            if not path.lower().endswith((".jpg", ".jpeg")):
                continue
            with open(path, "rb") as f:
                head = f.read(3)
                f.seek(max(0, os.fstat(f.fileno()).st_size - 64))
                tail = f.read(64)
            if not looks_like_jpeg(head + tail):
                raise ValueError(f"{path}: not a whole JPEG (no start or end marker: truncated?); remove or replace "
                                 f"the file")

    def __iter__(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        if not self.shards:
            self._check_jpeg_markers()
        seen = 0
        try:  # the iterator prefetches: a bad image can fail its construction too
            it = DALIGenericIterator([self._pipeline()], ["images", "meta"], reader_name="reader",
                                     last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)
            for out in it:
                batch = out[0]
                images = batch["images"]
                yield {"images": images, "labels": self._labels(batch["meta"])}
                seen += images.shape[0]
        except RuntimeError as error:
            bad = self._undecodable(seen)
            if bad is None:
                raise
            raise ValueError(f"{bad}: not a decodable image (DALI's decoder failed on it, and PIL cannot decode it "
                             f"either); remove or replace the file") from None
        if seen != len(self.items):  # the reader's epoch is exactly the share: anything else is a bug
            raise RuntimeError(f"DALI read {seen} images of a share of {len(self.items)}")
