"""Fine-tuning as MAE does it, on two CPU ranks under ZeRO-3: an ImageFolder as training data, mixup + cutmix +
random erasing + label smoothing, a weight EMA kept per partition, and top-1/top-5 on the held-out split during
training and at the end.  One launch covers all of it (each launch costs ~20 s here)."""

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from distributed_runs import read_metrics, run
from folder_helpers import make_image_folder
from mawstron.parallel.checkpoints.store import read_zero_checkpoint, tag_for_step

pytestmark = pytest.mark.multirank

DECAY = 0.5
STEPS = 3


def test_finetune_mixup_ema_and_periodic_eval(tmp_path):
    folder = str(tmp_path / "images")
    classes = make_image_folder(folder, images=24)
    run_dir = str(tmp_path / "ft")
    overrides = ["model.preset=vit_micro", "train.micro_batch=4", "train.log_every=1", f"train.steps={STEPS}",
                 "parallel.precision=fp32", "data.source=folder", f"data.shards={folder}", "data.num_workers=0",
                 f"output_dir={run_dir}", "checkpoint.every_steps=1", f"checkpoint.keep_last={STEPS}",
                 "checkpoint.init_from=", "finetune.mixup=0.8", "finetune.cutmix=1.0", "finetune.reprob=0.25",
                 f"finetune.ema_decay={DECAY}", "eval.every_steps=2", f"eval.test_shards={folder}",
                 "eval.batch_size=5"]
    out = run("vit_tiny_finetune.py", overrides, cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout[-4000:]
    records = read_metrics(run_dir)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_top1" in r]
    assert [r["step"] for r in train] == [1, 2, 3] and all(r["loss"] > 0 for r in train)
    assert [r["step"] for r in evals] == [2, 3]  # every 2 steps and at the end
    for r in evals:
        assert r["eval_images"] == 24  # every image once, over both ranks (24 = 2 ranks x 2 rounds + padding)
        assert 0 <= r["eval_top1"] <= r["eval_top5"] <= 1 and 0 <= r["ema_eval_top1"] <= r["ema_eval_top5"] <= 1
    assert "[mawstron] eval at step 3" in out.stdout

    # the EMA, exported at the end, is the average of the per-step weights the checkpoints hold
    ckpt = os.path.join(run_dir, "checkpoints")
    weights = [read_zero_checkpoint(ckpt, tag_for_step(s)) for s in range(1, STEPS + 1)]
    ema = load_file(os.path.join(run_dir, "ema.safetensors"))
    for step in range(1, STEPS + 1):  # each rank's partitions of the average, beside every checkpoint
        assert all(os.path.isfile(os.path.join(ckpt, tag_for_step(step), f"ema_rank{r}.pt")) for r in (0, 1))
    assert set(ema) == {k for k in weights[-1] if weights[-1][k].dtype.is_floating_point}
    assert ema["head.weight"].shape[0] == len(classes)
    moved = 0
    for name, value in ema.items():
        expected = DECAY ** 2 * weights[0][name] + (1 - DECAY) * (DECAY * weights[1][name] + weights[2][name])
        torch.testing.assert_close(value, expected.float(), rtol=1e-5, atol=1e-6, msg=name)
        moved += not torch.equal(weights[0][name], weights[2][name])
    assert moved > len(ema) // 2  # the weights did change between steps, so the average is not trivially equal
    with safe_open(os.path.join(run_dir, "ema.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["model"])["preset"] == "vit_micro"
