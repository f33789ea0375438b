"""Zero-shot evaluation of a LiT run or a MAWS-CLIP file, and LiT + zero-shot as one call (for the study).

Accepted checkpoints: a LiT run's ZeRO-3 ``checkpoints/`` folder (its ``tokenizer.json`` is inside), a file
written by ``mawstron consolidate`` from one (MAWS-CLIP layout; its tokenizer is ``NAME.tokenizer.json``
beside it), or a released MAWS-CLIP checkpoint (``vit_b16_xlmr_b.pt`` ...; pass the XLM-R tokenizer, e.g.
``--tokenizer xlm-roberta-base`` or a ``tokenizer.json``).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

from mawstron.core import LitConfig, create_clip, size_overrides
from mawstron.core.clip_weights import infer_clip_config, read_clip_state_dict
from mawstron.core.data import DataConfig, build_eval_loader
from mawstron.core.data.image_folder import is_image_folder
from mawstron.core.data.shards import build_index, expand_shards, parse_meta
from mawstron.core.eval import DEFAULT_TEMPLATES, zero_shot_classifier
from mawstron.core.eval.zero_shot import IMAGENET_TEMPLATES, imagenet_class_names, zero_shot_scores
from mawstron.core.text import TOKENIZER_FILE, load_tokenizer

from ..checkpoints.consolidate import tokenizer_beside
from ..checkpoints.store import find_checkpoint_dir, is_zero_checkpoint_dir, read_run_config, read_zero_checkpoint
from ..stages import STAGES
from ..subprocesses import run_group
from .evaluate import Ranks, check_rank_count, extract_split, pick_decoder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # parallel/evaluation/ -> the repository


def _lit_of(section: dict) -> LitConfig:
    return LitConfig(**{**section, "text_model": "", "tokenizer": ""})  # shapes only: never download here


def load_clip(checkpoint: str, tokenizer: str = "", tag: str | None = None):
    """``(CLIP model in eval mode, tokenizer)`` from any accepted checkpoint (see the module docstring)."""
    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist")
    checkpoint = find_checkpoint_dir(checkpoint) or checkpoint  # a run folder stands for its checkpoints/
    if is_zero_checkpoint_dir(checkpoint):
        run = read_run_config(checkpoint, tag)
        if not getattr(STAGES.get(run["train"]["stage"]), "text_tower", False):
            raise ValueError(f"{checkpoint} is a {run['train']['stage']} run; zero-shot needs a LiT run "
                             f"(train.stage=lit) or a MAWS-CLIP file")
        state = read_zero_checkpoint(checkpoint, tag)
        preset, overrides = run["model"]["preset"], size_overrides(run["model"])
        lit = _lit_of(run["lit"])
        default_tokenizer = os.path.join(checkpoint, TOKENIZER_FILE)
    else:
        state = read_clip_state_dict(checkpoint)
        meta = {}
        if checkpoint.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(checkpoint, "pt") as f:
                meta = f.metadata() or {}
        if "lit" in meta:
            model = json.loads(meta["model"])
            preset = model["preset"]
            overrides = size_overrides(model)
            lit = _lit_of(json.loads(meta["lit"]))
        else:
            preset, overrides, lit = infer_clip_config(state)
        default_tokenizer = tokenizer_beside(checkpoint)
    source = tokenizer or default_tokenizer
    if not tokenizer and not os.path.isfile(source):
        raise FileNotFoundError(f"no tokenizer for {checkpoint!r}: expected {source}; pass --tokenizer (a "
                                f"tokenizer.json, or xlm-roberta-base for a released MAWS-CLIP model)")
    vocab = state["text_encoder.embeddings.word_embeddings.weight"].shape[0]
    model = create_clip(preset, lit, vocab, **overrides)  # not on meta: the text tower has non-persistent buffers
    model.load_state_dict(state, strict=True)
    return model.float().eval(), load_tokenizer(source, lit.context_length)


def class_names_for(test_shards: str, classnames_file: str = "") -> list[str]:
    """Class names by label: ``classnames_file`` (one per line), else for an ImageFolder its class folders
    (ImageNet-1k WordNet ids become readable names), else the ``classes`` of a ``manifest.json`` beside the shards, else the json ``class_name`` of the labelled samples."""
    if classnames_file:
        with open(classnames_file) as f:
            names = [line.strip() for line in f if line.strip()]
        if not names:
            raise ValueError(f"--classnames {classnames_file!r} is empty: write one class name per line, in label order")
        return names
    if is_image_folder(test_shards):
        folders = sorted(e.name for e in os.scandir(test_shards) if e.is_dir() and not e.name.startswith("."))
        return imagenet_class_names(folders) or folders
    paths = expand_shards(test_shards, what="evaluation shards")
    manifest = os.path.join(os.path.dirname(paths[0]), "manifest.json")
    if os.path.isfile(manifest):
        with open(manifest) as f:
            classes = json.load(f).get("classes")
        if classes:
            return list(classes)
    by_label: dict[int, str] = {}
    for path in paths:
        with open(path, "rb") as f:
            for s in build_index(path, validate=False).samples:
                f.seek(s.meta[0])
                meta = parse_meta(f.read(s.meta[1]), s.meta_ext)
                if isinstance(meta.get("label"), int) and meta.get("class_name"):
                    by_label[meta["label"]] = str(meta["class_name"])
    if not by_label or sorted(by_label) != list(range(max(by_label) + 1)):
        raise ValueError(f"{test_shards!r}: the samples do not name every class (json 'class_name'); pass "
                         f"--classnames FILE with one name per line in label order")
    return [by_label[i] for i in range(len(by_label))]


def read_templates(path: str, imagenet: bool = False) -> tuple[str, ...]:
    """The prompt templates of ``--templates FILE`` (one per line), else the shipped ImageNet prompts for
    ImageNet-1k's classes, else the built-in web-caption-like set."""
    if not path:
        return IMAGENET_TEMPLATES if imagenet else DEFAULT_TEMPLATES
    with open(path) as f:
        templates = tuple(line.strip() for line in f if line.strip())
    if not templates:
        raise ValueError(f"--templates {path!r} is empty: one template per line, '{{}}' where the class name goes")
    return templates


def evaluate_zero_shot(checkpoint: str, test_shards: str, *, classnames: str = "", templates: str = "",
                       tokenizer: str = "", batch_size: int = 128, device: str = "auto", precision: str = "auto",
                       workers: int | None = None, tag: str | None = None, loader: str = "auto") -> dict | None:
    """Zero-shot top-1 / top-5 of ``checkpoint`` (step ``tag`` of a LiT run; default: 'latest') on labelled ``test_shards`` (shards or an ImageFolder), on the
    device; under a launcher each rank embeds its share of the images and rank 0 classifies them all (the other
    ranks return None)."""
    ranks = Ranks(device)
    try:
        model, tok = load_clip(checkpoint, tokenizer, tag)
        model = model.to(ranks.device)
        names = class_names_for(test_shards, classnames)
        imagenet = len(names) == 1000 and not classnames
        requested = loader
        loader = build_eval_loader(DataConfig(source="shards"), img_size=model.config.img_size,
                                   batch_size=batch_size, shards=test_shards)
        check_rank_count(loader.num_images, ranks.world, f"the test split {test_shards}")
        decoder = pick_decoder(requested, loader, ranks)
        prompts = read_templates(templates, imagenet)
        if workers is None:
            workers = min(8, len(os.sched_getaffinity(0)) // max(1, ranks.world)) if ranks.device.type == "cuda" else 0
        ranks.join()
        feats, labels = extract_split(model, loader, ranks, split="test", precision=precision, batch_size=batch_size,
                                      workers=workers, encode=model.encode_images, decoder=decoder)
        if not ranks.first:
            return None
        classifier = zero_shot_classifier(model, tok, names, prompts, device=ranks.device)
        result = zero_shot_scores(feats, labels, classifier)
        return {"checkpoint": checkpoint, "num_classes": len(names), "chance_top1": 1 / len(names), **result,
                "protocol": {"probe": "zero_shot", "templates": len(prompts),
                             "template_source": templates or ("imagenet" if imagenet else "built-in"),
                             "device": str(ranks.device), "precision": precision, "ranks": ranks.world}}
    finally:
        ranks.close()


def lit_zero_shot(encoder: str, data_dir: str, out_dir: str, *, steps: int = 60, ranks: int = 2,
                  overrides: list[str] = (), overwrite: bool = False, timeout_s: float = 3600) -> dict:
    """Train LiT (recipes/vit_tiny_lit.py) on the frozen ``encoder`` (a run's checkpoints/ folder or a
    consolidated file) with the captions of ``data_dir``/train-*.tar, then zero-shot on ``data_dir``/
    eval-test-*.tar.  ``overrides`` are ``--set`` items (after the ones above, so they win; an encoder of a
    custom size needs its ``model.*`` settings here); ``overwrite`` replaces an earlier run in ``out_dir``
    (``mawstron train --overwrite``) instead of refusing it.  Returns the evaluation dict plus ``lit_run``;
    raises with the log tail on failure."""
    os.makedirs(out_dir, exist_ok=True)
    exe = os.path.join(os.path.dirname(sys.executable), "mawstron")
    cmd = [exe, "train", os.path.join(REPO, "recipes", "vit_tiny_lit.py"), "--gpus", str(ranks),
           "--set", f"output_dir={out_dir}", "--set", f"checkpoint.init_from={encoder}",
           "--set", "data.source=shards", "--set", f"data.shards={os.path.join(data_dir, 'train-*.tar')}",
           "--set", f"train.steps={steps}"]
    for item in overrides:
        cmd += ["--set", item]
    if overwrite:
        cmd.append("--overwrite")
    log = os.path.join(out_dir, "lit.log")
    with open(log, "w") as f:
        try:  # the launcher and the ranks it starts are one process group: a timeout ends all of them
            proc = run_group(cmd, timeout_s, stdout=f, stderr=subprocess.STDOUT)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"LiT on {encoder} did not finish within {timeout_s:.0f} s and was stopped with its "
                               f"ranks, log {log}; give it more time (timeout_s) or fewer steps") from None
    if proc.returncode != 0:
        with open(log) as f:
            raise RuntimeError(f"LiT on {encoder} failed (exit {proc.returncode}), log {log}:\n{f.read()[-3000:]}")
    ckpt = os.path.join(out_dir, "checkpoints")
    test = os.path.join(data_dir, "eval-test-*.tar")
    if not glob.glob(test):
        raise FileNotFoundError(f"no labelled test split {test}")
    return {**evaluate_zero_shot(ckpt, test), "lit_run": out_dir}
