"""Evaluation at scale: feature extraction images/s per rank, and the linear probe on ImageNet-shaped features.

    python benchmarks/eval_scale.py                                   # small CI-sized default (seconds)
    python benchmarks/eval_scale.py --probe-n 8000 --probe-d 1280 --probe-c 1000 --baseline \\
        --out benchmarks/results/eval_scale-cpu.json                  # the issue's CPU target, vs the old probe
    python benchmarks/eval_scale.py --model vit_l16 --images 2048 --batch-size 256 \\
        --probe-n 1281167 --probe-d 1280 --probe-c 1000               # one GPU: the ImageNet-1k-shaped probe
    deepspeed --num_gpus 8 benchmarks/eval_scale.py --model vit_l16 --skip-probe   # images/s on every rank

Features: a preset's encoder (random weights: the speed does not depend on them) on random images, timed after a
warm-up batch; each rank times its own share and reports images/s.  Probe: synthetic features shaped like a
pretrained encoder's on ImageNet-1k (N training rows, D dimensions, C classes; Gaussian class centres plus noise,
``--separation`` sets the difficulty), the project's probe (``mawstron.core.eval.linear_probe``) against, with
``--baseline``, the probe as it was before #22 (float64 L-BFGS on one thread, cold starts, 200 iterations per
fit: ``reference_probe`` below, kept verbatim) on the same data and L2 grid.
Writes JSON (device, commit, date) to runs/benchmarks/ or ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_common import metadata, write_json  # noqa: E402

from mawstron.core import create_vit  # noqa: E402
from mawstron.core.eval import linear_probe  # noqa: E402
from mawstron.core.eval.features import autocast_for  # noqa: E402
from mawstron.core.eval.linear import DEFAULT_L2_GRID, _stratified_split, sgd_probe  # noqa: E402


# --- the probe before #22, verbatim (core/eval/linear.py at 00e0193), for the --baseline comparison ---------------
@contextlib.contextmanager
def _single_threaded():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _reference_fit(features, labels, num_classes, l2, max_iter=200):
    x = features.double()
    y = labels.long()
    layer = torch.nn.Linear(x.shape[1], num_classes, dtype=torch.float64)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)
    onehot = F.one_hot(y, num_classes).double()
    n = x.shape[0]

    @torch.no_grad()
    def closure():
        w, b = layer.weight, layer.bias
        logits = torch.addmm(b, x, w.t())
        logp = torch.log_softmax(logits, dim=1)
        loss = -(logp * onehot).sum() / n + 0.5 * l2 * w.pow(2).sum()
        g = (logp.exp() - onehot) / n
        w.grad = g.t() @ x + l2 * w
        b.grad = g.sum(0)
        return loss

    with torch.no_grad():
        opt.step(closure)
    return layer


def _reference_accuracy(layer, features, labels):
    with torch.no_grad():
        return (layer(features.double()).argmax(1) == labels).double().mean().item()


def reference_probe(train_x, train_y, test_x, test_y, l2_grid=DEFAULT_L2_GRID, holdout=0.2, seed=0,
                    log=None) -> dict:
    """The old ``linear_probe``; ``log(line)`` gets each fit's time and hold-out accuracy as it ends (the only
    additions, so that a long run shows progress)."""
    t0 = time.perf_counter()
    fits = []
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    mean, std = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    fit_idx, val_idx = _stratified_split(train_y, holdout, torch.Generator().manual_seed(seed))
    best_l2, best_val = l2_grid[0], -1.0
    with _single_threaded():
        for l2 in l2_grid:
            layer = _reference_fit(train_x[fit_idx], train_y[fit_idx], num_classes, l2)
            val_acc = _reference_accuracy(layer, train_x[val_idx], train_y[val_idx])
            fits.append({"l2": l2, "val_accuracy": val_acc, "at_s": time.perf_counter() - t0})
            if log:
                log(f"  before #22: fit L2 {l2:g} done at {fits[-1]['at_s']:.0f} s, hold-out accuracy {val_acc:.2%}")
            if val_acc > best_val:
                best_l2, best_val = l2, val_acc
        layer = _reference_fit(train_x, train_y, num_classes, best_l2)
        return {"accuracy": _reference_accuracy(layer, test_x, test_y), "l2": best_l2, "fits": fits}
# ---------------------------------------------------------------------------------------------------------------


def synthetic_features(n: int, d: int, c: int, test_n: int, separation: float, seed: int = 0, device="cpu"):
    """``(train_x, train_y, test_x, test_y)``: class centres ``N(0, separation^2)`` per dimension plus unit noise,
    labels balanced (``i % c``), float32 on the CPU (drawn on ``device``: a GPU draws 1.28M x 1280 in a blink)."""
    g = torch.Generator(device=device).manual_seed(seed)
    centres = torch.randn(c, d, generator=g, device=device) * separation

    def draw(m, s):
        y = torch.arange(m) % c
        x = torch.empty(m, d)
        gen = torch.Generator(device=device).manual_seed(s)
        for i in range(0, m, 65536):  # in blocks: 1.28M x 1280 would otherwise need a second copy for the sum
            rows = y[i:i + 65536].to(device)
            x[i:i + 65536] = (centres[rows] + torch.randn(len(rows), d, generator=gen, device=device)).cpu()
        return x, y

    return (*draw(n, seed + 1), *draw(test_n, seed + 2))


def bench_probe(args) -> dict:
    test_n = args.probe_test_n or max(2 * args.probe_c, args.probe_n // 4)
    t0 = time.perf_counter()
    from mawstron.core.eval.linear import resolve_device

    train_x, train_y, test_x, test_y = synthetic_features(args.probe_n, args.probe_d, args.probe_c, test_n,
                                                          args.separation, device=resolve_device(args.device))
    out = {"n": args.probe_n, "d": args.probe_d, "classes": args.probe_c, "test_n": test_n,
           "separation": args.separation, "l2_grid": list(DEFAULT_L2_GRID), "make_features_s": time.perf_counter() - t0}
    r = linear_probe(train_x, train_y, test_x, test_y, device=args.device)
    out["lbfgs"] = {"seconds": r.seconds, "accuracy": r.accuracy, "l2": r.l2, **r.describe()}
    print(f"probe lbfgs {args.probe_n} x {args.probe_d}, {args.probe_c} classes: {r.seconds:.1f} s, "
          f"accuracy {r.accuracy:.2%} (L2 {r.l2:g}, {r.iterations} iterations, {r.device}, {r.dtype})", flush=True)
    if args.sgd:
        s = sgd_probe(train_x, train_y, test_x, test_y, device=args.device, epochs=args.sgd_epochs)
        out["sgd"] = {"seconds": s.seconds, "accuracy": s.accuracy, "epochs": args.sgd_epochs, **s.describe()}
        print(f"probe sgd ({args.sgd_epochs} epochs): {s.seconds:.1f} s, accuracy {s.accuracy:.2%}", flush=True)
    if args.baseline:
        t = time.perf_counter()
        ref = reference_probe(train_x, train_y, test_x, test_y, log=lambda line: print(line, flush=True))
        ref["seconds"] = time.perf_counter() - t
        out["baseline_before_22"] = ref
        out["speedup"] = ref["seconds"] / r.seconds
        out["accuracy_difference_points"] = 100 * (r.accuracy - ref["accuracy"])
        print(f"probe before #22: {ref['seconds']:.1f} s, accuracy {ref['accuracy']:.2%} (L2 {ref['l2']:g}): "
              f"new probe {out['speedup']:.1f}x faster, {out['accuracy_difference_points']:+.2f} points", flush=True)
    return out


def bench_features(args) -> dict:
    from mawstron.core.eval.linear import resolve_device

    device = resolve_device(args.device)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    model = create_vit(args.model).to(device).eval()
    img = model.config.img_size
    images = torch.randn(args.batch_size, 3, img, img, device=device)
    batches = max(1, args.images // args.batch_size)

    def run(k):
        with torch.no_grad(), autocast_for(device, args.precision):
            for _ in range(k):
                model.forward_features(images)[:, 0].float()
        if device.type == "cuda":
            torch.cuda.synchronize()

    run(1)  # warm-up
    t = time.perf_counter()
    run(batches)
    seconds = time.perf_counter() - t
    rate = batches * args.batch_size / seconds
    print(f"features {args.model} on {device} ({args.precision}), rank {rank}/{world}: {rate:.1f} images/s "
          f"({batches} batches of {args.batch_size})", flush=True)
    return {"model": args.model, "device": str(device), "precision": args.precision, "batch_size": args.batch_size,
            "images": batches * args.batch_size, "seconds": seconds, "images_per_s_per_rank": rate, "rank": rank,
            "world_size": world, "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--model", default="vit_tiny", help="preset whose encoder extracts features")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--skip-features", action="store_true")
    p.add_argument("--skip-probe", action="store_true")
    p.add_argument("--probe-n", type=int, default=2000, help="training feature rows")
    p.add_argument("--probe-d", type=int, default=256, help="feature dimensions")
    p.add_argument("--probe-c", type=int, default=100, help="classes")
    p.add_argument("--probe-test-n", type=int, default=0, help="test rows (default: max(2 C, N / 4))")
    p.add_argument("--separation", type=float, default=0.2, help="class-centre scale: difficulty of the features")
    p.add_argument("--baseline", action="store_true", help="also run the probe as it was before #22 (slow)")
    p.add_argument("--sgd", action="store_true", help="also run --probe sgd (MAE's protocol)")
    p.add_argument("--sgd-epochs", type=int, default=90)
    p.add_argument("--note", default="", help="recorded in the JSON (e.g. what else ran on the machine)")
    p.add_argument("--out", default=None)
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    result = {**metadata(), "benchmark": "eval_scale", "note": args.note, "cpu_count": os.cpu_count(),
              "command": " ".join(["python", "benchmarks/eval_scale.py", *(argv if argv is not None else sys.argv[1:])])}
    if not args.skip_features:
        result["features"] = bench_features(args)
    if not args.skip_probe and int(os.environ.get("RANK", "0")) == 0:
        result["probe"] = bench_probe(args)
    rank = int(os.environ.get("RANK", "0"))
    path = write_json(result, args.out if rank == 0 else None, "eval_scale" + (f"-rank{rank}" if rank else ""))
    print(json.dumps({k: v for k, v in result.items() if k in ("features", "probe")}))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
