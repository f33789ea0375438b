"""Optimizer groups, lr schedule, activation checkpointing, checkpoint bookkeeping, recipes' dry runs."""

import glob
import json
import os
import runpy

import pytest
import torch

from mawstron.core import create_mae, create_vit
from mawstron.parallel.checkpoints import store as ckpt
from mawstron.parallel.engine.activation_checkpointing import apply_activation_checkpointing
from mawstron.parallel.config import OptimConfig
from mawstron.parallel.launcher.launch import dry_run_report
from mawstron.parallel.training.metrics import MetricsWriter
from mawstron.parallel.engine.optim import layer_id, lr_at, param_groups

RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")


def test_no_weight_decay_on_norms_biases_embeddings_and_tokens():
    model = create_mae("vit_micro", decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, fixed_pos_embed=False)
    groups = param_groups(model, OptimConfig(weight_decay=0.05), depth=2)
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    plain = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    assert {"pos_embed", "cls_token", "mask_token", "decoder_pos_embed", "blocks.0.norm1.weight",
            "blocks.0.attn.qkv.bias", "norm.weight"} <= plain
    assert {"blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight", "patch_embed.proj.weight"} <= decayed
    assert decayed.isdisjoint(plain)
    assert len(decayed | plain) == sum(1 for p in model.parameters() if p.requires_grad)


def test_layer_wise_lr_decay():
    model = create_vit("vit_micro", num_classes=3)
    groups = param_groups(model, OptimConfig(layer_decay=0.5), depth=2)
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["head.weight"] == 1.0 and scale["norm.weight"] == 1.0
    assert scale["blocks.1.mlp.fc1.weight"] == 0.5 and scale["blocks.0.mlp.fc1.weight"] == 0.25
    assert scale["patch_embed.proj.weight"] == 0.125 and scale["cls_token"] == 0.125
    assert layer_id("blocks.11.attn.qkv.weight", 12) == 12


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 100, 1.0, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_at(55, 100, 1.0, 10, 0.0) == pytest.approx(0.5)  # half-way through the cosine


@pytest.mark.parametrize("every", [1, 2])
def test_activation_checkpointing_keeps_names_and_gradients(every):
    torch.manual_seed(0)
    plain = create_mae("vit_micro", decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2)
    ckpt_model = create_mae("vit_micro", decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2)
    ckpt_model.load_state_dict(plain.state_dict())
    wrapped = apply_activation_checkpointing(ckpt_model, every)
    assert wrapped == (4 if every == 1 else 2)
    assert list(ckpt_model.state_dict()) == list(plain.state_dict())
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    for m in (plain, ckpt_model):
        m(imgs, noise=noise)[0].backward()
    for (n, a), (_, b) in zip(plain.named_parameters(), ckpt_model.named_parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, msg=n)


def test_checkpoint_bookkeeping_survives_a_torn_save(tmp_path):
    d = str(tmp_path)
    for step in (2, 4, 6):
        os.makedirs(os.path.join(d, ckpt.tag_for_step(step)))
        ckpt.finalize(d, ckpt.tag_for_step(step), step, {"model": {}}, keep_last=2, world_size=2)
    assert ckpt.complete_tags(d) == ["step_00000004", "step_00000006"]  # step 2 pruned
    assert ckpt.resolve_tag(d) == "step_00000006"
    # a save that died half-way: shards present, no COMPLETE marker, latest untouched
    os.makedirs(os.path.join(d, "step_00000008"))
    open(os.path.join(d, "step_00000008", "zero_pp_rank_0_mp_rank_00_model_states.pt"), "w").close()
    assert ckpt.resolve_tag(d) == "step_00000006"
    # even if something else pointed latest at the torn one, the newest complete checkpoint wins
    ckpt.write_atomic(os.path.join(d, "latest"), "step_00000008")
    assert ckpt.resolve_tag(d) == "step_00000006"
    with pytest.raises(FileNotFoundError, match="incomplete"):
        ckpt.resolve_tag(d, "step_00000008")
    with pytest.raises(FileNotFoundError, match="without --resume"):
        ckpt.resolve_tag(str(tmp_path / "nothing"))
    assert ckpt.read_marker(d, "step_00000006")["world_size"] == 2


def test_metrics_are_truncated_on_resume(tmp_path):
    w = MetricsWriter(str(tmp_path), enabled=True)
    for s in range(1, 6):
        w.write({"step": s, "loss": float(s)})
    w.close()
    MetricsWriter(str(tmp_path), enabled=True, resume_step=3).close()
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == [1, 2, 3]


@pytest.mark.parametrize("recipe", sorted(os.path.basename(p) for p in glob.glob(os.path.join(RECIPES, "*.py"))))
def test_every_recipe_validates_and_dry_runs_without_allocating(recipe):
    cfg = runpy.run_path(os.path.join(RECIPES, recipe), run_name="__test__")["CONFIG"]
    report = dry_run_report(cfg, gpus=64, gpu_mem_gib=80)
    assert "config valid" in report and "FITS" in report, report[-600:]
