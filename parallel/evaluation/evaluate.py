"""Transfer evaluation of a training checkpoint: rebuild its encoder, extract frozen features, run the protocols.

Accepts what training writes: a ZeRO-3 checkpoint directory (merged on the CPU) or a consolidated
``.safetensors`` file (its metadata names the preset).  Evaluation data are labelled shards (the
``eval-train-*.tar`` / ``eval-test-*.tar`` splits of ``mawstron data synth``, or ImageNet-1k webdataset shards
with ``.cls`` labels) or ImageFolder trees (ImageNet's ``train/`` and ``val/`` class folders).

On the device and across ranks: each rank (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` as the deepspeed launcher
and torchrun set them) loads the encoder on its device (``cuda:LOCAL_RANK``, or the CPU), extracts the features
of one contiguous share of each split, and rank 0 gathers them in rank order, which is the loader's order: the
features and labels are the same whatever the number of ranks, and the probe runs once, on rank 0's device.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from mawstron.core import create_vit, load_pretrained
from mawstron.core.data import DataConfig, build_eval_loader
from mawstron.core.data.dali_eval import DaliEvalBatches, dali_eval_device, dali_installed, dali_unsupported
from mawstron.core.data.image_folder import align_classes, is_image_folder, list_images
from mawstron.core.eval import extract_features, few_shot
from mawstron.core.eval.features import PRECISIONS
from mawstron.core.eval.linear import DEFAULT_L2_GRID, PROBES, resolve_device, run_probe
from mawstron.core.hub import RELEASES, WeightsDownloadError, get_weights, release
from mawstron.core.weights import guess_preset

from ..checkpoints.sources import normalize_tag
from ..checkpoints.store import (complete_tags, find_checkpoint_dir, is_zero_checkpoint_dir, read_run_config,
                                 read_zero_checkpoint)
from ..config import ModelConfig
from ..console import progress
from ..engine.build import read_checkpoint_weights, split_encoder


def model_config_of(checkpoint: str, tag: str | None = None) -> ModelConfig:
    """The ``model`` section the checkpoint was trained with."""
    ckpt_dir = find_checkpoint_dir(checkpoint)  # a checkpoints/ folder or the run folder holding one
    if ckpt_dir:
        return ModelConfig(**read_run_config(ckpt_dir, tag)["model"])
    if checkpoint.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(checkpoint, "pt") as f:
            meta = f.metadata() or {}
        if "model" in meta:
            return ModelConfig(**json.loads(meta["model"]))
    raise ValueError(
        f"cannot tell which model {checkpoint!r} holds: pass a run's checkpoints/ folder or a file written by "
        f"`mawstron consolidate` (its metadata names the preset)"
    )


def checkpoint_tag(checkpoint: str, tag: str | None) -> str | None:
    """``tag`` checked against the checkpoint folder: a tag name (``step_00000400``) or a step number (``400``);
    ValueError listing the complete tags when it is not one of them."""
    if not tag:
        return None
    if not is_zero_checkpoint_dir(checkpoint):
        raise ValueError(f"--tag picks a step of a run's checkpoints/ folder; {checkpoint!r} is not one")
    tag = normalize_tag(tag)  # 200, step_200, step_00000200; latest -> None
    if not tag:
        return None
    done = complete_tags(checkpoint)
    if tag not in done:
        raise ValueError(f"--tag {tag}: no complete checkpoint of that name in {checkpoint}; complete tags: "
                         f"{', '.join(done) or 'none'}")
    return tag


def load_encoder_from_checkpoint(checkpoint: str, tag: str | None = None, dtype: torch.dtype = torch.float32
                                 ) -> torch.nn.Module:
    """The checkpoint's encoder as a plain ``core`` ViT (no head), weights loaded strictly, in eval mode.
    ``tag`` picks a step of a ZeRO checkpoint folder (``step_00000400``; default: the one ``latest`` names).
    ``dtype=torch.bfloat16`` builds the model in bf16 before the weights are copied in: half the memory of an
    fp32 encoder besides the checkpoint's own tensors (ViT-6.5B: 13 GB instead of 26 GB).  A released name
    (``maws_vit_h14``, ``mae_vit_l16``, ...; `mawstron weights list`) is downloaded once into the cache."""
    if not os.path.exists(checkpoint) and checkpoint in RELEASES:
        if tag:
            raise ValueError(f"--tag picks a step of a run's checkpoints/ folder; {checkpoint!r} is a released name")
        r = release(checkpoint)
        overrides = {k: v for k, v in r.vit_overrides.items() if k != "num_classes"}  # the encoder, no head
        model = create_vit(r.preset, **overrides).to(dtype)
        try:
            path = get_weights(checkpoint)
        except WeightsDownloadError as e:  # offline, or the release moved: one line with the fix
            raise FileNotFoundError(str(e)) from None
        encoder, _ = split_encoder(read_checkpoint_weights(path))
        try:
            load_pretrained(model, encoder)
        except RuntimeError as e:
            raise ValueError(f"{checkpoint} ({path}): {e}") from None
        return model.eval()
    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist (nor is it a released name: "
                                f"`mawstron weights list`)")
    checkpoint = find_checkpoint_dir(checkpoint) or checkpoint  # a run folder stands for its checkpoints/
    tag = checkpoint_tag(checkpoint, tag)
    weights = read_zero_checkpoint(checkpoint, tag) if tag else read_checkpoint_weights(checkpoint)
    encoder, _ = split_encoder(weights)
    try:
        model_cfg = model_config_of(checkpoint, tag)
        model = create_vit(model_cfg.preset, **model_cfg.vit_overrides())
    except ValueError:  # a weights file without our metadata (a release, a timm file): the preset from its shapes
        if not guess_preset(encoder):
            raise
        model = create_vit(guess_preset(encoder))
    model = model.to(dtype)
    try:
        load_pretrained(model, encoder)
    except RuntimeError as e:  # shapes or names that do not fit the preset the checkpoint names
        raise ValueError(f"{checkpoint}: {e}") from None
    return model.eval()


class Ranks:
    """This process's place among the evaluation ranks and its device (``cuda:LOCAL_RANK`` or the CPU)."""

    def __init__(self, device: str = "auto"):
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(device)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.local_rank % max(1, torch.cuda.device_count()))
            torch.cuda.set_device(self.device)
        self.started_group = False

    def join(self) -> None:
        """Join the other ranks' process group (gloo on CPU, NCCL on GPUs): after every check that could fail,
        so that a bad input ends every rank with the same message instead of a hang in a collective."""
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend, rank=self.rank, world_size=self.world)
            self.started_group = True

    @property
    def first(self) -> bool:
        return self.rank == 0

    def log(self, message: str) -> None:
        prefix = f"[rank {self.rank}/{self.world}] " if self.world > 1 else ""
        print(f"{prefix}{message}", file=sys.__stderr__, flush=True)  # not the redirected stderr of a merge

    def share(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """Rank ``rank``'s (default: this one's) contiguous share ``[start, stop)`` of ``n`` ordered items
        (shares differ by at most one)."""
        r = self.rank if rank is None else rank
        return n * r // self.world, n * (r + 1) // self.world

    def close(self) -> None:
        if self.started_group and dist.is_initialized():
            dist.destroy_process_group()


class _Items(torch.utils.data.Dataset):
    def __init__(self, loader, items):
        self.loader, self.items = loader, items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        image, label = self.loader.load_item(self.items[i])
        return {"images": image, "labels": label}


def eval_decoder(requested: str, loader, device) -> tuple[str, str]:
    """``(decoder, why)``: ``"dali-mixed"`` / ``"dali-cpu"`` (DALI, on the GPU when ``device`` is one) or
    ``"pil"`` for ``--loader requested`` (``dali``, ``torch`` or ``auto``: dali when DALI is installed) on
    ``loader``'s images; ``why`` says why DALI was asked for and not used ("" otherwise)."""
    if requested not in ("auto", "dali", "torch"):
        raise ValueError(f"--loader must be dali or torch, got {requested!r}")
    if requested == "torch":
        return "pil", ""
    if not dali_installed():
        if requested == "dali":
            return "pil", "NVIDIA DALI is not installed (pip install nvidia-dali-cuda120)"
        return "pil", ""
    unsupported = dali_unsupported(loader)
    if unsupported:
        return "pil", unsupported
    return f"dali-{dali_eval_device(device)}", ""


def pick_decoder(requested: str, loader, ranks: "Ranks") -> str:
    """``eval_decoder`` for this rank, said in the log (with the reason when DALI was asked for and not used)."""
    decoder, why = eval_decoder(requested, loader, ranks.device)
    if why and ranks.first:
        ranks.log(f"--loader {requested}: {why}; decoding with PIL")
    return decoder


def split_batches(loader, items, batch_size: int, workers: int, decoder: str = "pil", device=None):
    """Batches of ``items`` in order: decoded by DALI (``decoder`` ``dali-cpu`` / ``dali-mixed``, ``workers``
    threads, at least 2) or by PIL in ``workers`` processes (0: in this one)."""
    if decoder.startswith("dali-"):
        device_id = None
        if decoder == "dali-mixed":
            device_id = torch.device(device).index if device is not None else None
            device_id = torch.cuda.current_device() if device_id is None else device_id
        return DaliEvalBatches(loader, items, batch_size=batch_size, device=decoder[len("dali-"):],
                               threads=max(2, workers), device_id=device_id)
    kwargs = {"num_workers": workers, "persistent_workers": False}
    if workers:
        kwargs["prefetch_factor"] = 4
    return torch.utils.data.DataLoader(_Items(loader, items), batch_size=batch_size, shuffle=False,
                                       pin_memory=torch.cuda.is_available(), **kwargs)


DECODER_NAMES = {"pil": "PIL", "dali-cpu": "DALI (cpu)", "dali-mixed": "DALI (mixed: nvJPEG on the GPU)"}


def check_rank_count(n: int, world: int, split: str) -> None:
    if n < world:
        raise ValueError(f"{split} has {n} images for {world} ranks: every rank needs at least one; "
                         f"use --gpus {max(1, n)} or fewer")


def extract_split(model, loader, ranks: Ranks, *, split: str, pool: str = "token", precision: str = "auto",
                  batch_size: int = 128, workers: int = 0, encode=None, quiet: bool | None = None,
                  decoder: str = "pil"):
    """``(features, labels)`` of every image of ``loader`` in its order, on rank 0 (``(None, None)`` on the
    others): each rank extracts its share, rank 0 gathers the shares in rank order.  ``decoder``: ``pil``,
    ``dali-cpu`` or ``dali-mixed`` (``eval_decoder``)."""
    items = loader.items()
    n = len(items)
    check_rank_count(n, ranks.world, f"the {split} split")
    start, stop = ranks.share(n)
    ranks.log(f"{split}: extracting images {start}..{stop - 1} of {n} ({stop - start} images) on {ranks.device}, "
              f"decoded by {DECODER_NAMES[decoder]}")
    batches = progress(split_batches(loader, items[start:stop], batch_size, workers, decoder, ranks.device),
                       f"{split} split", stop - start, quiet)
    x, y = extract_features(model, batches, pool=pool, device=ranks.device, precision=precision, encode=encode)
    if ranks.world == 1:
        return x, y
    per = -(-n // ranks.world)  # shares are padded to the largest, then trimmed: sizes are known to every rank
    gather_device = ranks.device if ranks.device.type == "cuda" else torch.device("cpu")
    padded = torch.zeros(per, x.shape[1] + 1, dtype=torch.float32, device=gather_device)
    padded[:len(y), :-1] = x.to(gather_device)
    padded[:len(y), -1] = y.to(gather_device, torch.float32)  # labels < 2^24 are exact in float32
    parts = [torch.empty_like(padded) for _ in range(ranks.world)] if ranks.first else None
    dist.gather(padded, parts, dst=0)
    if not ranks.first:
        return None, None
    sizes = [ranks.share(n, r) for r in range(ranks.world)]
    full = torch.cat([p[:b - a].cpu() for p, (a, b) in zip(parts, sizes)])
    return full[:, :-1].contiguous(), full[:, -1].long()


def _result_protocol(probe: str, probe_result, shots, draws: int) -> dict:
    protocol = {"probe": probe, **probe_result.describe()}
    if probe == "lbfgs":
        protocol.update(l2_grid=list(DEFAULT_L2_GRID), holdout=0.2,
                        description="multinomial logistic regression on standardised features, L2 picked on a "
                                    "stratified 20% hold-out of the training split, refit on all of it (L-BFGS)")
    else:
        protocol.update(description="MAE's linear probe: BatchNorm1d(affine=False) + linear head, LARS, "
                                    "lr 0.1 x batch / 256, cosine after warm-up, on precomputed features")
    protocol["few_shot"] = {"shots": list(shots), "draws": draws, "l2": 1e-2}
    return protocol


def evaluate(checkpoint: str, train_shards: str, test_shards: str, *, shots=(1, 5, 10), draws: int = 5,
             pool: str = "token", loader: str = "auto", batch_size: int = 128, seed: int = 0,
             tag: str | None = None, device: str = "auto", precision: str = "auto", probe: str = "lbfgs",
             probe_options: dict | None = None, workers: int | None = None, quiet: bool | None = None
             ) -> dict | None:
    """Linear probe and k-shot accuracy of ``checkpoint``'s frozen features on labelled shards (or ImageFolder
    directories).  Under a launcher every rank calls this; rank 0 returns the result, the others ``None``."""
    if probe not in PROBES:
        raise ValueError(f"--probe must be one of {PROBES}, got {probe!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    ranks = Ranks(device)
    try:
        data = DataConfig(source="shards")
        weights_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        model = load_encoder_from_checkpoint(checkpoint, tag, dtype=weights_dtype).to(ranks.device)
        img = model.config.img_size
        train_loader = build_eval_loader(data, img_size=img, batch_size=batch_size, shards=train_shards)
        test_loader = build_eval_loader(data, img_size=img, batch_size=batch_size, shards=test_shards)
        align_classes(train_loader, test_loader)  # ImageFolders: the test split numbered by train's class folders
        for what, split, path in (("training", train_loader, train_shards), ("test", test_loader, test_shards)):
            check_rank_count(split.num_images, ranks.world, f"the {what} split {path}")
        if workers is None:
            workers = min(8, len(os.sched_getaffinity(0)) // max(1, ranks.world)) if ranks.device.type == "cuda" else 0
        decoder = pick_decoder(loader, train_loader, ranks)
        ranks.join()
        kw = dict(pool=pool, precision=precision, batch_size=batch_size, workers=workers, quiet=quiet,
                  decoder=decoder)
        train_x, train_y = extract_split(model, train_loader, ranks, split="training", **kw)
        test_x, test_y = extract_split(model, test_loader, ranks, split="test", **kw)
        del model
        if not ranks.first:
            return None
        probe_result = run_probe(probe, train_x, train_y, test_x, test_y, seed=seed, device=ranks.device,
                                 **(probe_options or {}))
        result = {
            "checkpoint": checkpoint,
            "tag": tag,
            "pool": pool,
            "train_images": len(train_y),
            "test_images": len(test_y),
            "num_classes": int(max(train_y.max(), test_y.max())) + 1,
            "linear_probe_accuracy": probe_result.accuracy,
            "linear_probe_l2": probe_result.l2,
            "probe": probe,
            "protocol": _result_protocol(probe, probe_result, shots, draws),
            "device": str(ranks.device),
            "precision": precision,
            "ranks": ranks.world,
            "decoder": decoder,
        }
        for k in shots:
            fs = few_shot(train_x, train_y, test_x, test_y, shots=k, draws=draws, seed=seed)
            result[f"{k}_shot_accuracy"] = fs.mean_accuracy
            result[f"{k}_shot_std"] = fs.std_accuracy
        return result
    finally:
        ranks.close()


def _image_folder_classes(root: str) -> list[str]:
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    empty = [c for c in classes if not list_images(os.path.join(root, c))]
    if empty:
        raise ValueError(f"class folder {os.path.join(root, empty[0])} holds no image ({len(empty)} empty class "
                         f"folders in {root}): remove the empty folders or restore their images")
    return classes


# labelled (train, test) shard splits a --data folder may hold: `data synth`'s, then `data from-folder`'s
DATA_SPLITS = (("eval-train", "eval-test"), ("train", "val"), ("train", "test"))


def eval_splits(data: str) -> tuple[str, str]:
    """``(train, test)`` of a ``--data`` folder: ``eval-train-*.tar`` / ``eval-test-*.tar`` (``mawstron data
    synth``), ``train-*.tar`` / ``val-*.tar`` (or ``test-*.tar``; ``mawstron data from-folder``), or an ImageNet-style tree: ``train/`` and ``val/`` as class folders of images (ImageFolder) or as
    folders of webdataset shards (``*.tar``, labels in ``.cls`` or json ``label``).  ValueError naming the fix."""
    import glob

    for train_split, test_split in DATA_SPLITS:
        pair = os.path.join(data, f"{train_split}-*.tar"), os.path.join(data, f"{test_split}-*.tar")
        if glob.glob(pair[0]) and glob.glob(pair[1]):
            return pair
    train, val = os.path.join(data, "train"), os.path.join(data, "val")
    if not os.path.isdir(val) and os.path.isdir(os.path.join(data, "validation")):
        val = os.path.join(data, "validation")
    if os.path.isdir(train) and os.path.isdir(val):
        if glob.glob(os.path.join(train, "*.tar")) and glob.glob(os.path.join(val, "*.tar")):
            return os.path.join(train, "*.tar"), os.path.join(val, "*.tar")
        if is_image_folder(train) and is_image_folder(val):
            train_classes, val_classes = _image_folder_classes(train), _image_folder_classes(val)
            if train_classes != val_classes:
                extra = sorted(set(val_classes) - set(train_classes))
                missing = sorted(set(train_classes) - set(val_classes))
                raise ValueError(
                    f"--data {data}: val/ and train/ have different class folders (in val/ only: {extra[:5]}"
                    f"{' ...' if len(extra) > 5 else ''}; in train/ only: {missing[:5]}"
                    f"{' ...' if len(missing) > 5 else ''}): give both splits the same classes")
            return train, val
    raise ValueError(f"--data {data} holds neither eval-train-*.tar / eval-test-*.tar (`mawstron data synth --out "
                     f"DIR`) nor train/ and val/ (ImageNet-style class folders, or folders of webdataset shards): "
                     f"give such a folder, or --train-shards and --test-shards")
