"""Transfer protocols on frozen features: linear probe and k-shot logistic regression.

Both fit a multinomial logistic regression (a linear layer with softmax cross-entropy and an L2 penalty) on
standardised features, solved to convergence with full-batch L-BFGS: deterministic, no learning-rate schedule
to tune, and the same classifier for every pretraining method so that only the features differ.  MAWS and SWAG
evaluate low-shot transfer the same way (logistic regression on frozen features, several draws averaged).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class ProbeResult:
    accuracy: float
    l2: float
    train_accuracy: float


def standardize(train: torch.Tensor, *others: torch.Tensor):
    """Zero-mean unit-variance features using the training split's statistics only."""
    mean = train.mean(0, keepdim=True)
    std = train.std(0, keepdim=True).clamp_min(1e-6)
    return ((train - mean) / std, *[(x - mean) / std for x in others])


@contextlib.contextmanager
def single_threaded():
    """The fits are hundreds of small matrix products: on a busy CPU, intra-op threads spin-wait and make them
    tens of times slower (measured 25x on 2 shared cores), so they run on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@single_threaded()
def fit_logistic_regression(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float,
                            max_iter: int = 200) -> torch.nn.Linear:
    """Multinomial logistic regression: minimise mean CE + ``l2 * ||W||^2 / 2`` with L-BFGS (float64)."""
    x = features.double()
    y = labels.long()
    layer = torch.nn.Linear(x.shape[1], num_classes, dtype=torch.float64)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

    onehot = F.one_hot(y, num_classes).double()
    n = x.shape[0]

    @torch.no_grad()
    def closure():
        # loss and gradients in closed form: the fits are small and many, and autograd's per-call overhead
        # dominated them (softmax - onehot is the gradient of the mean cross-entropy w.r.t. the logits)
        w, b = layer.weight, layer.bias
        logits = torch.addmm(b, x, w.t())
        logp = torch.log_softmax(logits, dim=1)
        loss = -(logp * onehot).sum() / n + 0.5 * l2 * w.pow(2).sum()
        g = (logp.exp() - onehot) / n
        w.grad = g.t() @ x + l2 * w
        b.grad = g.sum(0)
        return loss

    with torch.no_grad():
        opt.step(closure)
    return layer


def accuracy(layer: torch.nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (layer(features.double()).argmax(1) == labels).double().mean().item()


def _stratified_split(labels: torch.Tensor, holdout: float, generator: torch.Generator):
    """Indices (fit, validation) with ``holdout`` of each class in validation (at least one if a class has 2+)."""
    fit, val = [], []
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_val = int(round(holdout * len(idx))) if len(idx) > 1 else 0
        n_val = max(n_val, 1) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        fit.append(idx[n_val:])
    return torch.cat(fit), torch.cat(val)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 l2_grid=DEFAULT_L2_GRID, holdout: float = 0.2, seed: int = 0) -> ProbeResult:
    """Linear probe: pick the L2 strength on a stratified hold-out of the training split, refit on all of it,
    report test accuracy."""
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    train_x, test_x = standardize(train_x, test_x)
    g = torch.Generator().manual_seed(seed)
    fit_idx, val_idx = _stratified_split(train_y, holdout, g)
    best_l2, best_val = l2_grid[0], -1.0
    if len(val_idx):
        for l2 in l2_grid:
            layer = fit_logistic_regression(train_x[fit_idx], train_y[fit_idx], num_classes, l2)
            val_acc = accuracy(layer, train_x[val_idx], train_y[val_idx])
            if val_acc > best_val:
                best_l2, best_val = l2, val_acc
    layer = fit_logistic_regression(train_x, train_y, num_classes, best_l2)
    return ProbeResult(accuracy(layer, test_x, test_y), best_l2, accuracy(layer, train_x, train_y))


@dataclass
class FewShotResult:
    shots: int
    mean_accuracy: float
    std_accuracy: float
    accuracies: list[float]


def few_shot(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
             shots: int, draws: int = 5, l2: float = 1e-2, seed: int = 0) -> FewShotResult:
    """k-shot transfer: ``shots`` training images per class drawn at random, logistic regression on them, test
    accuracy averaged over ``draws`` independent draws.  A class with fewer than ``shots`` images is an error
    (the protocol would silently change otherwise)."""
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    counts = torch.bincount(train_y, minlength=num_classes)
    present = torch.nonzero(counts).flatten()
    if (counts[present] < shots).any():
        short = present[counts[present] < shots].tolist()
        raise ValueError(f"{shots}-shot needs {shots} training images per class; classes {short[:10]} have fewer")
    accs = []
    for d in range(draws):
        g = torch.Generator().manual_seed(seed * 1000 + d)
        idx = torch.cat([
            torch.nonzero(train_y == c).flatten()[torch.randperm(int(counts[c]), generator=g)[:shots]] for c in present
        ])
        x, tx = standardize(train_x[idx], test_x) if shots > 1 else _center(train_x[idx], test_x, train_x)
        layer = fit_logistic_regression(x, train_y[idx], num_classes, l2)
        accs.append(accuracy(layer, tx, test_y))
    t = torch.tensor(accs)
    return FewShotResult(shots, t.mean().item(), t.std(unbiased=False).item(), accs)


def _center(shot_x: torch.Tensor, test_x: torch.Tensor, pool_x: torch.Tensor):
    """1-shot has one image per class, too few for per-feature statistics: standardise with the statistics of
    the unlabelled training pool instead (labels are not used)."""
    mean = pool_x.mean(0, keepdim=True)
    std = pool_x.std(0, keepdim=True).clamp_min(1e-6)
    return (shot_x - mean) / std, (test_x - mean) / std
