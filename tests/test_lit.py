"""LiT pieces in one process (and two gloo ranks for the loss): the global-batch contrastive loss, the locked
image tower, the MAWS-CLIP release layout, captions and tokenizer, zero-shot classifier."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from mawstron.core import LitConfig, clip_loss, create_clip
from mawstron.core.clip_weights import infer_clip_config, ours_to_release, read_clip_state_dict, release_to_ours
from mawstron.core.data.captions import noisy_caption
from mawstron.core.eval import zero_shot_classifier
from mawstron.core.text import caption_text, tokenize, train_tokenizer

TINY_LIT = LitConfig(vocab_size=64, text_width=32, text_depth=2, text_heads=2, context_length=8, embed_dim=16)


def _features(n=8, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1))


def _reference_loss(images, texts, scale):
    logits = scale * images @ texts.t()
    labels = torch.arange(len(images))
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def _rank(rank, world, port, result_queue):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        images, texts = _features()
        local = len(images) // world
        mine = slice(rank * local, (rank + 1) * local)
        img = images[mine].clone().requires_grad_(True)
        txt = texts[mine].clone().requires_grad_(True)
        scale = torch.tensor(10.0, requires_grad=True)
        loss = clip_loss(img, txt, scale, group=dist.group.WORLD)
        loss.backward()
        # plain lists: tensors sent through a queue would live in this process's shared memory, gone at exit
        result_queue.put((rank, loss.item(), img.grad.tolist(), txt.grad.tolist(), scale.grad.item()))
        # both ranks done before either tears gloo down: a rank that destroys the group while its peer's
        # connection is still in use can abort the peer at exit ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # leave without the interpreter's teardown: C++ static destructors at exit still abort a gloo rank now and then
    # after a clean run (exit -6 in clean-clone CI runs, as the trainer's launched ranks did: parallel/launcher/launch.py
    # leaves the same way); the queue's feeder thread is flushed first, so the result is not lost
    result_queue.close()
    result_queue.join_thread()
    os._exit(0)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_global_batch_loss_on_two_ranks_equals_the_single_process_loss_and_gradient():
    """Two gloo ranks with 4 pairs each vs one process with the 8: the mean of the ranks' losses is the global
    loss, and each rank's feature gradient is world_size x the global gradient of its rows (the data-parallel
    average of parameter gradients then equals the single-process gradient)."""
    world = 2
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in range(world))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    images, texts = _features()
    images.requires_grad_(True)
    texts.requires_grad_(True)
    scale = torch.tensor(10.0, requires_grad=True)
    loss = _reference_loss(images, texts, scale)
    loss.backward()
    assert np.mean([r[1] for r in results]) == pytest.approx(loss.item(), rel=1e-5)
    for rank, _, img_grad, txt_grad, _ in results:
        rows = slice(rank * 4, rank * 4 + 4)
        torch.testing.assert_close(torch.tensor(img_grad), world * images.grad[rows], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(torch.tensor(txt_grad), world * texts.grad[rows], rtol=1e-4, atol=1e-6)
    # the scale's gradient is local to each rank; their average is the global one
    assert np.mean([r[4] for r in results]) == pytest.approx(scale.grad.item(), rel=1e-4)


def test_single_process_loss_matches_the_reference_and_prefers_matching_pairs():
    images, texts = _features()
    scale = torch.tensor(10.0)
    assert clip_loss(images, texts, scale).item() == pytest.approx(_reference_loss(images, texts, scale).item(), rel=1e-6)
    assert clip_loss(images, images, scale) < clip_loss(images, texts, scale)
    with pytest.raises(ValueError, match="same shape"):
        clip_loss(images, texts[:4], scale)


def test_locked_image_tower_gets_no_gradient_and_no_optimizer_state():
    from mawstron.parallel.config import OptimConfig
    from mawstron.parallel.stages.lit import lit_param_groups

    model = create_clip("vit_micro", TINY_LIT)
    model.vision_encoder.requires_grad_(False)
    assert model.image_locked
    groups = lit_param_groups(model, OptimConfig(), image_lr_scale=1.0)
    names = [n for g in groups for n in g["names"]]
    assert names and not any(n.startswith("vision_encoder.") for n in names)
    assert "logit_scale" in names and "text_projection" in names and "vision_projection" in names
    optimizer = torch.optim.AdamW([p for g in groups for p in g["params"]], lr=1e-3)
    images = torch.randn(4, 3, 32, 32)
    ids = torch.randint(4, 64, (4, 10))
    img, txt, scale = model(images, ids, torch.ones_like(ids))
    clip_loss(img, txt, scale).backward()
    optimizer.step()
    for name, p in model.vision_encoder.named_parameters():
        assert p.grad is None, name
        assert p not in optimizer.state
    assert model.text_projection.grad is not None and model.vision_projection.grad is not None
    # unlocked: the image tower trains, at its own lr scale
    model.vision_encoder.requires_grad_(True)
    groups = lit_param_groups(model, OptimConfig(), image_lr_scale=0.1)
    scales = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scales["vision_encoder.blocks.0.attn.qkv.weight"] == 0.1 and scales["text_projection"] == 1.0


def test_release_layout_round_trips_and_computes_the_same_features(tmp_path):
    """Our CLIP -> the MAWS-CLIP release layout (torchtext RobertaModel keys, fused q|k|v, no token types) ->
    read back into a fresh model: the same image and text features."""
    torch.manual_seed(1)
    model = create_clip("vit_micro", TINY_LIT).eval()
    with torch.no_grad():  # a non-zero token-type row, so that folding it into the words is exercised
        model.text_encoder.embeddings.token_type_embeddings.weight.normal_()
    release = ours_to_release(model.state_dict())
    prefix = "text_encoder.encoder.transformer."
    assert f"{prefix}layers.1.attention.input_projection.weight" in release
    assert release[f"{prefix}layers.0.attention.input_projection.weight"].shape == (3 * 32, 32)
    assert release[f"{prefix}layers.0.residual_mlp.mlp.3.weight"].shape == (32, 128)
    assert {f"{prefix}token_embedding.weight", f"{prefix}positional_embedding.embedding.weight",
            "vision_encoder.cls_token", "vision_projection", "text_projection", "logit_scale"} <= set(release)
    assert not any("token_type" in k for k in release)
    path = str(tmp_path / "maws_clip.pt")
    torch.save(release, path)
    state = read_clip_state_dict(path)
    preset, overrides, lit = infer_clip_config(state)
    assert preset == "vit_micro" and overrides == {"img_size": 32}
    assert (lit.text_width, lit.text_depth, lit.vocab_size, lit.embed_dim) == (32, 2, 64, 16)
    fresh = create_clip(preset, LitConfig(**{**lit.__dict__, "text_heads": 2}), **overrides).eval()
    fresh.load_state_dict(state, strict=True)
    images, ids = torch.randn(3, 3, 32, 32), torch.tensor([[0, 5, 6, 7, 2, 1], [0, 9, 2, 1, 1, 1], [0, 4, 4, 4, 4, 2]])
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode_images(images), model.encode_images(images))
        torch.testing.assert_close(fresh.encode_texts(ids), model.encode_texts(ids), rtol=1e-4, atol=1e-5)
    assert release_to_ours(release).keys() == model.state_dict().keys()
    # the image side alone, as load_pretrained reads any MAWS checkpoint
    from mawstron.core import create_vit, load_pretrained

    vit = create_vit("vit_micro").eval()
    report = load_pretrained(vit, path)
    assert not report.unexpected and not [k for k in report.missing if not k.startswith("head.")]
    torch.testing.assert_close(vit.forward_features(images)[:, 0], model.vision_encoder.forward_features(images)[:, 0])


def test_captions_describe_the_image_with_noise_and_keep_hashtags():
    rng = np.random.default_rng(0)
    attrs = {"shape": "circle", "colour": "red", "texture": "striped", "size": "big", "background": "dark"}
    captions = [noisy_caption(rng, attrs, ["#love", "#Red"], ("circle", "square"), ("red", "blue"))
                for _ in range(300)]
    assert all(c.endswith("#love #Red") for c in captions)
    with_both = sum("red" in c.split() and "circle" in c.split() for c in captions)
    assert 0.4 * len(captions) < with_both < 0.95 * len(captions)  # mostly right, sometimes wrong or missing
    assert any("square" in c.split() or "blue" in c.split() for c in captions)
    assert caption_text({"caption": " my red circle #love "}) == "my red circle #love"
    assert caption_text({"hashtags": ["red", "#circle"]}) == "#red #circle"
    assert caption_text({"label": 3}) == ""


def test_zero_shot_classifier_is_the_normalised_mean_of_normalised_prompt_embeddings():
    tokenizer = train_tokenizer(["my red circle #love", "a blue square", "green star today"] * 20, 100, 8)
    model = create_clip("vit_micro", TINY_LIT, vocab_size=tokenizer.get_vocab_size()).eval()
    templates = ("a {}.", "my {} today")
    classifier = zero_shot_classifier(model, tokenizer, ["red_circle", "blue_square"], templates)
    assert classifier.shape == (16, 2)
    tokens = tokenize(tokenizer, ["a red circle.", "my red circle today"])
    with torch.no_grad():
        emb = model.encode_texts(tokens["input_ids"], tokens["attention_mask"])
    torch.testing.assert_close(classifier[:, 0], F.normalize(emb.mean(0), dim=-1))
    with pytest.raises(ValueError, match="must contain"):
        zero_shot_classifier(model, tokenizer, ["a"], ("no placeholder",))


@pytest.mark.parametrize("loader", ["dali", "torch"])
def test_both_loaders_deliver_token_ids_and_attention_masks_for_lit(tmp_path, loader):
    from data_helpers import make_collection
    from mawstron.core.data import DataConfig, build_train_loader
    from mawstron.core.data.captions import read_captions
    from mawstron.core.data.shards import expand_shards

    make_collection(str(tmp_path), images=16, shard_size=16, size=32)
    shards = os.path.join(str(tmp_path), "train-*.tar")
    captions = list(read_captions(expand_shards(shards)))
    assert len(captions) == 16 and any("#" in c for c in captions)
    tokenizer = train_tokenizer(captions, 120, context_length=12)
    cfg = DataConfig(source="shards", shards=shards, loader=loader, num_workers=1, dali_device="cpu")
    with pytest.raises(ValueError, match="tokenizer"):
        build_train_loader(cfg, stage="lit", img_size=16, micro_batch=4)
    ld = build_train_loader(cfg, stage="lit", img_size=16, micro_batch=4, tokenizer=tokenizer)
    batch = next(iter(ld))
    assert batch["images"].shape == (4, 3, 16, 16) and "targets" not in batch
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == (4, 14) and ids.dtype == torch.long
    assert (ids[:, 0] == 0).all() and (mask[:, 0] == 1).all()  # <s> first
    assert ((ids == 1) == (mask == 0)).all()  # padding exactly where the mask is 0
    ld.close()


def test_pretrained_text_tower_and_tokenizer_load_from_a_local_folder(tmp_path):
    """``lit.text_model`` names a Hugging Face model (``xlm-roberta-base``) or a local copy of one: weights come
    from ``from_pretrained`` and the tokenizer from the same folder (here a saved tiny tower, no network)."""
    from mawstron.core.clip import create_text_tower
    from mawstron.core.text import load_tokenizer

    folder = str(tmp_path / "tiny-xlmr")
    source = create_text_tower(TINY_LIT)
    source.save_pretrained(folder)
    train_tokenizer(["my red circle #love", "a blue square"] * 20, 64, 8).save(os.path.join(folder, "tokenizer.json"))
    lit = LitConfig(**{**TINY_LIT.__dict__, "text_model": folder})
    model = create_clip("vit_micro", lit)
    for name, value in source.state_dict().items():
        torch.testing.assert_close(model.text_encoder.state_dict()[name], value, msg=name)
    tokenizer = load_tokenizer(folder, lit.context_length)
    assert tokenize(tokenizer, ["my red circle"])["input_ids"].shape == (1, 10)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing" / "tokenizer.json"), 8)


def test_plan_counts_the_text_tower_the_frozen_image_tower_and_the_all_gather():
    import dataclasses

    from mawstron.core import count_parameters, create_vit
    from mawstron.parallel.planning.paper import maws_clip_lit
    from mawstron.parallel.planning.plan import GIB, contrastive_bytes, plan

    lit = maws_clip_lit("vit_b16")
    assert (lit.text_width, lit.text_depth, lit.vocab_size, lit.embed_dim) == (768, 12, 250002, 768)
    locked = plan("vit_b16", "lit", 8, 80.0, 128, lit=lit)
    with torch.device("meta"):
        vision = count_parameters(create_vit("vit_b16"))
    assert locked.frozen_params == vision
    assert 277e6 < locked.text_params < 280e6  # XLM-R Base (278M) + the two projections and the logit scale
    assert locked.largest_layer_params == 250002 * 768  # the word embedding
    # model states: parameters of both towers, gradients and Adam states of the text tower only
    assert locked.params_gib == pytest.approx(2 * locked.total_params / 8 / GIB)
    assert locked.optimizer_gib == pytest.approx(12 * locked.text_params / 8 / GIB)
    assert locked.contrastive_gib == pytest.approx(contrastive_bytes(128, 8, 768) / GIB)
    unlocked = plan("vit_b16", "lit", 8, 80.0, 128, lit=dataclasses.replace(lit, unlock_image=True))
    assert unlocked.frozen_params == 0 and unlocked.optimizer_gib > locked.optimizer_gib
    assert unlocked.activations_gib > locked.activations_gib
