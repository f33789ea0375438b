"""Linear probe and k-shot protocols on features with known structure."""

import pytest
import torch

from mawstron.core import create_vit
from mawstron.core.eval import extract_features, few_shot, fit_logistic_regression, linear_probe


def gaussian_classes(n_per_class, num_classes, dim, separation, seed, noise_seed=None):
    """Gaussian blobs: class centres from ``seed``, per-sample noise from ``noise_seed`` (a test split shares
    the centres of its training split but not its samples)."""
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(seed)) * separation
    g = torch.Generator().manual_seed(seed if noise_seed is None else noise_seed)
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = centres[y] + torch.randn(len(y), dim, generator=g)
    return x, y


def test_logistic_regression_reaches_the_optimum():
    # the gradient of the regularised objective vanishes at the solution
    x, y = gaussian_classes(30, 3, 5, 1.0, 0)
    layer = fit_logistic_regression(x, y, 3, l2=1e-2)
    layer.zero_grad()
    loss = torch.nn.functional.cross_entropy(layer(x.double()), y) + 0.5e-2 * layer.weight.pow(2).sum()
    loss.backward()
    assert layer.weight.grad.abs().max() < 1e-5 and layer.bias.grad.abs().max() < 1e-5


def test_linear_probe_separates_separable_classes_and_not_noise():
    x, y = gaussian_classes(40, 4, 16, 3.0, 0)
    tx, ty = gaussian_classes(40, 4, 16, 3.0, 0, noise_seed=99)
    assert not torch.equal(x, tx)
    good = linear_probe(x, y, tx, ty)
    assert good.accuracy > 0.95
    noise_x = torch.randn_like(x)
    chance = linear_probe(noise_x, y, torch.randn_like(tx), ty)
    assert chance.accuracy < 0.45  # 4 classes: chance is 0.25


def test_few_shot_improves_with_shots_and_is_averaged_over_draws():
    x, y = gaussian_classes(30, 5, 32, 0.6, 1)
    tx, ty = gaussian_classes(60, 5, 32, 0.6, 1, noise_seed=7)
    one = few_shot(x, y, tx, ty, shots=1, draws=6)
    ten = few_shot(x, y, tx, ty, shots=10, draws=6)
    assert len(one.accuracies) == 6 and len(set(one.accuracies)) > 1  # different draws, different results
    assert ten.mean_accuracy > one.mean_accuracy
    with pytest.raises(ValueError, match="31-shot"):
        few_shot(x, y, tx, ty, shots=31)


def test_extract_features_pools_and_restores_mode():
    model = create_vit("vit_micro").train()
    batches = [{"images": torch.randn(3, 3, 32, 32), "labels": torch.tensor([0, 1, 2])} for _ in range(2)]
    feats, labels = extract_features(model, batches, pool="token")
    assert feats.shape == (6, 64) and labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert model.training
    avg, _ = extract_features(model, batches, pool="avg")
    with torch.no_grad():
        model.eval()
        expected = model.forward_features(batches[0]["images"])[:, 1:].mean(1)
    torch.testing.assert_close(avg[:3], expected)
    with pytest.raises(ValueError, match="no batches"):
        extract_features(model, [])
