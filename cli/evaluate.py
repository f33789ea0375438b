"""``mawstron eval``: linear probe and k-shot accuracy of a checkpoint's frozen features."""

from __future__ import annotations

import json
import os
import sys

from mawstron.parallel.launcher.argtypes import positive_int, positive_int_list

from .ranks import (add_rank_args, check_rank_args, exec_launcher, launch_command, leave_rank, prefetch_release,
                    resolve_source)


def add_parser(subparsers):
    p = subparsers.add_parser("eval", help="linear probe + k-shot of a checkpoint on labelled shards")
    p.add_argument("--checkpoint", required=True,
                   help="a run folder, its checkpoints/ folder (ZeRO-3), a .safetensors file or a released name "
                        "(maws_vit_h14; `mawstron weights list`)")
    p.add_argument("--data", default="", help="a `mawstron data synth` folder (DATA/eval-{train,test}-*.tar), a "
                   "`data from-folder` one (DATA/{train,val}-*.tar), or an ImageNet-style tree: DATA/train/ and "
                   "DATA/val/ as class folders or as webdataset shards")
    p.add_argument("--train-shards", default="", help="labelled shards to fit the probes on (overrides --data)")
    p.add_argument("--test-shards", default="", help="labelled shards to measure accuracy on (overrides --data)")
    p.add_argument("--shots", type=positive_int_list, default=(1, 5, 10),
                   help="k-shot settings, comma-separated whole numbers of 1 or more (default: 1,5,10)")
    p.add_argument("--draws", type=positive_int, default=5, help="random draws averaged per k-shot setting")
    p.add_argument("--pool", choices=("token", "avg"), default="token",
                   help="class token, or the mean of the patch tokens")
    p.add_argument("--loader", choices=("dali", "torch"), default="auto",
                   help="image decoding: dali (on the GPU, `mixed`, when the encoder runs on one; its CPU decoder "
                        "otherwise) or torch (PIL in --workers processes); default: dali when NVIDIA DALI is "
                        "installed, else torch.  The log names the decoder that ran")
    p.add_argument("--tag", default=None,
                   help="checkpoint step: 400, step_400, step_00000400 or latest (default: the one 'latest' names)")
    p.add_argument("--strict", action="store_true",
                   help="refuse, instead of falling back to the newest checkpoint that verifies, when 'latest' names "
                        "a torn, missing or damaged checkpoint")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it is shown only on a terminal)")
    p.add_argument("--verbose", dest="verbose_here", action="store_true",
                   help="show DeepSpeed INFO lines and third-party warnings")
    p.add_argument("--zero-shot", action="store_true",
                   help="zero-shot top-1/top-5 of a LiT run or MAWS-CLIP file on the test split (no probe)")
    p.add_argument("--classnames", default="", help="zero-shot: class names, one per line in label order "
                   "(default: the manifest's / samples' class_name)")
    p.add_argument("--templates", default="", help="zero-shot: prompt templates, one per line with {} (default: "
                   "the built-in set; ImageNet class folders get the shipped ImageNet prompts)")
    p.add_argument("--tokenizer", default="", help="zero-shot: tokenizer.json or a Hugging Face name (default: the "
                   "one saved with the run / beside the file)")
    p.add_argument("--probe", choices=("lbfgs", "sgd"), default="lbfgs",
                   help="lbfgs (default): logistic regression, L2 picked on a hold-out, L-BFGS to convergence; "
                        "sgd: MAE's protocol (BatchNorm + linear head, LARS) for comparison with MAE's numbers")
    p.add_argument("--probe-epochs", type=int, default=90, help="--probe sgd: epochs (MAE: 90)")
    p.add_argument("--probe-batch-size", type=int, default=16384, help="--probe sgd: batch size (MAE: 16384)")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass on each rank")
    add_rank_args(p)
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a checkpoint folder whose files need more than tensors (unpickling runs code from "
                        "the files: only for folders whose source you trust; README: Security)")
    p.set_defaults(func=run)


def run(args, argv: list[str] | None = None) -> int:
    from mawstron.parallel.evaluation.evaluate import eval_splits, evaluate

    problem = check_rank_args(args, "eval")
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if args.probe_epochs <= 0 or args.probe_batch_size <= 0 or args.batch_size <= 0:
        print("mawstron eval: --probe-epochs, --probe-batch-size and --batch-size must be positive", file=sys.stderr)
        return 2
    train, test = args.train_shards, args.test_shards
    if args.data and not (train and test):
        if os.path.isdir(args.data):
            try:  # synth's or from-folder's shards, or an ImageNet-style tree (class folders or folders of shards)
                data_train, data_test = eval_splits(args.data)
            except ValueError as e:
                print(f"mawstron eval: {e}", file=sys.stderr)
                return 2
        else:
            data_train, data_test = (os.path.join(args.data, f"{split}-*.tar") for split in ("eval-train", "eval-test"))
        train, test = train or data_train, test or data_test
    cmd = launch_command(args, sys.argv[1:] if argv is None else argv)
    if cmd:
        prefetch_release(args.checkpoint)
        exec_launcher(cmd, args.device)
    if args.zero_shot:
        return run_zero_shot(args, test)
    if not train or not test:
        raise SystemExit("mawstron eval: give --data DIR (from `mawstron data synth`) or --train-shards and --test-shards")
    import glob

    if args.data and not (args.train_shards and args.test_shards):
        missing = [p for p in (train, test) if not glob.glob(p)]
        if missing:
            print(f"mawstron eval: --data {args.data} holds no {', '.join(os.path.basename(p) for p in missing)}; "
                  f"give --data the folder `mawstron data synth --out DIR` wrote (e.g. --data runs/demo/data) or "
                  f"the one `mawstron data from-folder` wrote a train and a val split into, or --train-shards and "
                  f"--test-shards", file=sys.stderr)
            return 2
    shots = args.shots
    from mawstron.parallel.checkpoints.sources import check_local_input
    from mawstron.parallel.console import stdout_to_stderr

    probe_options = {"epochs": args.probe_epochs, "batch_size": args.probe_batch_size} if args.probe == "sgd" else {}
    try:  # resolved here, outside the quiet block: a fallback to an older checkpoint is said on stderr
        check_local_input(train, "--train-shards", "eval", remote_ok=True)
        check_local_input(test, "--test-shards", "eval", remote_ok=True)
        checkpoint, tag = resolve_source(args)
        with stdout_to_stderr():  # DeepSpeed's ZeRO merge prints progress: stdout keeps the result alone
            result = evaluate(checkpoint, train, test, shots=shots, draws=args.draws, pool=args.pool,
                              loader=args.loader, tag=tag, device=args.device, precision=args.precision,
                              probe=args.probe, probe_options=probe_options, batch_size=args.batch_size,
                              workers=args.workers, quiet=args.quiet)
    except (FileNotFoundError, ValueError, MemoryError) as e:
        print(f"mawstron eval: {e}", file=sys.stderr)
        leave_rank(2)
        return 2
    if result is None:  # a rank other than 0: its share is gathered, rank 0 reports
        leave_rank(0)
        return 0
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.checkpoint}: {result['num_classes']} classes, {result['train_images']} train / "
          f"{result['test_images']} test images, {args.pool} features")
    what = f"L2 {result['linear_probe_l2']:g}" if args.probe == "lbfgs" else f"MAE's SGD protocol, {args.probe_epochs} epochs"
    print(f"  linear probe  {result['linear_probe_accuracy']:.1%}  ({what}; {result['protocol']['seconds']:.1f} s on "
          f"{result['device']}, features from {result['ranks']} rank{'s' if result['ranks'] > 1 else ''})")
    for k in shots:
        print(f"  {k:>2}-shot       {result[f'{k}_shot_accuracy']:.1%} +- {result[f'{k}_shot_std']:.1%} "
              f"over {args.draws} draws")
    return 0


def run_zero_shot(args, test: str) -> int:
    from mawstron.parallel.checkpoints.sources import check_local_input, resolve_checkpoint
    from mawstron.parallel.console import stdout_to_stderr
    from mawstron.parallel.evaluation.zero_shot import evaluate_zero_shot

    if not test:
        raise SystemExit("mawstron eval --zero-shot: give --data DIR (from `mawstron data synth`) or --test-shards")
    try:
        check_local_input(test, "--test-shards", "eval", remote_ok=True)
        checkpoint, tag = args.checkpoint, None
        if os.path.isdir(args.checkpoint):  # a LiT run: its verified step, a fallback said here on stderr
            checkpoint, tag = resolve_checkpoint(args.checkpoint, args.tag, strict=args.strict)
        # DeepSpeed's shard merging prints progress on stdout: keep stdout for the result (one line with --json)
        with stdout_to_stderr():
            result = evaluate_zero_shot(checkpoint, test, classnames=args.classnames, templates=args.templates,
                                        tokenizer=args.tokenizer, batch_size=args.batch_size, device=args.device,
                                        precision=args.precision, workers=args.workers, tag=tag,
                                        loader=args.loader)
    except (FileNotFoundError, ValueError) as e:
        print(f"mawstron eval --zero-shot: {e}", file=sys.stderr)
        leave_rank(2)
        return 2
    if result is None:  # a rank other than 0
        leave_rank(0)
        return 0
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.checkpoint}: zero-shot on {result['test_images']} test images, {result['num_classes']} classes "
          f"(chance {result['chance_top1']:.1%})")
    print(f"  top-1 {result['zero_shot_top1']:.1%}   top-5 {result['zero_shot_top5']:.1%}")
    return 0
