"""The MAWS study in miniature: does MAE pre-pretraining help weakly-supervised pretraining?

    make study                                   # the whole thing on a fresh machine (tens of minutes on 2 cores)
    python benchmarks/study.py --quick           # a few steps of each run: checks the plumbing, not the claim

On the embedded dataset (`mawstron data synth`: procedural objects with noisy web-style hashtags and a clean
labelled evaluation split) it trains, with the real trainer on two ranks (DeepSpeed ZeRO-3; CPU ranks here):

  (a) MAE only,
  (b) WSP from random initialisation,
  (c) MAWS: WSP initialised from (a)'s encoder, with exactly the WSP steps, data and seed of (b),

then evaluates the three encoders' frozen features with a linear probe and 5-shot logistic regression on the
held-out split (`mawstron.parallel.evaluate`). It writes to ``--results`` (default ``runs/study/results``;
``make study`` passes ``benchmarks/results``, regenerating the committed report on purpose):

  study.json   every number, the settings, date, device and commit
  study.md     the table, and what it shows, stated from the numbers (whichever way they go)
  study.png    WSP loss curves of (b) vs (c), and the accuracies of (a), (b), (c)

The paper's claim (Singh et al., ICCV 2023) is that (c) converges faster and transfers better than (b).
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
RUNS = {
    "mae": "(a) MAE only",
    "wsp_scratch": "(b) WSP from scratch",
    "maws": "(c) MAWS: MAE -> WSP",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default=os.path.join(REPO, "runs", "study"), help="data, runs and checkpoints")
    p.add_argument("--results", default=os.path.join(REPO, "runs", "study", "results"),
                   help="where the report goes (`make study`: benchmarks/results, the committed one)")
    p.add_argument("--images", type=int, default=4000, help="training images in the synthetic collection")
    p.add_argument("--eval-images", type=int, default=1000, help="labelled images in each evaluation split")
    p.add_argument("--size", type=int, default=32, help="image size (the tiny presets are 32 px)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mae-steps", type=int, default=400)
    p.add_argument("--wsp-steps", type=int, default=200)
    p.add_argument("--micro-batch", type=int, default=32)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--loader", choices=("dali", "torch"), default="dali")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bf16 on GPUs, fp32 on CPUs (most CPUs have no native bf16 matmul: on this 2-core "
                        "machine a bf16 matmul is 10x slower than fp32)")
    p.add_argument("--shots", default="1,5,10")
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny data, a few steps: checks that everything runs")
    p.add_argument("--no-plot", action="store_true", help="skip study.png (matplotlib is the `plot` extra)")
    args = p.parse_args(argv)
    if args.precision == "auto":
        import torch

        args.precision = "bf16" if torch.cuda.is_available() else "fp32"
    if args.quick:
        args.images, args.eval_images = 512, 300
        args.mae_steps, args.wsp_steps, args.draws = 6, 6, 2
        args.shots = "1,5"
    return args


def sh(cmd: list[str], log: str) -> float:
    """Run ``cmd`` with its output in ``log``; returns seconds.  Fails with the log's tail."""
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
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
        if made.get("counts") != wanted or made.get("size") != args.size or made.get("seed") != args.seed:
            shutil.rmtree(data_dir)
    if not os.path.exists(manifest):
        sh([os.path.join(BIN, "mawstron"), "data", "synth", "--out", data_dir, "--images", str(args.images),
            "--eval-images", str(args.eval_images), "--size", str(args.size), "--seed", str(args.seed), "--overwrite"],
           os.path.join(args.work_dir, "synth.log"))
    if not os.path.exists(vocab):
        cmd = [os.path.join(BIN, "mawstron"), "data", "vocab", "--shards", os.path.join(data_dir, "train-*.tar"),
               "--min-count", "5", "--out", vocab]
        if os.path.exists(os.path.join(data_dir, "synonyms.json")):
            cmd += ["--synonyms", os.path.join(data_dir, "synonyms.json")]
        sh(cmd, os.path.join(args.work_dir, "vocab.log"))
    with open(manifest) as f:
        info = json.load(f)
    with open(vocab) as f:
        info["vocab_size"] = len(json.load(f)["tags"])
    return info


def train(args, name: str, recipe: str, overrides: list[str]) -> dict:
    run_dir = os.path.join(args.work_dir, name)
    cmd = [os.path.join(BIN, "mawstron"), "train", os.path.join(REPO, "recipes", recipe), "--gpus", str(args.ranks),
           "--set", f"output_dir={run_dir}", "--overwrite"]  # the study reruns its own runs from scratch
    for o in overrides:
        cmd += ["--set", o]
    print(f"[study] {RUNS[name]}: training ({recipe})", flush=True)
    seconds = sh(cmd, os.path.join(args.work_dir, f"{name}.log"))
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    curve = [(r["step"], r["loss"]) for r in records if "loss" in r and "step" in r]
    print(f"[study]   {seconds:.0f} s, loss {curve[0][1]:.3f} -> {curve[-1][1]:.3f}", flush=True)
    return {"run_dir": run_dir, "checkpoint": os.path.join(run_dir, "checkpoints"), "seconds": seconds,
            "loss_curve": curve, "first_loss": curve[0][1], "final_loss": curve[-1][1],
            "images_per_s": sorted(r["images_per_s"] for r in records if "images_per_s" in r)[len(records) // 2]
            if records else None}


def evaluate_run(args, run: dict, data_dir: str) -> dict:
    from mawstron.parallel.evaluate import evaluate

    shots = tuple(int(s) for s in args.shots.split(",") if s)
    out = {}
    for pool in ("token", "avg"):
        out[pool] = evaluate(run["checkpoint"], os.path.join(data_dir, "eval-train-*.tar"),
                             os.path.join(data_dir, "eval-test-*.tar"), shots=shots, draws=args.draws, pool=pool,
                             loader=args.loader, seed=args.seed)
    return out


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


def area_under(curve) -> float:
    """Mean loss over the run (trapezoid over steps): lower means it converged faster."""
    if len(curve) < 2:
        return curve[0][1]
    total = sum((s1 - s0) * (l0 + l1) / 2 for (s0, l0), (s1, l1) in zip(curve, curve[1:]))
    return total / (curve[-1][0] - curve[0][0])


def findings(result: dict) -> list[str]:
    """What the numbers say, in sentences, whichever way they go."""
    runs = result["runs"]
    b, c = runs["wsp_scratch"], runs["maws"]
    lines = []
    faster = c["mean_wsp_loss"] < b["mean_wsp_loss"]
    lines.append(
        f"WSP convergence: MAWS (c) {'converged faster than' if faster else 'did not converge faster than'} WSP from "
        f"scratch (b): mean WSP loss over the run {c['mean_wsp_loss']:.3f} vs {b['mean_wsp_loss']:.3f}, final "
        f"{c['final_loss']:.3f} vs {b['final_loss']:.3f}.")
    for metric, label in (("linear_probe_accuracy", "linear probe"), ("5_shot_accuracy", "5-shot")):
        best_pool = {}
        for name in RUNS:
            best_pool[name] = max(runs[name]["eval"][p].get(metric, float("nan")) for p in ("token", "avg"))
        if any(v != v for v in best_pool.values()):
            continue
        verdict = "better than" if best_pool["maws"] > best_pool["wsp_scratch"] else "not better than"
        lines.append(
            f"Transfer ({label}, best of class-token and average pooling): MAWS {best_pool['maws']:.1%}, WSP from "
            f"scratch {best_pool['wsp_scratch']:.1%}, MAE only {best_pool['mae']:.1%}: MAWS is {verdict} WSP from "
            f"scratch.")
    holds = faster and all(
        max(runs["maws"]["eval"][p].get(m, 0) for p in ("token", "avg"))
        > max(runs["wsp_scratch"]["eval"][p].get(m, 0) for p in ("token", "avg"))
        for m in ("linear_probe_accuracy", "5_shot_accuracy"))
    lines.append(
        "At this scale the paper's claim (faster convergence and better transfer for MAWS) "
        + ("holds on every measure above." if holds else "does not hold on every measure above; see the numbers.")
        + " One seed, a tiny model and a synthetic dataset: treat differences of a point or two as noise.")
    return lines


def write_markdown(result: dict, path: str, plot_name: str) -> None:
    s = result["settings"]
    shots = [int(k) for k in s["shots"].split(",") if k]
    header = "| run | steps | final train loss | linear probe (token / avg) | " + \
             " | ".join(f"{k}-shot (token / avg)" for k in shots) + " |"
    lines = [
        "# The MAWS study in miniature",
        "",
        f"Date {result['date']}, device {result['device']}, commit `{result['commit']}`"
        f"{' (QUICK MODE: plumbing check, not a result)' if s['quick'] else ''}.",
        "",
        f"Data: `mawstron data synth` ({s['images']} training images with noisy hashtags, {s['size']} px, "
        f"{result['data'].get('vocab_size')} hashtags kept in the vocabulary; {s['eval_images']} labelled images in "
        f"each of the probe-train and test splits). Model: `vit_tiny` on {s['ranks']} ranks (DeepSpeed ZeRO-3, "
        f"{s['precision']}), micro-batch "
        f"{s['micro_batch']} per rank. (a) MAE {s['mae_steps']} steps; (b) and (c) WSP {s['wsp_steps']} steps each, "
        f"same data, seed and schedule; (c) starts from (a)'s encoder. Evaluation: frozen features, linear probe "
        f"(L2 chosen on a hold-out) and k-shot logistic regression averaged over {s['draws']} draws.",
        "",
        header,
        "|" + "---|" * (4 + len(shots)),
    ]
    for name, label in RUNS.items():
        r = result["runs"][name]
        ev = r["eval"]
        cells = [label, str(s["mae_steps"] if name == "mae" else s["wsp_steps"]), f"{r['final_loss']:.3f}",
                 f"{ev['token']['linear_probe_accuracy']:.1%} / {ev['avg']['linear_probe_accuracy']:.1%}"]
        cells += [f"{ev['token'][f'{k}_shot_accuracy']:.1%} / {ev['avg'][f'{k}_shot_accuracy']:.1%}" for k in shots]
        lines.append("| " + " | ".join(cells) + " |")
    chance = 1.0 / result["runs"]["mae"]["eval"]["token"]["num_classes"]
    lines += ["", f"Chance accuracy: {chance:.1%}. Final train loss is MAE's reconstruction loss for (a) and the "
              f"WSP cross-entropy for (b) and (c).", "", "## What it shows", ""]
    lines += [f"- {x}" for x in result["findings"]]
    lines += ["", f"![WSP loss curves and accuracies]({plot_name})", "",
              "Wall time: " + ", ".join(f"{RUNS[n]} {result['runs'][n]['seconds']:.0f} s" for n in RUNS)
              + f"; evaluation {result['eval_seconds']:.0f} s.", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def write_plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, colour in (("wsp_scratch", "tab:orange"), ("maws", "tab:blue")):
        steps, losses = zip(*runs[name]["loss_curve"])
        ax1.plot(steps, losses, label=RUNS[name], color=colour)
    ax1.set_xlabel("WSP step")
    ax1.set_ylabel("WSP loss (softmax cross-entropy)")
    ax1.set_title("WSP convergence")
    ax1.legend()
    shots = [int(k) for k in result["settings"]["shots"].split(",") if k]
    metrics = [("linear_probe_accuracy", "linear probe")] + [(f"{k}_shot_accuracy", f"{k}-shot") for k in shots]
    width = 0.8 / len(RUNS)
    for i, (name, colour) in enumerate(zip(RUNS, ("tab:green", "tab:orange", "tab:blue"))):
        values = [max(runs[name]["eval"][p][m] for p in ("token", "avg")) for m, _ in metrics]
        ax2.bar([j + i * width for j in range(len(metrics))], values, width, label=RUNS[name], color=colour)
    ax2.set_xticks([j + width for j in range(len(metrics))], [label for _, label in metrics])
    ax2.set_ylabel("accuracy (best of token / avg pooling)")
    ax2.set_title("Transfer on the held-out split")
    ax2.set_ylim(0, 1)
    ax2.legend(fontsize=8)
    fig.suptitle(f"MAWS study in miniature: {result['device']}, {result['date'][:10]}, commit {result['commit']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    from mawstron.parallel.bench import git_commit

    args = parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    os.makedirs(args.results, exist_ok=True)
    data_dir = os.path.join(args.work_dir, "data")
    t0 = time.time()
    data = make_data(args, data_dir)
    print(f"[study] data in {data_dir} ({time.time() - t0:.0f} s)", flush=True)
    shards = os.path.join(data_dir, "train-*.tar")
    common = ["data.source=shards", f"data.shards={shards}", f"data.loader={args.loader}",
              f"train.micro_batch={args.micro_batch}", f"train.seed={args.seed}", "train.log_every=5",
              "checkpoint.keep_last=1", f"parallel.precision={args.precision}"]
    wsp = common + [f"data.vocab={os.path.join(data_dir, 'vocab.json')}", f"train.steps={args.wsp_steps}",
                    f"checkpoint.every_steps={args.wsp_steps}"]
    runs = {}
    runs["mae"] = train(args, "mae", "vit_tiny_mae.py",
                        common + [f"train.steps={args.mae_steps}", f"checkpoint.every_steps={args.mae_steps}"])
    runs["wsp_scratch"] = train(args, "wsp_scratch", "vit_tiny_wsp.py", wsp + ["checkpoint.init_from="])
    runs["maws"] = train(args, "maws", "vit_tiny_wsp.py", wsp + [f"checkpoint.init_from={runs['mae']['checkpoint']}"])
    t_eval = time.time()
    for name in RUNS:
        print(f"[study] evaluating {RUNS[name]}", flush=True)
        runs[name]["eval"] = evaluate_run(args, runs[name], data_dir)
    for name in ("wsp_scratch", "maws"):
        runs[name]["mean_wsp_loss"] = area_under(runs[name]["loss_curve"])
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(),
        "commit": git_commit(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("work_dir", "results")},
        "data": data,
        "runs": runs,
        "eval_seconds": time.time() - t_eval,
    }
    result["findings"] = findings(result)
    stem = "study-quick" if args.quick else "study"
    with open(os.path.join(args.results, f"{stem}.json"), "w") as f:
        json.dump(result, f, indent=1)
    write_markdown(result, os.path.join(args.results, f"{stem}.md"), f"{stem}.png")
    if not args.no_plot:
        write_plot(result, os.path.join(args.results, f"{stem}.png"))
    print("\n".join(result["findings"]))
    print(f"[study] wrote {args.results}/{stem}.{{json,md{',png' if not args.no_plot else ''}}} "
          f"in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
