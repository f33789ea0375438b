"""Data loader throughput: DALI vs the PIL DataLoader on the same shards, augmentation and thread count.

    python benchmarks/dataloader.py --shards 'runs/bench224/train-*.tar' --loader both --batches 30 --size 224

Times ``--batches`` batches after ``--warmup`` (pipeline start-up, index loading and worker spawn excluded) of
the training loader exactly as the trainer builds it (RandomResizedCrop + flip + normalise, float32 CHW; stage
``mae`` crop scale (0.2, 1) by default).  DALI gets ``--threads`` CPU threads, the DataLoader ``--threads``
worker processes.  Prints one JSON line per loader; ``--loader both`` adds a comparison line with the ratio.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import sys
import time


def measure(loader: str, args) -> dict:
    import torch

    from mawstron.core.data import DataConfig, build_train_loader
    from mawstron.parallel.launcher.bench import git_commit

    cfg = DataConfig(source="shards", shards=args.shards, loader=loader, num_workers=args.threads,
                     dali_device=args.dali_device, vocab=args.vocab)
    start = time.perf_counter()
    ld = build_train_loader(cfg, stage=args.stage, img_size=args.size, micro_batch=args.batch_size, seed=0)
    it = iter(ld)
    for _ in range(args.warmup):
        next(it)
    startup = time.perf_counter() - start
    t0 = time.perf_counter()
    n = 0
    for batch in itertools.islice(it, args.batches):
        n += batch["images"].shape[0]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    stats = ld.stats()
    ld.close()
    device = ("cuda:" + torch.cuda.get_device_name()) if torch.cuda.is_available() else platform.processor() or "cpu"
    return {
        "loader": loader,
        "images_per_s": n / elapsed,
        "images": n,
        "seconds": elapsed,
        "startup_s": startup,
        "batch_size": args.batch_size,
        "size": args.size,
        "stage": args.stage,
        "threads": args.threads,
        "decoder": f"DALI {ld.device}" if loader == "dali" else "PIL",
        "skipped": stats["skipped"],
        "device": device,
        "cores": os.cpu_count(),
        "date": datetime.date.today().isoformat(),
        "commit": git_commit(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True)
    p.add_argument("--loader", choices=("dali", "torch", "both"), default="both")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--stage", choices=("mae", "wsp"), default="mae")
    p.add_argument("--vocab", default="", help="vocab.json (needed for --stage wsp)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="DALI threads = DataLoader workers")
    p.add_argument("--dali-device", default="auto", choices=("auto", "cpu", "mixed"))
    p.add_argument("--repeat", type=int, default=1, help="measure each loader this many times (alternating); "
                   "report the median run (this machine's cores are shared: the spread is reported too)")
    p.add_argument("--out", default="", help="also write the result(s) to this JSON file")
    args = p.parse_args(argv)
    loaders = ["dali", "torch"] if args.loader == "both" else [args.loader]
    runs = {name: [] for name in loaders}
    for _ in range(args.repeat):
        for name in loaders:
            runs[name].append(measure(name, args))
    results = []
    for name in loaders:
        ordered = sorted(runs[name], key=lambda r: r["images_per_s"])
        median = dict(ordered[len(ordered) // 2])
        median["repeats"] = len(ordered)
        median["images_per_s_all"] = [round(r["images_per_s"], 1) for r in runs[name]]
        results.append(median)
    for r in results:
        print(json.dumps(r))
    out = results[0]
    if len(results) == 2:
        dali, torch_ = results
        ratio = dali["images_per_s"] / torch_["images_per_s"]
        out = {"comparison": "dali_vs_torch", "dali_images_per_s": dali["images_per_s"],
               "torch_images_per_s": torch_["images_per_s"], "speedup": ratio, "target": 1.5, "note": "median of --repeat runs each; same shards, augmentation, size and threads",
               "target_met": ratio >= 1.5, "results": results}
        print(json.dumps({k: v for k, v in out.items() if k != "results"}))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
