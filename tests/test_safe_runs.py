"""A newcomer's path, in one process: safe reruns, init_from checked before launch and skipped on resume, data synth
refusing a non-empty folder, one-line errors that name the input and the fix, the console flags."""

import os

import pytest

from mawstron.cli.main import main
from mawstron.parallel import RunConfig, apply_overrides
from mawstron.parallel.checkpoints import store as ckpt
from mawstron.parallel.config import ConfigError
from mawstron.parallel.launcher.launch import launch
from mawstron.parallel.launcher.preflight import (
    PreflightError,
    check_init_from,
    check_run_folder,
    clear_old_checkpoints,
    data_notice,
)
from mawstron.parallel.training.trainer import divergence_advice

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MAE = os.path.join(REPO, "recipes", "vit_tiny_mae.py")


@pytest.fixture(autouse=True)
def _restore_console_state(monkeypatch):
    """The CLI sets warning filters and DS_ACCELERATOR in its process: undo both after each test."""
    import warnings

    monkeypatch.setenv("DS_ACCELERATOR", os.environ.get("DS_ACCELERATOR", "cpu"))
    with warnings.catch_warnings():
        yield


def fake_checkpoint(run_dir, step=4) -> str:
    """What the trainer leaves after a save: step folder with COMPLETE, 'latest' naming it (no shards needed)."""
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    tag = ckpt.tag_for_step(step)
    os.makedirs(os.path.join(ckpt_dir, tag))
    ckpt.finalize(ckpt_dir, tag, step, {"model": {"preset": "vit_micro"}}, keep_last=2, world_size=2)
    return ckpt_dir


def cfg_for(run_dir, *sets):
    return apply_overrides(RunConfig(name="t"), [], [f"output_dir={run_dir}", *sets])


def test_a_run_folder_with_checkpoints_is_not_overwritten_without_resume_or_overwrite(tmp_path):
    run_dir = str(tmp_path / "run")
    check_run_folder(cfg_for(run_dir), overwrite=False)  # nothing there yet: fine
    ckpt_dir = fake_checkpoint(run_dir)
    with pytest.raises(PreflightError) as e:
        check_run_folder(cfg_for(run_dir), overwrite=False)
    assert "--resume" in str(e.value) and "--overwrite" in str(e.value) and ckpt_dir in str(e.value)
    check_run_folder(cfg_for(run_dir, "checkpoint.resume=true"), overwrite=False)
    check_run_folder(cfg_for(run_dir), overwrite=True)
    with pytest.raises(PreflightError, match="contradict"):
        check_run_folder(cfg_for(run_dir, "checkpoint.resume=true"), overwrite=True)
    with pytest.raises(PreflightError, match="no complete checkpoint .*drop --resume"):
        check_run_folder(cfg_for(str(tmp_path / "empty"), "checkpoint.resume=true"), overwrite=False)

    open(os.path.join(ckpt_dir, "notes.txt"), "w").close()  # not ours: --overwrite keeps it
    assert clear_old_checkpoints(cfg_for(run_dir)) == ["latest", "step_00000004"]
    assert os.listdir(ckpt_dir) == ["notes.txt"]


def test_mawstron_train_and_the_recipe_refuse_before_any_rank_starts(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    fake_checkpoint(run_dir)
    rc = main(["train", TINY_MAE, "--set", f"output_dir={run_dir}"])
    err = capsys.readouterr()
    assert rc == 2 and "--resume" in err.err and "--overwrite" in err.err and "starting" not in err.out
    # `deepspeed recipes/x.py` goes through launch() on every rank: the same refusal, before distributed init
    cfg = RunConfig(name="t")
    assert launch(cfg, ["--set", f"output_dir={run_dir}"]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err


def test_init_from_is_checked_before_launch_and_not_read_on_resume(tmp_path, capsys):
    missing = str(tmp_path / "no_such_mae" / "checkpoints")
    cfg = cfg_for(str(tmp_path / "wsp"), "train.stage=wsp", f"checkpoint.init_from={missing}")
    with pytest.raises(PreflightError) as e:
        check_init_from(cfg)
    assert missing in str(e.value) and "make demo" in str(e.value) and "checkpoint.init_from=" in str(e.value)
    mae_run = str(tmp_path / "mae")
    fake_checkpoint(mae_run)
    for source in (mae_run, os.path.join(mae_run, "checkpoints")):  # the run folder or its checkpoints/
        check_init_from(cfg_for(str(tmp_path / "wsp"), "train.stage=wsp", f"checkpoint.init_from={source}"))
    check_init_from(cfg_for(str(tmp_path / "wsp"), "train.stage=wsp", f"checkpoint.init_from={missing}",
                            "checkpoint.resume=true"))
    rc = main(["train", os.path.join(REPO, "recipes", "vit_tiny_wsp.py"), "--set", f"output_dir={tmp_path}/w",
               "--set", f"checkpoint.init_from={missing}"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_resume_builds_the_model_without_reading_init_from(tmp_path):
    from mawstron.parallel.engine.build import build_model

    sets = ["train.stage=wsp", "model.preset=vit_micro", "parallel.zero_stage=0", "parallel.activation_checkpointing=0",
            f"checkpoint.init_from={tmp_path}/gone"]
    model = build_model(cfg_for(str(tmp_path / "r"), *sets, "checkpoint.resume=true"), 5, {})
    assert model.head.out_features == 5
    with pytest.raises(FileNotFoundError, match="gone"):
        build_model(cfg_for(str(tmp_path / "r"), *sets), 5, {})


def test_recipe_defaults_name_what_make_demo_writes():
    import re

    import runpy

    makefile = open(os.path.join(REPO, "Makefile")).read()
    demo_dir = re.search(r"^DEMO_DIR \?= (\S+)", makefile, re.M).group(1)
    assert "output_dir=$(DEMO_DIR)/mae" in makefile and "output_dir=$(DEMO_DIR)/wsp" in makefile
    wsp = runpy.run_path(os.path.join(REPO, "recipes", "vit_tiny_wsp.py"), run_name="x")["CONFIG"]
    finetune = runpy.run_path(os.path.join(REPO, "recipes", "vit_tiny_finetune.py"), run_name="x")["CONFIG"]
    assert wsp.checkpoint.init_from == f"{demo_dir}/mae/checkpoints"
    assert finetune.checkpoint.init_from == f"{demo_dir}/wsp/checkpoints"
    assert finetune.data.shards.startswith(f"{demo_dir}/data/")


def test_data_synth_refuses_a_non_empty_folder_and_overwrite_clears_its_old_shards(tmp_path, capsys):
    out = str(tmp_path / "data")
    args = ["data", "synth", "--out", out, "--images", "20", "--size", "16", "--eval-images", "4", "--shard-size", "10"]
    assert main(args[:5] + ["30"] + args[6:]) == 0  # three train shards
    open(os.path.join(out, "mine.txt"), "w").close()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err and os.path.exists(os.path.join(out, "train-000002.tar"))
    assert main(args + ["--overwrite"]) == 0
    names = sorted(os.listdir(out))
    assert "train-000002.tar" not in names and "mine.txt" in names
    assert [n for n in names if n.startswith("train-")] == ["train-000000.tar", "train-000001.tar"]


def test_divergence_advice_names_a_checkpoint_that_exists(tmp_path):
    ckpt_dir = str(tmp_path / "checkpoints")
    advice = divergence_advice(ckpt_dir)
    assert "no checkpoint was saved" in advice and "--overwrite" in advice and "latest" not in advice
    fake_checkpoint(str(tmp_path))
    advice = divergence_advice(ckpt_dir)
    assert os.path.join(ckpt_dir, "step_00000004") in advice and "--resume" in advice


def test_malformed_yaml_is_one_line_naming_the_file_and_where(tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text("train:\n  steps: [1, 2\n  micro_batch: 3\n")
    with pytest.raises(ConfigError) as e:
        apply_overrides(RunConfig(), [str(bad)], [])
    message = str(e.value)
    assert "\n" not in message and str(bad) in message and "line" in message and "not valid YAML" in message
    with pytest.raises(ConfigError, match="optim.betas expects 2 values"):
        apply_overrides(RunConfig(), [], ["optim.betas=[0.9,"])


@pytest.mark.parametrize("flag", ["--gpus", "--micro-batch", "--gpu-mem-gib"])
def test_plan_rejects_non_positive_sizes(flag, capsys):
    assert main(["plan", "--model", "vit_b16", flag, "0"]) == 2  # a usage error: exit 2, one line on stderr
    assert f"{flag} must be positive" in capsys.readouterr().err


def test_consolidate_and_eval_name_the_input_and_the_fix(tmp_path, capsys):
    assert main(["consolidate", str(tmp_path), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "run folder" in err and "resum" not in err
    assert main(["eval", "--checkpoint", str(tmp_path), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "data.shards" not in err and "eval-train-*.tar" in err


def test_version_and_help_show_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("mawstron ")
    for argv, flags in ((["train", "--help"], ("--set", "--resume", "--overwrite", "--verbose", "--dry-run")),
                        (["bench", "--help"], ("--recipe", "--model", "--micro-batch", "--steps", "--out"))):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert all(f in out for f in flags), (argv, out)


def test_synthetic_data_is_announced():
    assert "random tensors" in data_notice(RunConfig(name="t"))
    assert data_notice(apply_overrides(RunConfig(), [], ["data.source=shards", "data.shards=x.tar"])) is None


def test_quiet_console_hides_known_future_warnings_unless_verbose(monkeypatch):
    import warnings

    from mawstron.parallel import console

    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        console.quiet_third_party()
        warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated. Use x.", FutureWarning)
        warnings.warn("something of ours", FutureWarning)
    assert [str(w.message) for w in caught] == ["something of ours"]
    assert console.launcher_log_args() == ["--log_level", "warning"]
    assert console.launcher_log_args(True) == []


def test_benchmarks_write_to_runs_unless_out_says_otherwise(tmp_path, monkeypatch):
    import importlib.util
    import sys

    from mawstron.parallel.launcher import bench

    assert bench.RESULTS_DIR.startswith("runs/")
    monkeypatch.syspath_prepend(os.path.join(REPO, "benchmarks"))
    for name in ("_bench_common", "study"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    spec = importlib.util.spec_from_file_location("_bench_common", os.path.join(REPO, "benchmarks", "_bench_common.py"))
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    monkeypatch.setattr(common, "REPO", str(tmp_path))
    assert common.write_json({"x": 1}, None, "kernels").startswith(str(tmp_path / "runs" / "benchmarks"))
    assert common.write_json({"x": 1}, str(tmp_path / "mine.json"), "kernels") == str(tmp_path / "mine.json")
    import study

    assert study.parse_args([]).results == os.path.join(REPO, "runs", "study", "results")
    assert "--results benchmarks/results" in open(os.path.join(REPO, "Makefile")).read()  # `make study`: on purpose
