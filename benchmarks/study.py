"""The MAWS study in miniature, with error bars: does MAE pre-pretraining help weakly-supervised pretraining, and
do the paper's orderings hold?

    make study                              # SEEDS=3: every arm three times (59 min on 2 idle cores)
    python benchmarks/study.py --quick      # a few steps of each run: checks the plumbing, not the claims

On the embedded long-tailed collection of named things (`mawstron data synth --scene things --tail zipf:1.1`: 48
categories in 8 families of look-alikes (dogs, cats, birds, ... in breeds), whose noisy web-style hashtags name the
category, as Instagram's do, and a class-balanced labelled evaluation split of the 48 categories), it trains with
the real trainer (DeepSpeed ZeRO-3; CPU ranks here), for each seed:

  (a)      MAE only,
  (b) @ f  WSP from random initialisation, for f = 25% and 100% of the WSP steps (``--fractions``),
  (c) @ f  MAWS: WSP initialised from (a)'s encoder, same WSP steps, data and seed as (b) @ f,
  (c) sqrt MAWS with square-root re-sampling of the hashtags (data.resample=sqrt), 100% of the steps
           (``--resample-arm``; off by default),
  and the model-size axis: (a), (b) and (c) at 100% again at each width of ``--widths`` (default 96, half of
  vit_tiny's 192),

then measures every encoder (frozen features of the held-out split) with the metrics in ``ENCODER_METRICS``:
linear probe, k-shot, the linear probe's accuracy on head classes and on tail classes separately (the 16 most
and the 16 least frequent categories of the training collection); a short fine-tuning (``--finetune-steps``,
default 150, recipes/vit_tiny_finetune.py on the labelled probe-train split, top-1 on the test split) of
``--finetune-arms`` (default (a), (b) and (c) at 100%); and zero-shot top-1/top-5 over all classes after LiT: a
small text tower (recipes/vit_tiny_lit.py) trained for ``--lit-steps`` steps (default 300, the same for
every arm; 0 turns it off) on the captions against the frozen encoder, then a zero-shot classifier from the class
names, for ``--lit-arms`` (default (a), (b) and (c) at 100%).  Every number is reported as mean +- std over the
seeds, and study_report.orderings states for each of the paper's orderings whether it holds here, against 2
standard errors.  It writes to ``--results`` (default ``runs/study/results``; ``make study`` passes
``benchmarks/results``, regenerating the committed report on purpose): study.json (every number, the settings,
date, device, commit, ``num_classes`` and ``orderings``), study.md (the table, what it shows, the orderings),
study.png (loss curves, the WSP-length sweep, head/tail accuracy and the model-size axis, with error bars).  The
report code is in study_report.py.  The earlier study on `--scene upright` (shapes whose hashtags are
attributes) is kept as benchmarks/results/study-upright.*.

The paper's claim (Singh et al., ICCV 2023) is that (c) converges faster and transfers better than (b), with the
biggest gains in low-shot and long-tailed transfer.

Sizing of this study.  The model, steps and schedule are the earlier study's (below); the collection grew to 10,000
training images and 2,400 labelled images per evaluation split (50 per class for 48 classes).  A pilot on 2026-12-05
(one seed of the defaults before the model-size axis and the fine-tuning arm existed, 2 cores shared with other
jobs) measured the linear probe (48 classes, chance 2.1%): MAE 71.3%; WSP from scratch 60.0% at 25% and 73.8% at
100% of the WSP steps; MAWS 73.3% and 83.1%.  Zero-shot top-1 (top-5) after 100 LiT steps: MAE 6.3% (23.5%), WSP
28.0% (67.6%), MAWS 38.7% (80.5%); after 300 steps on the same encoders: MAE 14.0% (42.8%), WSP 35.8% (83.5%).  At
100 steps zero-shot still rose steeply; at 300 it separates the arms with top-5 well below 100%, and 3 x 300 LiT
steps per seed fit the hour, hence ``--lit-steps 300``.

Measured with the defaults (`make study`, 2026-12-05, two otherwise idle cores, 58.6 min; benchmarks/results/study.md):
4 of the paper's 6 orderings hold beyond noise (MAWS > WSP by 7.5 probe points; MAWS with 25% of the steps =
WSP with 100%; MAWS >= MAE fine-tuned; MAWS > WSP zero-shot, 49.0% vs 38.3% top-1 of 48).  Two do not, and pilots
(seed 0; benchmarks/results/study-pilots.json) say why: WSP only ties MAE on the average-pooled probe (with the
class token, the one WSP's head trains, WSP leads MAE by 5.8 points; 1,200 WSP steps do not lift the average-
pooled probe); and the MAE benefit is larger at width 96 than at 192 because the narrow model learns slower from
scratch: at 1,200 WSP steps the two benefits are about equal (+14.3 and +13.8 points).

Sizing of the earlier study (`--scene upright`, kept as benchmarks/results/study-upright.*).  Pilots trained the
same `vit_tiny` (width 192, depth 4), loss and optimiser
in one process on 6,000 images at 32 px and measured the same linear probe (average pooling, 1,500 + 1,500 held-out
images, 15 classes, chance 6.7%); numbers are that probe after N steps at batch 64, 2026-12-01, 2 CPU cores:

  - On the `web` scene (freely rotated objects, clutter) nothing learned shape: WSP 27.1% @ 400 (the earlier study's
    level), also at 64 px / patch 8 (26.0%) or lr 3e-3 (24.0%); even clean 15-class labels, supervised, stayed at
    28.7% @ 400 and 29.0% @ 1,600 with patch 8, their loss stuck at ln 5: colour learned, shape not.
  - With clean labels the scene decides: upright + larger objects + no clutter 41.7% @ 400 (`--scene upright`);
    also without textures 57.1% @ 400, 75.7% @ 1,200; upright alone 35.1% @ 800; large, untextured but rotated
    among clutter 38.2% @ 1,200.  Patch 8 (16 tokens) learns as well as patch 4 here at a third of the cost.
  - WSP on `--scene upright` plateaus at 32-36% between 400 and 1,600 steps, whatever was tried: lr 3e-4 (35.6% @
    800; 39.4% with the class token), 5e-4 (35.9% @ 1,600), 1e-3, 3e-3; depth 8; patch 4; 40,000 images; no long
    tail; no irrelevant tags; only the shape and colour tags.  Clean labels given the way WSP sees them, as two
    tags (shape, colour) under the softmax over tags, also stay at 35.9% @ 800, against 41.7% @ 400 for the same
    images as 15 joint classes: the form of the labels, separate attribute tags whose conjunction is the evaluation
    class, holds WSP back here, not their noise or the tail.
  - MAE 800 steps: 41.3%; WSP from it: 37.3% @ 400.

So that study's defaults were `--scene upright`, patch 8, MAE 800 steps, WSP 600 steps at lr 5e-4 (WSP fractions 25/50/100%),
micro-batch 64, crops of at least 35% of the image (`--min-crop-area 0.35`), one rank.  Measured with them
(`make study`, 2026-12-01, two otherwise idle cores, 43 min; benchmarks/results/study-upright.md): MAE 50.4%, WSP from
scratch 38.3%, MAWS 47.6% at 100% of the WSP steps (mean of 3 seeds; the real trainer's MAE reached more than the in-process
pilot's 41%: the two differ in decoding and augmentation).  That study's WSP arms stayed below 60%; the
`things` scene is the other data design it called for (hashtags of the form of the evaluation classes).  Every size is a flag (--images, --size, --scene, --preset/--depth/--embed-dim/--patch-size, --mae-steps,
--wsp-steps, ...).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

from mawstron.core.data.synth import SCENE_NAMES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    stage: str  # "mae" or "wsp"
    init_from_mae: bool = False
    wsp_fraction: float = 1.0
    resample: str = "none"
    width: int = 0  # the model-size axis: embed_dim of this arm's encoder (0: the study's model)


def arms_for(fractions: list[float], resample_arm: bool, widths: list[int] = ()) -> list[Arm]:
    """The arms in training order: (a), (b) @ f, (c) @ f, (c) sqrt; then for each extra width of the model-size axis
    (a), (b) and (c) at 100% of the WSP steps, named ``mae-wW`` ... (the arms at the study's own width keep their
    names)."""
    arms = [Arm("mae", "(a) MAE only", "mae")]
    for f in fractions:
        arms.append(Arm(f"wsp_scratch@{f:g}", f"(b) WSP from scratch, {f:.0%} steps", "wsp", False, f))
    for f in fractions:
        arms.append(Arm(f"maws@{f:g}", f"(c) MAWS: MAE -> WSP, {f:.0%} steps", "wsp", True, f))
    if resample_arm:
        arms.append(Arm("maws_sqrt@1", "(c) MAWS + sqrt re-sampling, 100% steps", "wsp", True, 1.0, "sqrt"))
    full = max(fractions)
    for w in widths:
        arms += [Arm(f"mae-w{w}", f"(a) MAE only, width {w}", "mae", width=w),
                 Arm(f"wsp_scratch@{full:g}-w{w}", f"(b) WSP from scratch, {full:.0%} steps, width {w}", "wsp", False,
                     full, width=w),
                 Arm(f"maws@{full:g}-w{w}", f"(c) MAWS: MAE -> WSP, {full:.0%} steps, width {w}", "wsp", True, full,
                     width=w)]
    return arms


QUICK_DEFAULT_FRACTIONS = ("0.25,1", "0.5,1")  # the sweep by default, and in --quick mode


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default=os.path.join(REPO, "runs", "study"), help="data, runs and checkpoints")
    p.add_argument("--results", default=os.path.join(REPO, "runs", "study", "results"),
                   help="where the report goes (`make study`: benchmarks/results, the committed one)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per arm (mean +- std over them)")
    p.add_argument("--images", type=int, default=10000, help="training images in the synthetic collection")
    p.add_argument("--eval-images", type=int, default=2400, help="labelled images in each evaluation split")
    p.add_argument("--size", type=int, default=32, help="image size in pixels")
    p.add_argument("--tail", default="zipf:1.1", help="the collection's long tail (`mawstron data synth --tail`)")
    p.add_argument("--scene", default="things", choices=SCENE_NAMES,
                   help="`mawstron data synth --scene`: things (default: 48 named categories whose hashtags name "
                        "them, as on Instagram), upright (shapes whose hashtags are attributes: the earlier study) or "
                        "web (rotated shapes among clutter)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic collection (shared by all runs)")
    p.add_argument("--preset", default="vit_tiny", help="model preset")
    p.add_argument("--depth", type=int, default=0, help="override the preset's depth (0: keep)")
    p.add_argument("--embed-dim", type=int, default=0, help="override the preset's width (0: keep)")
    p.add_argument("--num-heads", type=int, default=0, help="override the preset's heads (0: keep)")
    p.add_argument("--patch-size", type=int, default=8,
                   help="override the preset's patch size (0: keep; default 8: 16 tokens at 32 px)")
    p.add_argument("--mae-steps", type=int, default=800)
    p.add_argument("--wsp-steps", type=int, default=600, help="100%% of the WSP steps")
    p.add_argument("--wsp-lr", type=float, default=5e-4)
    p.add_argument("--fractions", default=QUICK_DEFAULT_FRACTIONS[0], help="WSP-length sweep, fractions of --wsp-steps")
    p.add_argument("--resample-arm", action="store_true", help="add (c) with data.resample=sqrt")
    p.add_argument("--widths", default="96",
                   help="the model-size axis: other encoder widths (embed_dim) at which (a), (b) and (c) at 100%% of "
                        "the WSP steps are trained too, comma-separated ('' for none)")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help="steps of the short fine-tuning arm (recipes/vit_tiny_finetune.py on the labelled probe-train "
                        "split, top-1 on the test split; default 150, 0: none)")
    p.add_argument("--finetune-arms", default="",
                   help="arms whose encoders are fine-tuned (default: mae, wsp_scratch and maws at the largest fraction)")
    p.add_argument("--min-crop-area", type=float, default=0.35,
                   help="data.min_crop_area for WSP (0: the Inception crop's 0.08)")
    p.add_argument("--micro-batch", type=int, default=64)
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--loader", choices=("dali", "torch"), default="dali")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bf16 on GPUs, fp32 on CPUs (most CPUs have no native bf16 matmul: on this 2-core "
                        "machine a bf16 matmul is 10x slower than fp32)")
    p.add_argument("--pool", choices=("token", "avg"), default="avg", help="feature pooling for the evaluations")
    p.add_argument("--shots", default="1,5")
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--lit-steps", type=int, default=None,
                   help="LiT steps per encoder for the zero-shot metric (default 300, chosen by a pilot: see above; 0 in "
                        "--quick mode; 0: no LiT)")
    p.add_argument("--lit-arms", default="",
                   help="arms that get LiT + zero-shot (default: mae and wsp_scratch / maws at the largest fraction)")
    p.add_argument("--lit-seeds", type=int, default=0, help="LiT for the first N seeds only (0: every seed)")
    p.add_argument("--quick", action="store_true", help="tiny data, a few steps: checks that everything runs")
    p.add_argument("--no-plot", action="store_true", help="skip study.png (matplotlib is the `plot` extra)")
    args = p.parse_args(argv)
    if args.precision == "auto":
        import torch

        args.precision = "bf16" if torch.cuda.is_available() else "fp32"
    if args.quick:
        args.images, args.eval_images, args.size = 300, 150, 16
        args.mae_steps, args.wsp_steps, args.draws, args.micro_batch = 4, 4, 2, 16
        args.shots = "1"
        if args.fractions == QUICK_DEFAULT_FRACTIONS[0]:
            args.fractions = QUICK_DEFAULT_FRACTIONS[1]
        args.depth, args.embed_dim, args.num_heads, args.patch_size = 1, 32, 2, 4
        if args.widths == "96":
            args.widths = "16"
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    args.fraction_list = [float(f) for f in args.fractions.split(",") if f]
    if not args.fraction_list or any(not 0 < f <= 1 for f in args.fraction_list):
        p.error(f"--fractions must be fractions in (0, 1], got {args.fractions!r}")
    if args.lit_steps is None:
        args.lit_steps = 0 if args.quick else 300
    if args.finetune_steps is None:
        args.finetune_steps = 4 if args.quick else 150
    if args.lit_steps < 0 or args.lit_seeds < 0 or args.finetune_steps < 0:
        p.error("--lit-steps, --lit-seeds and --finetune-steps must be >= 0")
    try:
        args.width_list = [int(w) for w in args.widths.split(",") if w.strip()]
    except ValueError:
        p.error(f"--widths must be comma-separated integers, got {args.widths!r}")
    from mawstron.core import PRESETS

    heads = args.num_heads or PRESETS.get(args.preset, {}).get("num_heads", 1)
    bad = [w for w in args.width_list if w <= 0 or w % heads]
    if bad:
        p.error(f"--widths {args.widths!r}: each width must be a positive multiple of the {heads} attention heads "
                f"(pass --num-heads to change them)")
    if args.lit_steps:  # LiT's text tower: fail now, not after the first training of the study
        import importlib.util

        missing = [m for m in ("transformers", "tokenizers") if importlib.util.find_spec(m) is None]
        if missing:
            p.error(f"--lit-steps {args.lit_steps} needs {' and '.join(missing)} (LiT's text tower): run `make install` "
                    f"(or pip install -e .), or pass --lit-steps 0")
    full = f"{max(args.fraction_list):g}"
    args.lit_arm_list = ([a for a in args.lit_arms.split(",") if a] if args.lit_arms else
                         ["mae", f"wsp_scratch@{full}", f"maws@{full}"])
    args.finetune_arm_list = ([a for a in args.finetune_arms.split(",") if a] if args.finetune_arms else
                              ["mae", f"wsp_scratch@{full}", f"maws@{full}"])
    known = [a.name for a in arms_for(args.fraction_list, args.resample_arm, args.width_list)]
    for flag, chosen in (("--lit-arms", args.lit_arm_list), ("--finetune-arms", args.finetune_arm_list)):
        unknown = [a for a in chosen if a not in known]
        if unknown:
            p.error(f"{flag}: {', '.join(unknown)} not among this study's arms ({', '.join(known)})")
    return args


def child_env() -> dict:
    """DeepSpeed JIT-builds C++ ops on first use: keep them with this venv (as the Makefile does), or every
    launch may rebuild them in a cache that other checkouts' venvs invalidate (minutes per launch)."""
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.path.dirname(BIN), "torch_extensions"))
    return env


def sh(cmd: list[str], log: str) -> float:
    """Run ``cmd`` with its output in ``log``; returns seconds.  Fails with the log's tail."""
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=child_env())
    if proc.returncode != 0:
        with open(log) as f:
            tail = f.read()[-4000:]
        raise SystemExit(f"study: `{' '.join(cmd)}` failed (rc {proc.returncode}); log {log}:\n{tail}")
    return time.time() - t0


def make_data(args, data_dir: str) -> dict:
    manifest = os.path.join(data_dir, "manifest.json")
    vocab = os.path.join(data_dir, "vocab.json")
    if os.path.exists(manifest):  # reuse the collection only if it is the one asked for
        with open(manifest) as f:
            made = json.load(f)
        wanted = {"train": args.images, "eval-train": args.eval_images, "eval-test": args.eval_images}
        spec = made.get("tail", {}).get("spec", "none")
        if (made.get("counts") != wanted or made.get("size") != args.size or made.get("seed") != args.data_seed
                or spec != args.tail or made.get("scene", "web") != args.scene):
            shutil.rmtree(data_dir)
    if not os.path.exists(manifest):
        sh([os.path.join(BIN, "mawstron"), "data", "synth", "--out", data_dir, "--images", str(args.images),
            "--eval-images", str(args.eval_images), "--size", str(args.size), "--seed", str(args.data_seed),
            "--tail", args.tail, "--scene", args.scene, "--workers", "2", "--overwrite"],
           os.path.join(args.work_dir, "synth.log"))
    if not os.path.exists(vocab):
        sh([os.path.join(BIN, "mawstron"), "data", "vocab", "--shards", os.path.join(data_dir, "train-*.tar"),
            "--min-count", "5", "--synonyms", os.path.join(data_dir, "synonyms.json"), "--out", vocab],
           os.path.join(args.work_dir, "vocab.log"))
    with open(manifest) as f:
        info = json.load(f)
    with open(vocab) as f:
        info["vocab_size"] = len(json.load(f)["tags"])
    return info


def steps_of(args, arm: Arm) -> int:
    return args.mae_steps if arm.stage == "mae" else max(1, round(args.wsp_steps * arm.wsp_fraction))


def common_overrides(args, seed: int, steps: int, width: int = 0) -> list[str]:
    """Settings every training of the study shares (MAE, WSP, fine-tuning and LiT): model size (``width``: the
    arm's embed_dim on the model-size axis), precision, loader, batch, seed, schedule length.  LiT and fine-tuning
    need the model.* ones too, or the encoder would not load into their model."""
    out = [f"data.loader={args.loader}",
           f"train.micro_batch={args.micro_batch}", f"train.seed={seed}", f"train.steps={steps}",
           f"train.log_every={max(1, min(10, steps // 10))}", f"checkpoint.every_steps={steps}",
           "checkpoint.keep_last=1", f"parallel.precision={args.precision}", f"model.preset={args.preset}",
           f"optim.warmup_steps={max(1, steps // 10)}",
           "parallel.activation_checkpointing=0"]  # a tiny model: recomputing activations would only cost time
    from mawstron.core import SIZE_FIELDS

    # the model.* size overrides the study has flags for (--depth, --embed-dim, --num-heads, --patch-size; 0: keep)
    sizes = {k: getattr(args, k) for k in SIZE_FIELDS if getattr(args, k, 0)}
    if width:
        sizes["embed_dim"] = width
    return out + [f"model.{k}={v}" for k, v in sizes.items()]


def overrides_for(args, arm: Arm, seed: int, data_dir: str, mae_checkpoint: str) -> list[str]:
    steps = steps_of(args, arm)
    out = ["data.source=shards", f"data.shards={os.path.join(data_dir, 'train-*.tar')}"]
    out += common_overrides(args, seed, steps, arm.width)
    if arm.stage == "wsp":
        out += [f"data.vocab={os.path.join(data_dir, 'vocab.json')}", f"optim.lr={args.wsp_lr}",
                f"checkpoint.init_from={mae_checkpoint if arm.init_from_mae else ''}",
                f"data.resample={arm.resample}", f"data.min_crop_area={args.min_crop_area}"]
    return out


def train(args, arm: Arm, seed: int, data_dir: str, mae_checkpoint: str = "") -> dict:
    run_name = f"{arm.name}-seed{seed}"
    run_dir = os.path.join(args.work_dir, run_name)
    recipe = "vit_tiny_mae.py" if arm.stage == "mae" else "vit_tiny_wsp.py"
    cmd = [os.path.join(BIN, "mawstron"), "train", os.path.join(REPO, "recipes", recipe), "--gpus", str(args.ranks),
           "--set", f"output_dir={run_dir}", "--overwrite"]  # the study reruns its own runs from scratch
    for o in overrides_for(args, arm, seed, data_dir, mae_checkpoint):
        cmd += ["--set", o]
    print(f"[study] seed {seed}: {arm.label}: training {steps_of(args, arm)} steps", flush=True)
    seconds = sh(cmd, os.path.join(args.work_dir, f"{run_name}.log"))
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    curve = [(r["step"], r["loss"]) for r in records if "loss" in r and "step" in r]
    print(f"[study]   {seconds:.0f} s, loss {curve[0][1]:.3f} -> {curve[-1][1]:.3f}", flush=True)
    return {"arm": arm.name, "seed": seed, "width": arm.width, "run_dir": run_dir, "checkpoint": os.path.join(run_dir, "checkpoints"),
            "steps": steps_of(args, arm), "seconds": seconds, "loss_curve": curve, "first_loss": curve[0][1],
            "final_loss": curve[-1][1], "mean_loss": area_under(curve)}


def area_under(curve) -> float:
    """Mean loss over the run (trapezoid over steps): lower means it converged faster."""
    if len(curve) < 2:
        return curve[0][1]
    total = sum((s1 - s0) * (l0 + l1) / 2 for (s0, l0), (s1, l1) in zip(curve, curve[1:]))
    return total / (curve[-1][0] - curve[0][0])


# ------------------------------------------------------------------------------------------------ encoder metrics
@dataclass
class EncoderContext:
    """What a per-encoder metric may use: the checkpoint, its encoder, frozen features of both evaluation splits
    (``pool`` pooling), the collection's manifest and the study's settings."""

    checkpoint: str
    encoder: object
    train_x: object
    train_y: object
    test_x: object
    test_y: object
    data_dir: str
    manifest: dict
    args: argparse.Namespace
    seed: int
    arm: str = ""
    width: int = 0  # the arm's embed_dim override (the model-size axis), 0: the study's model


def probe_metrics(ctx: EncoderContext) -> dict:
    """Linear probe (L2 chosen on a hold-out), its accuracy on head and tail classes, and k-shot accuracy."""
    import torch

    from mawstron.core.eval import few_shot, fit_logistic_regression, linear_probe, standardize

    probe = linear_probe(ctx.train_x, ctx.train_y, ctx.test_x, ctx.test_y, seed=ctx.seed)
    out = {"linear_probe": probe.accuracy}
    tail = ctx.manifest.get("tail", {})
    if tail.get("head_classes"):
        classes = ctx.manifest["classes"]
        train_x, test_x = standardize(ctx.train_x, ctx.test_x)
        layer = fit_logistic_regression(train_x, ctx.train_y, len(classes), probe.l2)
        with torch.no_grad():
            correct = layer(test_x.double()).argmax(1) == ctx.test_y
        for group in ("head", "tail"):
            ids = torch.tensor([classes.index(c) for c in tail[f"{group}_classes"]])
            mask = torch.isin(ctx.test_y, ids)
            out[f"linear_probe_{group}_classes"] = correct[mask].double().mean().item()
    for k in (int(s) for s in ctx.args.shots.split(",") if s):
        out[f"{k}_shot"] = few_shot(ctx.train_x, ctx.train_y, ctx.test_x, ctx.test_y, shots=k,
                                    draws=ctx.args.draws, seed=ctx.seed).mean_accuracy
    return out


def zero_shot_metrics(ctx: EncoderContext) -> dict:
    """Zero-shot top-1/top-5 after ``--lit-steps`` of LiT on the frozen encoder, for the ``--lit-arms`` only
    (an empty dict for the others).  The LiT run goes to WORK_DIR/ARM-seedN-lit and replaces an earlier one there."""
    args = ctx.args
    if (not args.lit_steps or ctx.arm not in args.lit_arm_list
            or (args.lit_seeds and ctx.seed >= args.lit_seeds)):
        return {}
    from mawstron.parallel.evaluation.zero_shot import lit_zero_shot

    out_dir = os.path.join(args.work_dir, f"{ctx.arm}-seed{ctx.seed}-lit")
    print(f"[study]   LiT {args.lit_steps} steps on the frozen encoder -> {out_dir}", flush=True)
    t0 = time.time()
    result = lit_zero_shot(ctx.checkpoint, ctx.data_dir, out_dir, steps=args.lit_steps, ranks=args.ranks,
                           overrides=common_overrides(args, ctx.seed, args.lit_steps, ctx.width), overwrite=True)
    print(f"[study]   LiT + zero-shot {time.time() - t0:.0f} s", flush=True)
    return {"zero_shot_top1": result["zero_shot_top1"], "zero_shot_top5": result["zero_shot_top5"]}


def finetune_metrics(ctx: EncoderContext) -> dict:
    """Top-1 / top-5 on the test split after ``--finetune-steps`` of fine-tuning the whole encoder with a new
    classifier head on the labelled probe-train split (recipes/vit_tiny_finetune.py: layer-wise lr decay, label
    smoothing, drop path), for the ``--finetune-arms`` only.  The run goes to WORK_DIR/ARM-seedN-ft."""
    args = ctx.args
    if not args.finetune_steps or ctx.arm not in args.finetune_arm_list:
        return {}
    steps = args.finetune_steps
    run_dir = os.path.join(args.work_dir, f"{ctx.arm}-seed{ctx.seed}-ft")
    cmd = [os.path.join(BIN, "mawstron"), "train", os.path.join(REPO, "recipes", "vit_tiny_finetune.py"),
           "--gpus", str(args.ranks), "--overwrite", "--set", f"output_dir={run_dir}",
           "--set", f"checkpoint.init_from={ctx.checkpoint}", "--set", "data.source=shards",
           "--set", f"data.shards={os.path.join(ctx.data_dir, 'eval-train-*.tar')}",
           "--set", f"eval.test_shards={os.path.join(ctx.data_dir, 'eval-test-*.tar')}", "--set", "eval.max_images=0"]
    for item in common_overrides(args, ctx.seed, steps, ctx.width):
        cmd += ["--set", item]
    print(f"[study]   fine-tuning {steps} steps on the labelled split -> {run_dir}", flush=True)
    seconds = sh(cmd, run_dir + ".log")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        evals = [r for r in (json.loads(line) for line in f if line.strip()) if "eval_top1" in r]
    if not evals or evals[-1].get("step") != steps:
        raise SystemExit(f"study: the fine-tuning run {run_dir} has no evaluation at step {steps}; log {run_dir}.log")
    print(f"[study]   fine-tuning {seconds:.0f} s, top-1 {evals[-1]['eval_top1']:.3f}", flush=True)
    return {"finetune_top1": evals[-1]["eval_top1"], "finetune_top5": evals[-1]["eval_top5"]}


# Each entry maps an EncoderContext to {metric name: value}; every metric is aggregated over seeds and reported.
ENCODER_METRICS = [probe_metrics, finetune_metrics, zero_shot_metrics]


def evaluate_encoder(args, run: dict, data_dir: str, manifest: dict) -> dict:
    from mawstron.core.data import DataConfig, build_eval_loader
    from mawstron.core.eval import extract_features
    from mawstron.parallel.evaluation.evaluate import load_encoder_from_checkpoint

    t0 = time.time()
    model = load_encoder_from_checkpoint(run["checkpoint"])
    data = DataConfig(source="shards", loader=args.loader)
    feats = {}
    for split in ("eval-train", "eval-test"):
        loader = build_eval_loader(data, img_size=model.config.img_size, batch_size=256,
                                   shards=os.path.join(data_dir, f"{split}-*.tar"))
        feats[split] = extract_features(model, loader, pool=args.pool)
    ctx = EncoderContext(run["checkpoint"], model, *feats["eval-train"], *feats["eval-test"], data_dir, manifest,
                         args, run["seed"], run["arm"], run.get("width", 0))
    metrics = {}
    for metric in ENCODER_METRICS:
        metrics.update(metric(ctx))
    run["eval_seconds"] = time.time() - t0
    return metrics


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    os.makedirs(args.results, exist_ok=True)
    os.environ.update(child_env())  # LiT (zero_shot_metrics) launches its trainings from this process's env
    data_dir = os.path.join(args.work_dir, "data")
    t0 = time.time()
    manifest = make_data(args, data_dir)
    print(f"[study] data in {data_dir} ({time.time() - t0:.0f} s)", flush=True)
    arms = arms_for(args.fraction_list, args.resample_arm, args.width_list)
    runs: list[dict] = []
    partial = os.path.join(args.work_dir, f"{'study-quick' if args.quick else 'study'}-runs.json")
    for seed in range(args.seeds):
        mae_checkpoint: dict[int, str] = {}  # width -> this seed's MAE encoder
        for arm in arms:
            run = train(args, arm, seed, data_dir, mae_checkpoint.get(arm.width, ""))
            if arm.stage == "mae":
                mae_checkpoint[arm.width] = run["checkpoint"]
            run["metrics"] = evaluate_encoder(args, run, data_dir, manifest)
            print(f"[study]   " + ", ".join(f"{k} {v:.3f}" for k, v in run["metrics"].items()), flush=True)
            runs.append(run)
            with open(partial, "w") as f:  # what is done so far, should the study be stopped early
                json.dump(runs, f)
        if seed + 1 < args.seeds:  # a report of the seeds done so far, in the work dir
            write_report(args, manifest, arms, runs, t0, seed + 1, os.path.join(args.work_dir, "partial-results"))
    write_report(args, manifest, arms, runs, t0, args.seeds, args.results)
    return 0


def write_report(args, manifest, arms, runs, t0, seeds_done, results_dir) -> None:
    from mawstron.parallel.launcher.bench import git_commit
    from study_report import aggregate, findings, orderings, write_markdown, write_plot

    os.makedirs(results_dir, exist_ok=True)
    stem = "study-quick" if args.quick else "study"
    settings = {k: v for k, v in vars(args).items() if k not in ("work_dir", "results")}
    settings["seeds"] = seeds_done
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(),
        "commit": git_commit(),
        "settings": settings,
        "data": manifest,
        "arms": [arm.__dict__ for arm in arms],
        "runs": runs,
        "seconds": time.time() - t0,
    }
    result["summary"] = aggregate(result)
    result["findings"] = findings(result)
    result["orderings"] = orderings(result)
    result["num_classes"] = manifest["num_classes"]
    with open(os.path.join(results_dir, f"{stem}.json"), "w") as f:
        json.dump(result, f, indent=1)
    write_markdown(result, os.path.join(results_dir, f"{stem}.md"), f"{stem}.png")
    if not args.no_plot:
        write_plot(result, os.path.join(results_dir, f"{stem}.png"))
    print("\n".join(result["findings"]))
    print(f"[study] wrote {results_dir}/{stem}.{{json,md{',png' if not args.no_plot else ''}}} "
          f"after {time.time() - t0:.0f} s ({seeds_done} seeds)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
