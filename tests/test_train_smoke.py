"""A tiny MAE and a tiny WSP model learn on CPU in a few plain-PyTorch steps."""

import torch

from mawstron.core import create_mae, create_wsp, multi_hot, wsp_loss


def make_images(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    # structured images (smooth colour gradients) so there is something to reconstruct
    base = torch.rand(n, 3, 1, 1, generator=g)
    ramp = torch.linspace(-1, 1, 32)
    return base + 0.5 * ramp.view(1, 1, 1, 32) * torch.rand(n, 3, 1, 1, generator=g) + 0.5 * ramp.view(1, 1, 32, 1)


def test_tiny_mae_loss_falls():
    model = create_mae("vit_micro", decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, betas=(0.9, 0.95))
    imgs = make_images()
    noise = torch.rand(16, 16)  # fixed masks: the loss curve then measures learning, not mask luck
    losses = []
    for _ in range(40):
        loss, _, _ = model(imgs, noise=noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


def test_tiny_wsp_loss_falls():
    model = create_wsp("vit_micro", num_classes=8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    imgs = make_images()
    # tags tied to the image's dominant colour channel, plus an image with no known tag
    dominant = imgs.mean(dim=(2, 3)).argmax(1)
    tags = [[int(c), 3 + int(c)] for c in dominant]
    tags[0] = []
    targets = multi_hot(tags, 8)
    losses = []
    for _ in range(40):
        loss, n = wsp_loss(model(imgs), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert n.item() == 15
    assert losses[-1] < 0.5 * losses[0], losses
