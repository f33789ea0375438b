"""The study's report: mean +- std over seeds for every arm and metric, what the numbers show, the table, the plot.

Used by study.py; a function of the result dict only, so a report can be rewritten from a saved study.json:

    python benchmarks/study_report.py benchmarks/results/study.json [--note "how this run was sized"]
"""

from __future__ import annotations

import json
import math
import os


def _stats(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n, "values": values}


def aggregate(result: dict) -> dict:
    """{arm: {quantity: {mean, std (sample, ddof=1), n, values}}} over the arm's seeds (over the seeds that have a
    metric, when only some do: e.g. zero-shot with --lit-seeds)."""
    out = {}
    for arm in result["arms"]:
        runs = [r for r in result["runs"] if r["arm"] == arm["name"]]
        if not runs:
            continue
        summary = {q: _stats([r[q] for r in runs]) for q in ("final_loss", "mean_loss", "seconds")}
        for metric in dict.fromkeys(m for r in runs for m in r["metrics"]):
            summary[metric] = _stats([r["metrics"][metric] for r in runs if metric in r["metrics"]])
        summary["steps"] = runs[0]["steps"]
        out[arm["name"]] = summary
    return out


def pm(s: dict, pct: bool = True) -> str:
    if pct:
        return f"{s['mean']:.1%} ± {s['std']:.1%}"
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def _diff(a: dict, b: dict) -> tuple[float, float]:
    """a - b and its standard error (independent seeds)."""
    return a["mean"] - b["mean"], math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])


def _verdict(a: dict, b: dict, better: str, worse: str, pct: bool = True) -> str:
    d, se = _diff(a, b)
    fmt = (lambda x: f"{x:+.1%}") if pct else (lambda x: f"{x:+.3f}")
    if se == 0 or abs(d) <= 2 * se:
        return f"within noise (difference {fmt(d)}, 2 standard errors {fmt(2 * se)[1:]})"
    return f"{better if d > 0 else worse} (difference {fmt(d)} > 2 standard errors {fmt(2 * se)[1:]})"


def _width_of(settings: dict) -> int:
    """The embed_dim of the study's own model (its arms without a -wW suffix)."""
    from mawstron.core import PRESETS

    return settings.get("embed_dim") or PRESETS.get(settings["preset"], {}).get("embed_dim", 0)


def _per_seed(result: dict, a: str, b: str, metric: str) -> dict | None:
    """Stats over seeds of arm a's metric minus arm b's (paired by seed: same data, seed and schedule)."""
    va = {r["seed"]: r["metrics"].get(metric) for r in result["runs"] if r["arm"] == a}
    vb = {r["seed"]: r["metrics"].get(metric) for r in result["runs"] if r["arm"] == b}
    diffs = [va[k] - vb[k] for k in sorted(va) if k in vb and va[k] is not None and vb[k] is not None]
    return _stats(diffs) if diffs else None


def _judge(a: dict, b: dict, strict: bool) -> tuple[str, bool, float, float]:
    """(verdict, reproduced, a - b, 2 standard errors) of the claim a > b (``strict``) or a >= b, against 2
    standard errors of the difference of the means."""
    d, se = _diff(a, b)
    if min(a["n"], b["n"]) < 2:
        return "untested (one seed: no error bar)", None, d, 0.0
    if d > 2 * se and se > 0:
        return "holds", True, d, 2 * se
    if d < -2 * se and se > 0:
        return "reversed", False, d, 2 * se
    if strict:
        return "not shown (within noise)", False, d, 2 * se
    return "holds (equal within noise)", True, d, 2 * se


ORDERINGS = (
    ("maws_gt_wsp", "MAWS > WSP at equal WSP steps (linear probe)"),
    ("maws_short_ge_wsp", "MAWS with 25% of the WSP steps >= WSP with 100% (linear probe)"),
    ("wsp_maws_gt_mae_probe", "WSP and MAWS > MAE on the linear probe"),
    ("maws_ge_mae_finetune", "MAWS >= MAE after fine-tuning"),
    ("maws_ge_wsp_zero_shot", "MAWS zero-shot >= WSP zero-shot (top-1)"),
    ("mae_benefit_grows_with_width", "the MAE benefit (MAWS - WSP, linear probe) is larger for the wider model"),
)


def orderings(result: dict) -> list[dict]:
    """Each of the paper's orderings: {key, claim, verdict, reproduced, figures}, or verdict "not measured" when the
    study lacks the arms or metrics it needs."""
    s, summary = result["settings"], result["summary"]
    fracs = s["fraction_list"]
    full, short = f"{max(fracs):g}", f"{min(fracs):g}"
    b, c, mae = summary.get(f"wsp_scratch@{full}"), summary.get(f"maws@{full}"), summary.get("mae")
    out = []

    def add(key, *comparisons, figures=None):
        """comparisons: (a stats, b stats, strict, label); the ordering holds when every comparison does."""
        claim = dict(ORDERINGS)[key]
        if any(x is None or y is None for x, y, _, _ in comparisons) or not comparisons:
            out.append({"key": key, "claim": claim, "verdict": "not measured", "reproduced": None, "figures": {}})
            return
        parts, figs, ok = [], dict(figures or {}), True
        for x, y, strict, label in comparisons:
            verdict, good, d, two_se = _judge(x, y, strict)
            ok = None if good is None or ok is None else ok and good
            parts.append(verdict if len(comparisons) == 1 else f"{label}: {verdict}")
            figs[label] = {"a": x["mean"], "b": y["mean"], "difference": d, "two_standard_errors": two_se, "n": x["n"],
                           "verdict": verdict}
        verdict = "; ".join(parts)
        out.append({"key": key, "claim": claim, "verdict": verdict, "reproduced": ok, "figures": figs})

    def m(arm, metric):
        return arm.get(metric) if arm else None

    add("maws_gt_wsp", (m(c, "linear_probe"), m(b, "linear_probe"), True, f"MAWS vs WSP at {max(fracs):.0%}"))
    cs = summary.get(f"maws@{short}")
    add("maws_short_ge_wsp", (m(cs, "linear_probe"), m(b, "linear_probe"), False,
                              f"MAWS at {min(fracs):.0%} vs WSP at {max(fracs):.0%}") if short != full else (None,) * 4)
    add("wsp_maws_gt_mae_probe", (m(b, "linear_probe"), m(mae, "linear_probe"), True, "WSP vs MAE"),
        (m(c, "linear_probe"), m(mae, "linear_probe"), True, "MAWS vs MAE"))
    add("maws_ge_mae_finetune", (m(c, "finetune_top1"), m(mae, "finetune_top1"), False, "MAWS vs MAE, fine-tuned"))
    add("maws_ge_wsp_zero_shot", (m(c, "zero_shot_top1"), m(b, "zero_shot_top1"), False, "MAWS vs WSP, zero-shot"))
    main_width = _width_of(s)
    benefits = {main_width: _per_seed(result, f"maws@{full}", f"wsp_scratch@{full}", "linear_probe")}
    for w in s.get("width_list", []):
        benefits[w] = _per_seed(result, f"maws@{full}-w{w}", f"wsp_scratch@{full}-w{w}", "linear_probe")
    widths = sorted(w for w, v in benefits.items() if v)
    comparisons = [(benefits[wide], benefits[narrow], True, f"width {wide} vs {narrow}")
                   for narrow, wide in zip(widths, widths[1:])]
    add("mae_benefit_grows_with_width", *comparisons,
        figures={f"benefit at width {w}": {"mean": benefits[w]["mean"], "std": benefits[w]["std"], "n": benefits[w]["n"]}
                 for w in widths})
    return out


def findings(result: dict) -> list[str]:
    """What the numbers say, in sentences, whichever way they go."""
    s, summary = result["settings"], result["summary"]
    fracs = s["fraction_list"]
    full = f"{max(fracs):g}"
    lines = []
    chance = 1.0 / result["data"]["num_classes"]
    b, c = summary.get(f"wsp_scratch@{full}"), summary.get(f"maws@{full}")
    mae = summary.get("mae")
    n = min(v["linear_probe"]["n"] for v in summary.values())
    if b and c:
        best = max(b["linear_probe"]["mean"], c["linear_probe"]["mean"])
        learned = best > 0.6
        lines.append(
            f"Learning: at {max(fracs):.0%} of the WSP steps the linear probe reaches {pm(b['linear_probe'])} for WSP "
            f"from scratch (b) and {pm(c['linear_probe'])} for MAWS (c), MAE alone {pm(mae['linear_probe'])}; "
            f"chance is {chance:.1%}. " + (
                "The WSP arms learned (over 60%)." if learned else
                f"The WSP arms stayed below 60% (best mean {best:.1%}, {best / chance:.1f}x chance): the encoders are "
                f"partly trained, so the comparisons below are between partly trained encoders."))
        lines.append(
            f"WSP convergence: mean WSP loss over the run {pm(c['mean_loss'], False)} for (c) vs "
            f"{pm(b['mean_loss'], False)} for (b), final {pm(c['final_loss'], False)} vs {pm(b['final_loss'], False)}: "
            f"(c)'s mean loss is "
            + _verdict(c["mean_loss"], b["mean_loss"], "higher (slower)", "lower (faster)", pct=False) + ".")
    for f in fracs:
        bf, cf = summary.get(f"wsp_scratch@{f:g}"), summary.get(f"maws@{f:g}")
        if bf and cf:
            lines.append(f"{f:.0%} of the WSP steps: linear probe (c) {pm(cf['linear_probe'])} vs (b) "
                         f"{pm(bf['linear_probe'])}: (c) is "
                         + _verdict(cf["linear_probe"], bf["linear_probe"], "better", "worse") + ".")
    if b:
        reach = [f for f in fracs if summary.get(f"maws@{f:g}")
                 and summary[f"maws@{f:g}"]["linear_probe"]["mean"] >= b["linear_probe"]["mean"]]
        lines.append("Fewer WSP steps: " + (
            f"MAWS with {min(reach):.0%} of the steps matches or beats WSP from scratch with {max(fracs):.0%} "
            f"on the mean linear probe (" + _verdict(summary[f"maws@{min(reach):g}"]["linear_probe"],
                                                     b["linear_probe"], "better", "worse") + ")."
            if reach else
            f"no MAWS length matches WSP from scratch with {max(fracs):.0%} of the steps (linear probe, means)."))
    if b and c and "linear_probe_tail_classes" in c:
        lines.append(
            f"Head vs tail classes (linear probe, {max(fracs):.0%} steps): (b) head "
            f"{pm(b['linear_probe_head_classes'])}, "
            f"tail {pm(b['linear_probe_tail_classes'])}; (c) head {pm(c['linear_probe_head_classes'])}, tail "
            f"{pm(c['linear_probe_tail_classes'])}. On tail classes (c) is "
            + _verdict(c["linear_probe_tail_classes"], b["linear_probe_tail_classes"], "better", "worse")
            + "; on head classes "
            + _verdict(c["linear_probe_head_classes"], b["linear_probe_head_classes"], "better", "worse") + ".")
    shots = [k for k in (int(x) for x in s["shots"].split(",") if x) if b and f"{k}_shot" in b]
    for k in shots:
        lines.append(f"{k}-shot: (c) {pm(c[f'{k}_shot'])} vs (b) {pm(b[f'{k}_shot'])}: (c) is "
                     + _verdict(c[f"{k}_shot"], b[f"{k}_shot"], "better", "worse") + ".")
    if b and c and "zero_shot_top1" in b and "zero_shot_top1" in c:
        text = (f"Zero-shot after {s.get('lit_steps')} LiT steps on the frozen encoder ({max(fracs):.0%} WSP steps): "
                f"top-1 (c) {pm(c['zero_shot_top1'])} vs (b) {pm(b['zero_shot_top1'])}")
        if mae and "zero_shot_top1" in mae:
            text += f", (a) MAE alone {pm(mae['zero_shot_top1'])}"
        text += (f"; chance {chance:.1%}. (c) vs (b): "
                 + _verdict(c["zero_shot_top1"], b["zero_shot_top1"], "better", "worse"))
        if mae and "zero_shot_top1" in mae:
            text += "; (c) vs (a): " + _verdict(c["zero_shot_top1"], mae["zero_shot_top1"], "better", "worse")
        lines.append(text + ".")
    r = summary.get("maws_sqrt@1")
    if r and c:
        text = (f"Square-root re-sampling, (c) with vs without: linear probe {pm(r['linear_probe'])} vs "
                f"{pm(c['linear_probe'])} ({_verdict(r['linear_probe'], c['linear_probe'], 'better', 'worse')})")
        if "linear_probe_tail_classes" in r:
            text += (f"; tail classes {pm(r['linear_probe_tail_classes'])} vs {pm(c['linear_probe_tail_classes'])} "
                     f"({_verdict(r['linear_probe_tail_classes'], c['linear_probe_tail_classes'], 'better', 'worse')})")
        lines.append(text + ".")
    ft = [(lab, summary[a]["finetune_top1"]) for a, lab in (("mae", "(a)"), (f"wsp_scratch@{full}", "(b)"),
                                                              (f"maws@{full}", "(c)"))
          if a in summary and "finetune_top1" in summary[a]]
    if ft:
        lines.append(f"Fine-tuning ({s.get('finetune_steps')} steps on the labelled probe-train split, whole encoder): "
                     "test top-1 " + ", ".join(f"{lab} {pm(v)}" for lab, v in ft) + ".")
    for w in s.get("width_list", []):
        bw, cw, aw = (summary.get(f"{p}-w{w}") for p in (f"wsp_scratch@{full}", f"maws@{full}", "mae"))
        if bw and cw and aw:
            lines.append(f"Width {w} (the model-size axis): linear probe (a) {pm(aw['linear_probe'])}, (b) "
                         f"{pm(bw['linear_probe'])}, (c) {pm(cw['linear_probe'])}; (c) vs (b) "
                         + _verdict(cw["linear_probe"], bw["linear_probe"], "better", "worse") + ".")
    lines.append(f"{n} seeds per arm; ± is the sample standard deviation over seeds; a difference counts only when "
                 f"it exceeds 2 standard errors of the difference of the means (about a 95% test).")
    return lines


def write_markdown(result: dict, path: str, plot_name: str, note: str = "") -> None:
    s, summary = result["settings"], result["summary"]
    shots = [int(k) for k in s["shots"].split(",") if k]
    data = result["data"]
    tail = data.get("tail", {})
    from mawstron.core import SIZE_FIELDS

    model = s["preset"] + "".join(f", {k} {s[k]}" for k in SIZE_FIELDS if s.get(k))
    lines = [
        "# The MAWS study in miniature, with error bars",
        "",
        f"Date {result['date']}, device {result['device']}, commit `{result['commit']}`"
        f"{' (QUICK MODE: plumbing check, not a result)' if s['quick'] else ''}; "
        f"{s['seeds']} seeds per arm, wall time {result['seconds'] / 60:.0f} min.",
        "",
    ]
    if note:
        lines += [note, ""]
    lines += [
        f"Data: `mawstron data synth --tail {s['tail']} --scene {s.get('scene', 'web')}` ({s['images']} training "
        f"images with noisy hashtags, "
        f"{s['size']} px, {data.get('vocab_size')} hashtags in the vocabulary; {s['eval_images']} class-balanced "
        f"labelled images in each of the probe-train and test splits, {data['num_classes']} classes). Head classes: "
        f"{', '.join(tail.get('head_classes', [])) or '-'}; tail classes: "
        f"{', '.join(tail.get('tail_classes', [])) or '-'}. "
        f"Model: `{model}` on {s['ranks']} rank(s) (DeepSpeed ZeRO-3, {s['precision']}), "
        f"micro-batch {s['micro_batch']}. "
        f"(a) MAE {s['mae_steps']} steps; WSP {s['wsp_steps']} steps at 100% (lr {s['wsp_lr']:g}, warmup 10%, cosine"
        + (f", crops of at least {s['min_crop_area']:.0%} of the image" if s.get("min_crop_area") else "") + "), "
        f"(b) and (c) with the same data, seeds and schedule; (c) starts from the same seed's (a). Evaluation: frozen "
        f"features ({s['pool']} pooling), linear probe (L2 chosen on a hold-out), k-shot logistic regression "
        f"averaged over {s['draws']} draws"
        + (f"; zero-shot: {s['lit_steps']} LiT steps (recipes/vit_tiny_lit.py, a small text tower on the captions, "
           f"encoder frozen) for {', '.join(s['lit_arm_list'])} only"
           + (f", first {s['lit_seeds']} seed(s)" if s.get("lit_seeds") else "")
           + ", then class-name prompts on the test split" if s.get("lit_steps") else "")
        + ". Cells: mean ± std over seeds.",
        "",
    ]
    extra = [c for c in ("finetune_top1", "zero_shot_top1", "zero_shot_top5") if any(c in a for a in summary.values())]
    cols = ["linear_probe", "linear_probe_head_classes", "linear_probe_tail_classes"] + [f"{k}_shot" for k in shots]
    cols += extra
    names = {"linear_probe": "linear probe", "linear_probe_head_classes": "head classes",
             "linear_probe_tail_classes": "tail classes", "zero_shot_top1": "zero-shot top-1",
             "zero_shot_top5": "zero-shot top-5", "finetune_top1": "fine-tuned top-1"} | {
                 f"{k}_shot": f"{k}-shot" for k in shots}
    lines.append("| arm | steps | final train loss | " + " | ".join(names[c] for c in cols) + " |")
    lines.append("|" + "---|" * (3 + len(cols)))
    for arm in result["arms"]:
        a = summary.get(arm["name"])
        if not a:
            continue
        cells = [arm["label"], str(a["steps"]), pm(a["final_loss"], False)]
        cells += [pm(a[c]) if c in a else "-" for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Chance accuracy: {1 / data['num_classes']:.1%}. Final train loss is MAE's reconstruction loss "
              f"for (a) and the WSP cross-entropy for the others; the re-sampled arm's is measured on its own "
              f"stream, where tail tags weigh more, so it is not comparable with the others'.", "",
              "## What it shows", ""]
    lines += [f"- {x}" for x in result["findings"]]
    if result.get("orderings"):
        lines += ["", "## The paper's orderings", "",
                  "Each ordering the paper reports (Singh et al., ICCV 2023), tested here against 2 standard errors of the "
                  "difference of the means (the model-size one: of the per-seed MAWS - WSP differences).", "",
                  "| ordering in the paper | here | reproduced |", "|---|---|---|"]
        for o in result["orderings"]:
            figs = "; ".join(
                f"{k}: {v['verdict']}, {v['a']:.1%} vs {v['b']:.1%} (difference {v['difference']:+.1%}, 2 SE "
                f"{v['two_standard_errors']:.1%})" if "a" in v else f"{k}: {v['mean']:+.1%} ± {v['std']:.1%}"
                for k, v in o["figures"].items())
            yes = {True: "yes", False: "**no**", None: "-"}[o["reproduced"]]
            lines.append(f"| {o['claim']} | {figs or o['verdict']} | {yes} |")
    lines += ["", f"![loss curves, WSP-length sweep, head/tail accuracy]({plot_name})", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def write_plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    s, summary = result["settings"], result["summary"]
    fracs = s["fraction_list"]
    full = f"{max(fracs):g}"
    fig, (ax1, ax2, ax3, ax4) = plt.subplots(1, 4, figsize=(20, 4.2))
    colours = {"wsp_scratch": "tab:orange", "maws": "tab:blue", "maws_sqrt": "tab:purple"}
    for prefix, label in (("wsp_scratch", "(b) WSP from scratch"), ("maws", "(c) MAWS"),
                          ("maws_sqrt", "(c) MAWS + sqrt re-sampling")):
        curves = [r["loss_curve"] for r in result["runs"] if r["arm"] == f"{prefix}@{full}"
                  or (prefix == "maws_sqrt" and r["arm"] == "maws_sqrt@1")]
        if not curves:
            continue
        steps = [st for st, _ in curves[0]]
        losses = np.array([[loss for _, loss in c][:len(steps)] for c in curves if len(c) >= len(steps)])
        mean, std = losses.mean(0), losses.std(0, ddof=1) if len(losses) > 1 else np.zeros(len(steps))
        ax1.plot(steps, mean, label=label, color=colours[prefix])
        ax1.fill_between(steps, mean - std, mean + std, color=colours[prefix], alpha=0.2)
    ax1.set_xlabel("WSP step")
    ax1.set_ylabel("WSP loss (mean ± std over seeds)")
    ax1.set_title("WSP convergence (100% steps)")
    ax1.legend(fontsize=8)
    for prefix, label in (("wsp_scratch", "(b) WSP from scratch"), ("maws", "(c) MAWS")):
        pts = [(f, summary[f"{prefix}@{f:g}"]["linear_probe"]) for f in fracs if f"{prefix}@{f:g}" in summary]
        if pts:
            ax2.errorbar([f * s["wsp_steps"] for f, _ in pts], [p["mean"] for _, p in pts],
                         yerr=[p["std"] for _, p in pts], marker="o", capsize=4, label=label, color=colours[prefix])
    if "maws_sqrt@1" in summary:
        p = summary["maws_sqrt@1"]["linear_probe"]
        ax2.errorbar([s["wsp_steps"]], [p["mean"]], yerr=[p["std"]], marker="s", capsize=4, color=colours["maws_sqrt"],
                     label="(c) MAWS + sqrt re-sampling")
    if "mae" in summary:
        p = summary["mae"]["linear_probe"]
        ax2.axhline(p["mean"], color="tab:green", ls="--", label=f"(a) MAE only ({p['mean']:.0%})")
    ax2.axhline(1 / result["data"]["num_classes"], color="grey", ls=":", label="chance")
    ax2.set_xlabel("WSP steps")
    ax2.set_ylabel("linear probe accuracy (mean ± std)")
    ax2.set_title("WSP-length sweep")
    ax2.set_ylim(0, 1)
    ax2.legend(fontsize=8)
    bars = [(n, lab) for n, lab in (("mae", "(a)"), (f"wsp_scratch@{full}", "(b)"), (f"maws@{full}", "(c)"),
                                    ("maws_sqrt@1", "(c) sqrt")) if n in summary]
    width = 0.38
    for k, (group, colour) in enumerate((("head", "tab:gray"), ("tail", "tab:red"))):
        key = f"linear_probe_{group}_classes"
        vals = [summary[n].get(key) for n, _ in bars]
        if any(v is None for v in vals):
            continue
        ax3.bar([i + k * width for i in range(len(bars))], [v["mean"] for v in vals], width,
                yerr=[v["std"] for v in vals], capsize=4, color=colour, label=f"{group} classes")
    ax3.set_xticks([i + width / 2 for i in range(len(bars))], [lab for _, lab in bars])
    ax3.set_ylabel("linear probe accuracy (mean ± std)")
    ax3.set_title("Head vs tail classes (100% WSP steps)")
    ax3.set_ylim(0, 1)
    ax3.legend(fontsize=8)
    # the model-size axis: (a), (b), (c) at 100% of the WSP steps per width
    widths = sorted([(_width_of(s), "")] + [(w, f"-w{w}") for w in s.get("width_list", [])])
    for k, (prefix, label) in enumerate((("mae", "(a) MAE"), (f"wsp_scratch@{full}", "(b) WSP"),
                                         (f"maws@{full}", "(c) MAWS"))):
        vals = [summary.get(prefix + suffix, {}).get("linear_probe") for _, suffix in widths]
        if any(v is None for v in vals):
            continue
        ax4.bar([i + k * 0.27 for i in range(len(widths))], [v["mean"] for v in vals], 0.27,
                yerr=[v["std"] for v in vals], capsize=4, label=label,
                color=("tab:green", colours["wsp_scratch"], colours["maws"])[k])
    ax4.set_xticks([i + 0.27 for i in range(len(widths))], [f"width {w}" for w, _ in widths])
    ax4.set_ylabel("linear probe accuracy (mean ± std)")
    ax4.set_title("Model size (100% WSP steps)")
    ax4.set_ylim(0, 1)
    ax4.legend(fontsize=8)
    fig.suptitle(f"MAWS study in miniature, {s['seeds']} seeds: {result['device']}, {result['date'][:10]}, "
                 f"commit {result['commit']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    import argparse

    cli = argparse.ArgumentParser(description="rewrite study.md/.png (and the summary in study.json) from study.json")
    cli.add_argument("json")
    cli.add_argument("--note", default="", help="a paragraph put under the header (e.g. how this run was sized)")
    opts = cli.parse_args()
    with open(opts.json) as f:
        saved = json.load(f)
    stem = os.path.splitext(opts.json)[0]
    saved["summary"] = aggregate(saved)
    saved["findings"] = findings(saved)
    saved["orderings"] = orderings(saved)
    saved["num_classes"] = saved["data"]["num_classes"]
    if opts.note:
        saved["note"] = opts.note
    with open(opts.json, "w") as f:
        json.dump(saved, f, indent=1)
    write_markdown(saved, stem + ".md", os.path.basename(stem) + ".png", note=saved.get("note", ""))
    write_plot(saved, stem + ".png")
