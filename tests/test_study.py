"""`make study` end to end in quick mode: a real long-tailed collection of the `things` scene, real one-rank
trainings of every arm for two seeds (the WSP-length sweep reduced to 100% to keep it short; its arms are checked
without training below), the model-size axis at a second width, the fine-tuning arm for two encoders, evaluation,
and a report whose mean +- std and orderings come from the runs' own numbers.

Quick mode checks the plumbing (every arm trains, the handoff and the re-sampling reach the trainer, every report
file is written and consistent with the runs), not the paper's claim: that needs the full `make study`.  LiT +
zero-shot (off in --quick by default) runs here for one arm and one seed, 2 steps, to keep CI short.
"""

import json
import os
import statistics
import subprocess
import sys

import pytest

from distributed_runs import REPO, env

pytestmark = pytest.mark.multirank


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    work = tmp_path_factory.mktemp("study")
    results = work / "results"
    stale = work / "runs" / "maws@1-seed0-lit" / "checkpoints" / "step_00000999"  # an earlier study's LiT run
    stale.mkdir(parents=True)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "study.py"), "--quick", "--seeds", "2",
                           "--fractions", "1", "--lit-steps", "2", "--lit-arms", "maws@1", "--lit-seeds", "1",
                           "--resample-arm", "--finetune-arms", "mae,maws@1",
                           "--work-dir", str(work / "runs"), "--results", str(results)],
                          cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:]
    with open(results / "study-quick.json") as f:
        return work, results, json.load(f)


def test_every_arm_runs_for_every_seed_and_the_summary_is_their_mean_and_std(study):
    work, results, result = study
    arms = [a["name"] for a in result["arms"]]
    assert arms == ["mae", "wsp_scratch@1", "maws@1", "maws_sqrt@1", "mae-w16", "wsp_scratch@1-w16", "maws@1-w16"]
    assert result["num_classes"] == result["data"]["num_classes"] == 48 and result["data"]["scene"] == "things"
    for name in arms:
        runs = [r for r in result["runs"] if r["arm"] == name]
        assert sorted(r["seed"] for r in runs) == [0, 1]
        for metric in ("linear_probe", "linear_probe_head_classes", "linear_probe_tail_classes", "1_shot"):
            values = [r["metrics"][metric] for r in runs]
            assert all(0.0 <= v <= 1.0 for v in values)
            s = result["summary"][name][metric]
            assert s["mean"] == pytest.approx(statistics.mean(values))
            assert s["std"] == pytest.approx(statistics.stdev(values))
        for run in runs:  # the reported curve is the run's own metrics file
            with open(os.path.join(run["run_dir"], "metrics.jsonl")) as f:
                losses = [json.loads(line)["loss"] for line in f if '"loss"' in line]
            assert [loss for _, loss in run["loss_curve"]] == losses
    steps = {name: result["summary"][name]["steps"] for name in arms}
    assert steps["wsp_scratch@1"] == steps["maws@1"] == steps["maws_sqrt@1"] == result["settings"]["wsp_steps"]
    md = (results / "study-quick.md").read_text()
    for label in ("(a) MAE only", "(b) WSP from scratch", "(c) MAWS", "sqrt re-sampling", "tail classes", "±"):
        assert label in md
    assert "QUICK MODE" in md and result["commit"] in md
    orderings = {o["key"]: o for o in result["orderings"]}
    assert len(orderings) == 6 and "The paper's orderings" in md
    for key in ("maws_gt_wsp", "wsp_maws_gt_mae_probe", "maws_ge_mae_finetune", "mae_benefit_grows_with_width"):
        o = orderings[key]
        assert o["reproduced"] in (True, False) and o["verdict"] and o["claim"] in md
    assert orderings["maws_short_ge_wsp"]["verdict"] == "not measured"  # one fraction only
    ft = orderings["maws_ge_mae_finetune"]["figures"]["MAWS vs MAE, fine-tuned"]
    assert ft["a"] == pytest.approx(result["summary"]["maws@1"]["finetune_top1"]["mean"])
    assert ft["b"] == pytest.approx(result["summary"]["mae"]["finetune_top1"]["mean"])
    assert "finetune_top1" not in result["summary"]["wsp_scratch@1"]  # only the --finetune-arms
    width = orderings["mae_benefit_grows_with_width"]["figures"]
    for w, suffix in ((32, ""), (16, "-w16")):
        benefit = [next(r["metrics"]["linear_probe"] for r in result["runs"] if r["arm"] == f"maws@1{suffix}"
                        and r["seed"] == seed) - next(r["metrics"]["linear_probe"] for r in result["runs"]
                                                      if r["arm"] == f"wsp_scratch@1{suffix}" and r["seed"] == seed)
                   for seed in (0, 1)]
        assert width[f"benefit at width {w}"]["mean"] == pytest.approx(statistics.mean(benefit))
    assert (results / "study-quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_handoff_and_resampling_reach_only_their_arms(study):
    work, _, _ = study
    runs = work / "runs"
    for seed in (0, 1):
        for name in ("maws@1", "maws_sqrt@1"):
            assert "[mawstron] init_from " in (runs / f"{name}-seed{seed}.log").read_text()
            assert f"mae-seed{seed}/checkpoints" in (runs / f"{name}-seed{seed}.log").read_text()
        narrow = (runs / f"maws@1-w16-seed{seed}.log").read_text()  # the size axis: its own MAE, at its own width
        assert f"mae-w16-seed{seed}/checkpoints" in narrow and "model.embed_dim=16" in narrow
        assert "model.embed_dim=32" in (runs / f"maws@1-seed{seed}.log").read_text()
        ft = (runs / f"maws@1-seed{seed}-ft.log").read_text()  # fine-tuning starts from the arm's own encoder
        assert f"maws@1-seed{seed}/checkpoints" in ft and "[mawstron] init_from " in ft
        assert "[mawstron] init_from " not in (runs / f"wsp_scratch@1-seed{seed}.log").read_text()
        assert "data.resample=sqrt" in (runs / f"maws_sqrt@1-seed{seed}.log").read_text()
        assert "data.resample=sqrt" not in (runs / f"maws@1-seed{seed}.log").read_text()


def test_zero_shot_after_lit_is_measured_for_the_lit_arms_only_and_replaces_an_earlier_lit_run(study):
    work, results, result = study
    lit_runs = [r for r in result["runs"] if "zero_shot_top1" in r["metrics"]]
    assert [(r["arm"], r["seed"]) for r in lit_runs] == [("maws@1", 0)]
    top1, top5 = lit_runs[0]["metrics"]["zero_shot_top1"], lit_runs[0]["metrics"]["zero_shot_top5"]
    assert 0.0 <= top1 <= top5 <= 1.0
    summary = result["summary"]["maws@1"]["zero_shot_top1"]
    assert summary["n"] == 1 and summary["mean"] == top1
    assert "zero_shot_top1" not in result["summary"]["wsp_scratch@1"]
    md = (results / "study-quick.md").read_text()
    assert "zero-shot top-1" in md and f"{top1:.1%}" in md
    log = (work / "runs" / "maws@1-seed0-lit" / "lit.log").read_text()
    assert "maws@1-seed0/checkpoints" in log  # the frozen tower is this arm's encoder ...
    assert "model.depth=1" in log and "model.embed_dim=32" in log  # ... at the size it was trained with
    assert "--overwrite: removed" in log  # a rerun replaces the earlier LiT run instead of being refused
    assert not (work / "runs" / "maws@1-seed0-lit" / "checkpoints" / "step_00000999").exists()


def test_sweep_arms_differ_only_in_steps_init_and_resampling():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import study as study_module

    args = study_module.parse_args(["--seeds", "3", "--wsp-steps", "400", "--mae-steps", "300",
                                    "--fractions", "0.25,0.5,1"])
    arms = {a.name: a for a in study_module.arms_for(args.fraction_list, True, args.width_list)}
    assert list(arms) == ["mae", "wsp_scratch@0.25", "wsp_scratch@0.5", "wsp_scratch@1", "maws@0.25", "maws@0.5",
                          "maws@1", "maws_sqrt@1", "mae-w96", "wsp_scratch@1-w96", "maws@1-w96"]
    assert [study_module.steps_of(args, arms[n]) for n in ("mae", "maws@0.25", "wsp_scratch@0.5", "maws@1")] == \
        [300, 100, 200, 400]

    def settings(name):
        return dict(o.split("=", 1) for o in study_module.overrides_for(args, arms[name], 2, "/d", "/mae/ckpt"))

    b, c, r = settings("wsp_scratch@1"), settings("maws@1"), settings("maws_sqrt@1")
    assert b["checkpoint.init_from"] == "" and c["checkpoint.init_from"] == r["checkpoint.init_from"] == "/mae/ckpt"
    assert c["data.resample"] == "none" and r["data.resample"] == "sqrt"
    same = {k for k in b if k not in ("checkpoint.init_from", "data.resample")}
    assert all(b[k] == c[k] == r[k] for k in same) and b["train.seed"] == "2"
    assert settings("maws@0.5")["train.steps"] == "200"
    assert "model.embed_dim" not in b and settings("maws@1-w96")["model.embed_dim"] == "96"
    assert {k: v for k, v in settings("maws@1-w96").items() if k != "model.embed_dim"} == c
    with pytest.raises(SystemExit):
        study_module.parse_args(["--fractions", "0,1"])
    assert args.lit_steps == 300 and args.lit_arm_list == ["mae", "wsp_scratch@1", "maws@1"]
    assert args.finetune_arm_list == ["mae", "wsp_scratch@1", "maws@1"] and args.scene == "things"
    with pytest.raises(SystemExit):
        study_module.parse_args(["--widths", "100"])  # not a multiple of vit_tiny's 3 heads
    assert study_module.parse_args(["--quick"]).lit_steps == 0
    with pytest.raises(SystemExit):
        study_module.parse_args(["--lit-arms", "maws@0.3"])
