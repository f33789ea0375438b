"""MAE's fine-tuning regularisation (mixup, cutmix, random erasing, label smoothing), the weight EMA, and the
evaluation arithmetic used during training."""

import math
import os

import pytest
import torch

from mawstron.core.augment import MixupConfig, cutmix_box, mix_batch, random_erasing, smooth_targets
from mawstron.parallel.config import ConfigError, RunConfig, apply_overrides
from mawstron.parallel.engine.ema import WeightEMA
from mawstron.parallel.training.periodic_eval import knn_top1, topk_correct
from mawstron.parallel.stages.regularize import regularize


def one_hot(labels, n):
    return torch.nn.functional.one_hot(torch.tensor(labels), n).float()


def test_label_smoothing_composes_with_mixup_soft_targets():
    torch.manual_seed(0)
    images = torch.randn(4, 3, 8, 8)
    targets = one_hot([0, 1, 2, 3], 5)
    cfg = MixupConfig(mixup_alpha=0.8, label_smoothing=0.1)
    mixed, soft, info = mix_batch(images, targets, cfg)
    lam = info["lam"]
    assert info["mix"] == "mixup" and 0 < lam < 1
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0))
    smoothed = smooth_targets(targets, 0.1)
    assert smoothed[0, 0].item() == pytest.approx(0.9 + 0.1 / 5) and smoothed[0, 1].item() == pytest.approx(0.02)
    torch.testing.assert_close(soft, lam * smoothed + (1 - lam) * smoothed.flip(0))
    torch.testing.assert_close(soft.sum(1), torch.ones(4))  # still distributions: the loss stays a cross-entropy
    # image 0 is mixed with image 3: its target has weight lam on class 0 and 1 - lam on class 3, smoothed
    assert soft[0, 0].item() == pytest.approx(lam * 0.92 + (1 - lam) * 0.02)
    assert soft[0, 3].item() == pytest.approx(lam * 0.02 + (1 - lam) * 0.92)


def test_cutmix_pastes_a_box_and_weights_targets_by_its_area():
    torch.manual_seed(3)
    images = torch.stack([torch.full((3, 16, 16), float(i)) for i in range(4)])
    targets = one_hot([0, 1, 2, 3], 4)
    out, soft, info = mix_batch(images, targets, MixupConfig(cutmix_alpha=1.0))
    assert info["mix"] == "cutmix"
    pasted = (out[0, 0] == 3.0).float().mean().item()  # image 0 receives pixels of image 3 (the flipped batch)
    assert pasted == pytest.approx(1 - info["lam"]) and 0 < pasted < 1
    assert soft[0, 0].item() == pytest.approx(info["lam"]) and soft[0, 3].item() == pytest.approx(1 - info["lam"])
    assert torch.equal(images[0], torch.zeros(3, 16, 16))  # inputs untouched
    top, bottom, left, right = cutmix_box(16, 16, 0.0)
    assert 0 <= top < bottom <= 16 and 0 <= left < right <= 16


def test_mixup_switch_and_prob():
    torch.manual_seed(0)
    cfg = MixupConfig(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5)
    kinds = [mix_batch(torch.randn(4, 3, 8, 8), one_hot([0, 1, 2, 3], 4), cfg)[2]["mix"] for _ in range(200)]
    assert 60 < kinds.count("cutmix") < 140 and kinds.count("cutmix") + kinds.count("mixup") == 200
    off = MixupConfig(mixup_alpha=0.8, mixup_prob=0.0, label_smoothing=0.1)
    images = torch.randn(2, 3, 4, 4)
    out, soft, info = mix_batch(images, one_hot([0, 1], 2), off)
    assert info["mix"] == "none" and out is images and soft[0, 0].item() == pytest.approx(0.95)
    with pytest.raises(ValueError, match="alphas"):
        MixupConfig(mixup_alpha=-1)


def test_random_erasing_fills_one_rectangle_with_noise():
    torch.manual_seed(0)
    images = torch.zeros(64, 3, 32, 32)
    out = random_erasing(images, prob=0.25)
    erased = (out != 0).flatten(1).any(1)
    assert 4 < int(erased.sum()) < 30  # about a quarter of the images
    assert torch.equal(images, torch.zeros_like(images))
    i = int(torch.nonzero(erased)[0])
    rows, cols = torch.nonzero((out[i] != 0).any(0), as_tuple=True)
    area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert 0.02 * 1024 * 0.5 <= area <= 1024 / 3 * 1.5  # one box of 2%-33% of the image (rounding aside)
    assert random_erasing(images, prob=0.0) is images


def test_regularize_follows_the_run_config():
    cfg = apply_overrides(RunConfig(), assignments=[
        "train.stage=finetune", "train.label_smoothing=0.1", "finetune.mixup=0.8", "finetune.cutmix=1.0",
        "finetune.reprob=0.25"])
    torch.manual_seed(1)
    images, targets = regularize(torch.randn(8, 3, 8, 8), one_hot(list(range(8)), 10), cfg)
    assert targets.shape == (8, 10) and (targets > 0).all()  # smoothed and mixed
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    wsp = apply_overrides(RunConfig(), assignments=["train.stage=wsp", "train.label_smoothing=0.1"])
    multi_hot = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    wsp_images, wsp_targets = regularize(torch.ones(2, 3, 4, 4), multi_hot, wsp)
    assert torch.equal(wsp_images, torch.ones(2, 3, 4, 4))  # WSP: smoothing only, no-tag rows stay empty
    torch.testing.assert_close(wsp_targets, torch.tensor([[0.475, 0.475, 0.025, 0.025], [0.0, 0.0, 0.0, 0.0]]))
    with pytest.raises(ConfigError, match="finetune only"):
        apply_overrides(RunConfig(), assignments=["finetune.mixup=0.8"])  # an MAE run
    with pytest.raises(ConfigError, match="ema_decay"):
        apply_overrides(RunConfig(), assignments=["finetune.ema_decay=1.0"])
    with pytest.raises(ConfigError, match="eval.train_shards"):
        apply_overrides(RunConfig(), assignments=["eval.test_shards=x"])


def test_weight_ema_averages_and_swaps_in():
    model = torch.nn.Linear(3, 2)
    ema = WeightEMA(model, decay=0.5)
    history = []
    for step in range(3):
        with torch.no_grad():
            model.weight.add_(1.0)
        history.append(model.weight.detach().clone())
        ema.update()
    expected = 0.25 * history[0] + 0.25 * history[1] + 0.5 * history[2]  # starts at the first step's weights
    trained = model.weight.detach().clone()
    with ema.swapped_in():
        torch.testing.assert_close(model.weight.detach(), expected)
    torch.testing.assert_close(model.weight.detach(), trained)
    torch.testing.assert_close(ema.full_state_dict()["weight"], expected)
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(model, 1.0)


def test_topk_and_knn():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    assert topk_correct(logits, torch.tensor([1, 2, 0]), ks=(1, 2)) == [1, 2]
    assert topk_correct(logits, torch.tensor([1, 2, 0]), ks=(1, 5)) == [1, 3]  # k capped at the class count
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 5
    train_y = torch.arange(4).repeat(10)
    train_x = centres[train_y] + torch.randn(40, 16, generator=g)
    test_y = torch.arange(4).repeat(5)
    test_x = centres[test_y] + torch.randn(20, 16, generator=g)
    assert knn_top1(train_x, train_y, test_x, test_y, k=5) == 1.0
    assert knn_top1(train_x, train_y[torch.randperm(40, generator=g)], test_x, test_y, k=5) < 0.8
    assert math.isclose(knn_top1(train_x, train_y, test_x, (test_y + 1) % 4, k=5), 0.0)


def test_knn_monitor_of_an_mae_encoder_and_the_split_of_work_between_ranks(tmp_path):
    """The pre-training monitor end to end on one process (a gloo group of one): features through the module's
    __call__ (as ZeRO-3 needs), k-NN over an ImageFolder memory; then each rank's share of the batches."""
    import torch.distributed as dist

    from folder_helpers import make_image_folder
    from mawstron.core import MAEConfig, create_mae
    from mawstron.parallel.training.periodic_eval import PeriodicEval

    root = str(tmp_path / "images")
    make_image_folder(root, images=22)
    cfg = apply_overrides(RunConfig(), assignments=["model.preset=vit_micro", f"eval.train_shards={root}",
                                                    f"eval.test_shards={root}", "eval.batch_size=4",
                                                    "eval.knn_k=1", "train.steps=10", "eval.every_steps=4"])
    model = create_mae("vit_micro", mae=MAEConfig(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        evaluator = PeriodicEval(cfg, model, rank=0, world_size=1, device=torch.device("cpu"), dtype=torch.float32)
        result = evaluator.evaluate()
    finally:
        dist.destroy_process_group()
    # the memory is the query set: each image's nearest neighbour is itself
    assert result == {"eval_knn_top1": 1.0, "eval_images": 22, "eval_memory_images": 22}
    assert model.training and "forward" not in vars(model)  # mode and forward restored
    assert [evaluator.due(s) for s in (3, 4, 8, 10)] == [False, True, True, True]
    # 22 images in batches of 4 = 6 batches; on 4 ranks every rank runs 2 rounds, ranks 2 and 3 pad their second
    evaluator.world = 4
    shares = []
    for rank in range(4):
        evaluator.rank = rank
        shares.append([(len(y), real) for _, y, real in evaluator._my_batches(evaluator.test)])
    assert shares == [[(4, True), (4, True)], [(4, True), (2, True)], [(4, True), (4, False)],
                      [(4, True), (4, False)]]


def test_train_refuses_missing_evaluation_data_before_launch(tmp_path, capsys):
    import os

    from mawstron.cli.main import main

    recipe = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "vit_tiny_mae.py")
    missing = str(tmp_path / "nope-*.tar")
    assert main(["train", recipe, "--set", f"eval.test_shards={missing}", "--set", f"eval.train_shards={missing}",
                 "--set", f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "eval.test_shards" in err and "nope-*.tar" in err and "\n" not in err.strip()


def test_ema_is_saved_with_checkpoints_and_resumed(tmp_path):
    from mawstron.parallel.checkpoints import store as ckpt
    from mawstron.parallel.training.periodic_eval import PeriodicEval

    cfg = apply_overrides(RunConfig(), assignments=["train.stage=finetune", "finetune.ema_decay=0.5",
                                                    "train.steps=4", "checkpoint.every_steps=2",
                                                    f"output_dir={tmp_path}"])
    model = torch.nn.Linear(2, 2)
    first = PeriodicEval(cfg, model)
    for step in (1, 2, 3):
        with torch.no_grad():
            model.weight.add_(1.0)
        first.after_step(step, metrics=None)
        if step == 2:  # a save step: Trainer.save writes the EMA beside the engine's shards
            first.save_ema(step)
    saved = os.path.join(cfg.checkpoint_dir, ckpt.tag_for_step(2), "ema_rank0.pt")
    assert os.path.isfile(saved) and not os.path.exists(saved.replace("00000002", "00000003"))
    ckpt.finalize(cfg.checkpoint_dir, ckpt.tag_for_step(2), 2, {}, keep_last=2, world_size=1)
    state = torch.load(saved, weights_only=True)
    resumed = PeriodicEval(apply_overrides(cfg, assignments=["checkpoint.resume=true"]), model)
    assert resumed.ema.updates == 2 and torch.equal(resumed.ema.shadow[0], state["shadow"][0])
    with pytest.raises(ValueError, match="other parameters"):
        WeightEMA(torch.nn.Linear(2, 3, bias=False), 0.5).load_state_dict(state)
