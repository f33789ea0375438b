"""MAE: reference equivalence, masking invariants, loss on masked patches only."""

import numpy as np
import pytest
import torch

from conftest import load_fixture
from mawstron.core import (
    MAEConfig,
    create_mae,
    create_vit,
    encoder_state_dict,
    patchify,
    random_masking,
    sincos_2d,
    unpatchify,
)


def tiny_mae(**kw):
    return create_mae("vit_micro", decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, **kw)


def test_matches_mae_reference_implementation():
    """fixtures/mae_reference_fixture.pt: facebookresearch/mae's models_mae.py run on fixed weights and noise."""
    fx = load_fixture("mae_reference_fixture.pt")
    model = tiny_mae()
    assert set(model.state_dict()) == set(fx["state_dict"])
    model.load_state_dict(fx["state_dict"])
    loss, pred, mask = model(fx["imgs"], noise=fx["noise"])
    loss.backward()
    torch.testing.assert_close(loss.detach(), fx["loss"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(pred.detach(), fx["pred"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mask, fx["mask"])
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(grads) == set(fx["grads"])
    for name, grad in grads.items():
        torch.testing.assert_close(grad, fx["grads"][name], rtol=1e-4, atol=1e-6, msg=name)


def mae_sincos_numpy(embed_dim, grid_size):
    """MAE's util/pos_embed.py algorithm, written independently in NumPy for the test."""
    grid = np.stack(np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64)))

    def one_d(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)


@pytest.mark.parametrize("dim,grid", [(64, 4), (1280, 16), (512, 14)])
def test_sincos_table_matches_mae(dim, grid):
    ours = sincos_2d(dim, grid, dtype=torch.float64)[0].numpy()
    np.testing.assert_allclose(ours, mae_sincos_numpy(dim, grid), rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_patches,ratio", [(196, 0.75), (256, 0.75), (16, 0.5), (64, 0.9)])
def test_random_masking_invariants(num_patches, ratio):
    visible = MAEConfig(mask_ratio=ratio).num_visible(num_patches)
    ids_keep, ids_restore, mask = random_masking(5, num_patches, visible)
    assert ids_keep.shape == (5, visible) and visible == int(num_patches * (1 - ratio))
    assert (mask.sum(1) == num_patches - visible).all()
    # the kept ids are exactly the unmasked positions, each once
    for b in range(5):
        assert sorted(ids_keep[b].tolist()) == torch.nonzero(mask[b] == 0).flatten().tolist()
    # ids_restore undoes the shuffle: shuffle = argsort(restore), and shuffled-then-restored is the identity
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    tokens = torch.arange(num_patches).expand(5, -1)
    shuffled = torch.gather(tokens, 1, ids_shuffle)
    assert torch.equal(torch.gather(shuffled, 1, ids_restore), tokens)
    assert torch.equal(ids_shuffle[:, :visible], ids_keep)


def test_masking_is_per_sample_and_noise_deterministic():
    noise = torch.rand(4, 16)
    a = random_masking(4, 16, 4, noise)
    b = random_masking(4, 16, 4, noise.clone())
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    _, _, mask = random_masking(64, 196, 49)
    assert len({tuple(m.tolist()) for m in mask}) > 60  # different samples get different masks


def test_encoder_sees_only_visible_tokens():
    model = tiny_mae()
    latent, mask, _ = model.forward_encoder(torch.randn(3, 3, 32, 32))
    assert latent.shape == (3, 1 + 4, 64)  # 25% of 16 patches plus the class token
    assert mask.shape == (3, 16)


def test_loss_is_taken_over_masked_patches_only():
    model = tiny_mae()
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    latent, mask, ids_restore = model.forward_encoder(imgs, noise)
    pred = model.forward_decoder(latent, ids_restore).detach().requires_grad_(True)
    loss = model.forward_loss(imgs, pred, mask)
    loss.backward()
    visible = mask == 0
    assert (pred.grad[visible] == 0).all() and (pred.grad[~visible] != 0).any()
    # changing predictions at visible patches changes nothing
    tampered = pred.detach().clone()
    tampered[visible] += 100.0
    torch.testing.assert_close(model.forward_loss(imgs, tampered, mask), loss.detach())
    # and the value is the mean over masked patches of per-patch MSE against normalised targets
    target = patchify(imgs, 8)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    expected = ((pred.detach() - target) ** 2).mean(-1)[~visible].mean()
    torch.testing.assert_close(loss.detach(), expected)


def test_patchify_roundtrip_and_order():
    imgs = torch.randn(2, 3, 32, 32)
    patches = patchify(imgs, 8)
    assert patches.shape == (2, 16, 192)
    assert torch.equal(unpatchify(patches, 8), imgs)
    # patch 1 is the top row, second column; its first pixel's three channels come first
    assert torch.equal(patches[0, 1, :3], imgs[0, :, 0, 8])


def test_encoder_state_dict_is_a_timm_encoder():
    model = tiny_mae()
    encoder = encoder_state_dict(model.state_dict())
    vit = create_vit("vit_micro")
    assert set(encoder) == set(vit.state_dict())
    vit.load_state_dict(encoder)  # strict


def test_fixed_position_embeddings_are_frozen_and_sincos():
    model = tiny_mae()
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    torch.testing.assert_close(model.decoder_pos_embed.detach(), sincos_2d(32, 4))
    learned = tiny_mae(fixed_pos_embed=False)
    assert learned.pos_embed.requires_grad


def test_decoder_width_override_keeps_mlp_ratio():
    model = create_mae("vit_micro", decoder_embed_dim=48, decoder_num_heads=3)
    assert model.decoder_blocks[0].mlp.fc1.out_features == 4 * 48


def test_bad_mae_configs_are_rejected():
    with pytest.raises(ValueError, match="mask_ratio"):
        MAEConfig(mask_ratio=1.0)
    with pytest.raises(ValueError, match="decoder_num_heads"):
        MAEConfig(decoder_embed_dim=50, decoder_num_heads=16)
    with pytest.raises(ValueError, match="num_classes=0"):
        create_mae("vit_micro", num_classes=10)
