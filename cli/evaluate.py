"""``mawstron eval``: linear probe and k-shot accuracy of a checkpoint's frozen features."""

from __future__ import annotations

import json
import os
import sys


def add_parser(subparsers):
    p = subparsers.add_parser("eval", help="linear probe + k-shot of a checkpoint on labelled shards")
    p.add_argument("--checkpoint", required=True, help="a run's checkpoints/ folder (ZeRO-3) or a consolidated file")
    p.add_argument("--data", default="", help="a `mawstron data synth` folder: uses DATA/eval-{train,test}-*.tar")
    p.add_argument("--train-shards", default="", help="labelled shards to fit the probes on (overrides --data)")
    p.add_argument("--test-shards", default="", help="labelled shards to measure accuracy on (overrides --data)")
    p.add_argument("--shots", default="1,5,10", help="k-shot settings, comma-separated")
    p.add_argument("--draws", type=int, default=5, help="random draws averaged per k-shot setting")
    p.add_argument("--pool", choices=("token", "avg"), default="token")
    p.add_argument("--loader", choices=("dali", "torch"), default="dali")
    p.add_argument("--tag", default=None, help="checkpoint step to evaluate, e.g. step_00000400 (default: 'latest')")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--verbose", dest="verbose_here", action="store_true",
                   help="show DeepSpeed INFO lines and third-party warnings")
    p.add_argument("--zero-shot", action="store_true",
                   help="zero-shot top-1/top-5 of a LiT run or MAWS-CLIP file on the test split (no probe)")
    p.add_argument("--classnames", default="", help="zero-shot: class names, one per line in label order "
                   "(default: the manifest's / samples' class_name)")
    p.add_argument("--templates", default="", help="zero-shot: prompt templates, one per line with {} (default: "
                   "a built-in set)")
    p.add_argument("--tokenizer", default="", help="zero-shot: tokenizer.json or a Hugging Face name (default: the "
                   "one saved with the run / beside the file)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a checkpoint folder whose files need more than tensors (unpickling runs code from "
                        "the files: only for folders whose source you trust; README: Security)")
    p.set_defaults(func=run)


def run(args) -> int:
    from mawstron.parallel.evaluation.evaluate import evaluate

    train = args.train_shards or (os.path.join(args.data, "eval-train-*.tar") if args.data else "")
    test = args.test_shards or (os.path.join(args.data, "eval-test-*.tar") if args.data else "")
    if args.zero_shot:
        return run_zero_shot(args, test)
    if not train or not test:
        raise SystemExit("mawstron eval: give --data DIR (from `mawstron data synth`) or --train-shards and --test-shards")
    import glob
    import sys

    if args.data and not (args.train_shards and args.test_shards):
        missing = [p for p in (train, test) if not glob.glob(p)]
        if missing:
            print(f"mawstron eval: --data {args.data} holds no {', '.join(os.path.basename(p) for p in missing)}; "
                  f"give --data the folder `mawstron data synth --out DIR` wrote (e.g. --data runs/demo/data), or "
                  f"--train-shards and --test-shards", file=sys.stderr)
            return 2
    shots = tuple(int(s) for s in args.shots.split(",") if s)
    from mawstron.parallel.console import stdout_to_stderr

    try:
        with stdout_to_stderr():  # DeepSpeed's ZeRO merge prints progress: stdout keeps the result alone
            result = evaluate(args.checkpoint, train, test, shots=shots, draws=args.draws, pool=args.pool,
                              loader=args.loader, tag=args.tag)
    except (FileNotFoundError, ValueError) as e:
        print(f"mawstron eval: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.checkpoint}: {result['num_classes']} classes, {result['train_images']} train / "
          f"{result['test_images']} test images, {args.pool} features")
    print(f"  linear probe  {result['linear_probe_accuracy']:.1%}  (L2 {result['linear_probe_l2']:g})")
    for k in shots:
        print(f"  {k:>2}-shot       {result[f'{k}_shot_accuracy']:.1%} +- {result[f'{k}_shot_std']:.1%} "
              f"over {args.draws} draws")
    return 0


def run_zero_shot(args, test: str) -> int:
    from mawstron.parallel.console import stdout_to_stderr
    from mawstron.parallel.evaluation.zero_shot import evaluate_zero_shot

    if not test:
        raise SystemExit("mawstron eval --zero-shot: give --data DIR (from `mawstron data synth`) or --test-shards")
    try:
        # DeepSpeed's shard merging prints progress on stdout: keep stdout for the result (one line with --json)
        with stdout_to_stderr():
            result = evaluate_zero_shot(args.checkpoint, test, classnames=args.classnames, templates=args.templates,
                                        tokenizer=args.tokenizer)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"mawstron eval --zero-shot: {e}") from None
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.checkpoint}: zero-shot on {result['test_images']} test images, {result['num_classes']} classes "
          f"(chance {result['chance_top1']:.1%})")
    print(f"  top-1 {result['zero_shot_top1']:.1%}   top-5 {result['zero_shot_top5']:.1%}")
    return 0
