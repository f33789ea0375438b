"""`make study` end to end in quick mode: real synthetic shards, three real two-rank trainings, evaluation, report.

Quick mode checks the plumbing (every run trains, the handoff happens, every report file is written and
consistent with the runs' own metrics), not the paper's claim: that needs the full `make study`.
"""

import json
import os
import subprocess
import sys

import pytest

from distributed_runs import REPO, env

pytestmark = pytest.mark.multirank


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    work = tmp_path_factory.mktemp("study")
    results = work / "results"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "study.py"), "--quick",
                           "--work-dir", str(work / "runs"), "--results", str(results)],
                          cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return work, results, proc.stdout


def test_study_writes_table_plot_and_json(study):
    work, results, _ = study
    with open(results / "study-quick.json") as f:
        result = json.load(f)
    assert set(result["runs"]) == {"mae", "wsp_scratch", "maws"}
    for name, run in result["runs"].items():
        for pool in ("token", "avg"):
            ev = run["eval"][pool]
            assert 0.0 <= ev["linear_probe_accuracy"] <= 1.0 and 0.0 <= ev["5_shot_accuracy"] <= 1.0
            assert ev["test_images"] > 0 and ev["num_classes"] >= 2
        # the reported curve is the run's own metrics file
        with open(os.path.join(run["run_dir"], "metrics.jsonl")) as f:
            losses = [json.loads(line)["loss"] for line in f if '"loss"' in line]
        assert [loss for _, loss in run["loss_curve"]] == losses
    # (b) and (c) differ only by the initialisation: same number of steps, different starting losses
    b, c = result["runs"]["wsp_scratch"], result["runs"]["maws"]
    assert [s for s, _ in b["loss_curve"]] == [s for s, _ in c["loss_curve"]]
    assert b["first_loss"] != c["first_loss"]
    md = (results / "study-quick.md").read_text()
    for label in ("(a) MAE only", "(b) WSP from scratch", "(c) MAWS"):
        assert label in md
    assert "QUICK MODE" in md and result["commit"] in md
    assert (results / "study-quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_the_maws_run_loaded_the_mae_encoder(study):
    work, _, _ = study
    assert "[mawstron] init_from " in (work / "runs" / "maws.log").read_text()
    assert "[mawstron] init_from " not in (work / "runs" / "wsp_scratch.log").read_text()
