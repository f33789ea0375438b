"""WSP: softmax cross-entropy against normalised multi-hot targets, unlabelled images dropped."""

import math

import pytest
import torch

from mawstron.core import create_wsp, multi_hot, wsp_loss


def test_loss_against_hand_computation():
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [5.0, 5.0, 5.0, 5.0]])
    targets = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 1.0, 0], [0, 0, 0, 0]])  # third image: no known hashtag
    loss, n = wsp_loss(logits, targets)
    # image 0: -log softmax(2 | 2,0,0,0) = -(2 - log(e^2 + 3))
    l0 = -(2 - math.log(math.exp(2) + 3))
    # image 1: two tags, each weight 1/2: -(1/2)(log p1 + log p2), p1 = p2 = e / (2e + 2)
    l1 = -math.log(math.e / (2 * math.e + 2))
    assert n.item() == 2
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_unlabelled_images_are_dropped_not_zero():
    logits = torch.randn(4, 10)
    targets = multi_hot([[1], [], [3, 4], []], 10)
    loss, n = wsp_loss(logits, targets)
    only, _ = wsp_loss(logits[[0, 2]], targets[[0, 2]])
    assert n.item() == 2
    torch.testing.assert_close(loss, only)


def test_all_unlabelled_batch_gives_zero_with_a_graph():
    logits = torch.randn(3, 5, requires_grad=True)
    loss, n = wsp_loss(logits, torch.zeros(3, 5))
    assert n.item() == 0 and loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_multi_hot_from_lists_and_padded_tensors():
    a = multi_hot([[0, 2, 2], [], [4]], 5)
    b = multi_hot(torch.tensor([[0, 2, 2], [-1, -1, -1], [4, -1, -1]]), 5)
    expected = torch.tensor([[1.0, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]])
    assert torch.equal(a, expected) and torch.equal(b, expected)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        multi_hot([[5]], 5)


def test_gradient_matches_softmax_minus_target():
    logits = torch.randn(2, 6, requires_grad=True)
    targets = multi_hot([[1, 3], [5]], 6)
    loss, _ = wsp_loss(logits, targets)
    loss.backward()
    expected = (torch.softmax(logits.detach(), 1) - targets / targets.sum(1, keepdim=True)) / 2
    torch.testing.assert_close(logits.grad, expected)


def test_create_wsp_needs_a_vocabulary():
    assert create_wsp("vit_micro", num_classes=123).head.out_features == 123
    with pytest.raises(ValueError, match="vocabulary"):
        create_wsp("vit_micro", num_classes=0)
