"""Run configs: overrides, types, errors that name the key and the fix; the DeepSpeed config built from them."""

import pytest

from mawstron.parallel.config import ConfigError, RunConfig, apply_overrides, parse_set
from mawstron.parallel.engine.ds_config import build_ds_config


def test_overrides_are_typed():
    cfg = apply_overrides(RunConfig(), [], ["train.steps=200", "optim.base_lr=1e-3", "optim.betas=[0.9,0.99]",
                                            "parallel.overlap_comm=false", "mae.mask_ratio=0.5", "name=x"])
    assert cfg.train.steps == 200 and isinstance(cfg.train.steps, int)
    assert cfg.optim.base_lr == 1e-3 and cfg.optim.betas == (0.9, 0.99)
    assert cfg.parallel.overlap_comm is False and cfg.mae.mask_ratio == 0.5
    assert cfg.run_dir == "runs/x" and cfg.checkpoint_dir == "runs/x/checkpoints"


def test_yaml_then_set(tmp_path):
    f = tmp_path / "o.yaml"
    f.write_text("train:\n  steps: 50\n  micro_batch: 4\noptim:\n  weight_decay: 0.1\n")
    cfg = apply_overrides(RunConfig(), [str(f)], ["train.steps=60"])
    assert (cfg.train.steps, cfg.train.micro_batch, cfg.optim.weight_decay) == (60, 4, 0.1)


@pytest.mark.parametrize(
    "assignment,message",
    [
        ("train.step=3", "did you mean train.steps"),
        ("trian.steps=3", "did you mean train"),
        ("train.steps=abc", "train.steps expects an integer"),
        ("train.steps=1.5", "expects an integer"),
        ("optim.betas=0.9", "expects 2 values"),
        ("parallel.overlap_comm=maybe", "expects true or false"),
        ("mae.mask_ratio=1.5", "mask_ratio must be in"),
        ("model.preset=vit_q", "is not a preset"),
        ("train=3", "is a section"),
        ("train.stage=pretrain", "must be one of"),
        ("data.source=s3", "data.source must be one of"),
        ("steps", "expects KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key_and_the_fix(assignment, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(RunConfig(), [], [assignment])


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        apply_overrides(RunConfig(), [str(tmp_path / "missing.yaml")], [])
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        apply_overrides(RunConfig(), [str(f)], [])


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="init_from"):
        apply_overrides(RunConfig(), [], ["checkpoint.init_from=x"])  # default stage is mae
    with pytest.raises(ConfigError, match="not divisible"):
        apply_overrides(RunConfig(), [], ["model.num_heads=5"])


def test_parse_set_nests():
    assert parse_set(["a.b=1", "a.c=x", "d=2"]) == {"a": {"b": "1", "c": "x"}, "d": "2"}


def test_deepspeed_config_for_zero3():
    cfg = apply_overrides(RunConfig(), [], ["train.micro_batch=4", "train.grad_accum=3", "optim.grad_clip=1.0",
                                            "parallel.offload_optimizer=cpu"])
    ds = build_ds_config(cfg, world_size=8, width=1024)
    z = ds["zero_optimization"]
    assert ds["train_batch_size"] == 4 * 3 * 8 and ds["gradient_accumulation_steps"] == 3
    assert z["stage"] == 3 and z["overlap_comm"] and z["contiguous_gradients"]
    assert z["reduce_bucket_size"] == 1024**2 and z["stage3_prefetch_bucket_size"] == int(0.9 * 1024**2)
    assert z["stage3_param_persistence_threshold"] == 10 * 1024
    assert z["offload_optimizer"]["device"] == "cpu" and "offload_param" not in z
    assert ds["bf16"]["enabled"] and ds["gradient_clipping"] == 1.0
    fp32 = build_ds_config(apply_overrides(RunConfig(), [], ["parallel.precision=fp32"]), 1, 64)
    assert "bf16" not in fp32 and "fp16" not in fp32
