"""Transfer protocols on frozen features: linear probe and k-shot logistic regression.

The default probe (``lbfgs``) fits a multinomial logistic regression (a linear layer with softmax cross-entropy
and an L2 penalty) on standardised features with full-batch L-BFGS: deterministic, no learning-rate schedule to
tune, and the same classifier for every pretraining method so that only the features differ.  The L2 strength is
picked on a stratified hold-out of the training split, then the probe is refit on all training features.  MAWS
and SWAG evaluate low-shot transfer the same way (logistic regression on frozen features, several draws averaged).

Made to finish at ImageNet-1k's scale (1.28M x 1280 features, 1,000 classes):

- it runs on the device the features are evaluated on (``device="auto"``: the GPU when there is one), with all
  CPU threads on a CPU (small fits, e.g. k-shot, stay on one thread: their matrix products are too small to gain);
- large problems compute in float32 with float64 where it matters (feature statistics, loss sums, the L2 choice is
  compared on exact counts); small ones (below ``FLOAT64_BELOW`` multiply-adds per pass) stay in float64;
- the L2 grid is walked from the strongest penalty to the weakest, each fit warm-started from the previous
  solution, and the refit on all training features starts from the chosen L2's solution;
- standardised training features are held once on the device in float32, or float16 when float32 does not fit
  (features may be a NumPy memmap: they are read in chunks); when neither fits, a ``ProbeMemoryError`` gives the
  numbers.  Loss and gradients are computed in chunks of rows, never materialising [N, C] one-hots.

``sgd_probe`` is the MAE paper's protocol (a BatchNorm without affine parameters and a linear head, LARS, 90
epochs at batch 16384, lr 0.1 x batch / 256, cosine after 10 warm-up epochs), for comparison with published MAE
linear-probe numbers; here it runs on precomputed features (no augmentation).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
PROBES = ("lbfgs", "sgd")
FLOAT64_BELOW = 2e8  # N * D * C multiply-adds per pass: below it a fit is cheap, so it runs in float64
ONE_THREAD_BELOW = 5e8  # below it a fit runs on one thread (intra-op threads spin-wait on a busy CPU)
LBFGS_HISTORY = 20


class ProbeMemoryError(MemoryError):
    """The probe's features and working memory do not fit the device: the message gives the numbers."""


@dataclass
class ProbeResult:
    accuracy: float
    l2: float
    train_accuracy: float
    protocol: str = "lbfgs"
    device: str = "cpu"
    dtype: str = "float64"
    storage: str = "float64"
    seconds: float = 0.0
    val_accuracy: dict = field(default_factory=dict)  # L2 -> hold-out accuracy
    iterations: int = 0  # L-BFGS iterations (or SGD steps) over all fits

    def describe(self) -> dict:
        """The protocol as results JSON names it."""
        return {"protocol": self.protocol, "device": self.device, "dtype": self.dtype, "storage": self.storage,
                "seconds": round(self.seconds, 3), "iterations": self.iterations,
                "val_accuracy": {f"{k:g}": v for k, v in self.val_accuracy.items()}}


def resolve_device(device="auto") -> torch.device:
    """``"auto"``: the current CUDA device when there is one, else the CPU; ``"cuda"`` without a GPU is an error."""
    if device in (None, "auto"):
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: this machine has no CUDA GPU that torch can see; use --device cpu or auto")
    return device


def standardize(train: torch.Tensor, *others: torch.Tensor):
    """Zero-mean unit-variance features using the training split's statistics only."""
    mean = train.mean(0, keepdim=True)
    std = train.std(0, keepdim=True).clamp_min(1e-6)
    return ((train - mean) / std, *[(x - mean) / std for x in others])


def _as_tensor(x) -> torch.Tensor:
    """A tensor view of features: torch tensors as they are, NumPy arrays (memmaps included) without a copy."""
    if isinstance(x, torch.Tensor):
        return x
    with warnings.catch_warnings():  # a read-only memmap: the probe only reads it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(x))


def feature_stats(x, chunk_rows: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and (unbiased) standard deviation in float64, read in chunks (memmaps stay on disk)."""
    x = _as_tensor(x)
    n = x.shape[0]
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    for i in range(0, n, chunk_rows):
        total += x[i:i + chunk_rows].double().sum(0)
    mean = total / n
    sq = torch.zeros_like(total)
    for i in range(0, n, chunk_rows):
        sq += (x[i:i + chunk_rows].double() - mean).pow(2).sum(0)
    std = (sq / max(n - 1, 1)).sqrt().clamp_min(1e-6)
    return mean, std


def available_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now (CUDA: free device memory; CPU: available system memory)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def _chunk_rows(n: int, d: int, c: int, device: torch.device) -> int:
    budget = 2 ** 28 if device.type == "cuda" else 2 ** 25  # elements of one chunk's logits / features
    return max(1, min(n, budget // max(c, d)))


def _working_bytes(d: int, c: int, chunk: int, elem: int) -> int:
    """Besides the stored features: chunk logits + probabilities + a float32 copy of the chunk, and the
    parameters, gradients and L-BFGS history."""
    return chunk * (2 * c + d) * elem + (2 * LBFGS_HISTORY + 8) * (c * d + c) * elem


def plan_storage(n: int, d: int, c: int, device: torch.device, compute: torch.dtype,
                 memory_bytes: int | None = None) -> torch.dtype:
    """The storage dtype of the standardised training features on ``device``: the compute dtype when it fits in
    90% of the free memory, else float16; ProbeMemoryError with the numbers when neither does."""
    free = available_memory(device) if memory_bytes is None else int(memory_bytes)
    chunk = _chunk_rows(n, d, c, device)
    elem = torch.finfo(compute).bits // 8
    work = _working_bytes(d, c, chunk, elem)
    for dtype in (compute, torch.float16):
        if n * d * (torch.finfo(dtype).bits // 8) + work <= 0.9 * free:
            return dtype
    need = n * d * 2 + work
    raise ProbeMemoryError(
        f"linear probe: {n:,} x {d:,} features (training and test) with {c:,} classes need {_size(need)} on "
        f"{device} even in float16 ({_size(n * d * 2)} features + {_size(work)} working memory), and "
        f"{_size(free)} is free: probe on a device with more memory (--device cuda), free memory, or fit on fewer "
        f"training images")


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


class _Rows:
    """Standardised features held once on the probe's device (rows in a chosen order), served in chunks."""

    def __init__(self, x, mean, std, order: torch.Tensor | None, device, storage: torch.dtype, compute: torch.dtype,
                 chunk: int):
        x = _as_tensor(x)
        n = x.shape[0] if order is None else len(order)
        self.compute, self.chunk, self.n = compute, chunk, n
        self.data = torch.empty(n, x.shape[1], dtype=storage, device=device)
        mean = mean.to(device=device, dtype=compute)
        inv = (1.0 / std).to(device=device, dtype=compute)
        read = 65536
        for i in range(0, n, read):
            rows = x[i:i + read] if order is None else x[order[i:i + read]]
            self.data[i:i + read] = ((rows.to(device=device, dtype=compute) - mean) * inv).to(storage)

    def chunks(self, start: int = 0, stop: int | None = None):
        stop = self.n if stop is None else stop
        for i in range(start, stop, self.chunk):
            j = min(i + self.chunk, stop)
            yield i, j, self.data[i:j].to(self.compute)


_MATMUL_THREADS = 1  # threads for the loss and gradient products of the fit in progress (see _threads)


@contextlib.contextmanager
def _threads(work: float, device: torch.device):
    """On a CPU: all threads for the large matrix products of large fits, one thread for everything else (the
    vector updates of L-BFGS and small fits, whose intra-op threads spin-wait on a busy CPU: measured 25x
    slower on 2 shared cores)."""
    global _MATMUL_THREADS
    before, matmul_before = torch.get_num_threads(), _MATMUL_THREADS
    if device.type == "cpu":
        _MATMUL_THREADS = 1 if work < ONE_THREAD_BELOW else max(1, len(os.sched_getaffinity(0)))
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        _MATMUL_THREADS = matmul_before


@contextlib.contextmanager
def _matmul_threads(device: torch.device):
    if device.type != "cpu" or _MATMUL_THREADS == 1:
        yield
        return
    torch.set_num_threads(_MATMUL_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(1)


# the old probe's tolerances; in float32 a fit ends earlier, when the loss stops changing at float32 resolution
GTOL, CTOL = 1e-9, 1e-12


def _lbfgs(rows: _Rows, labels: torch.Tensor, start: int, stop: int, w: torch.Tensor, b: torch.Tensor, l2: float,
           max_iter: int) -> int:
    """Minimise mean CE + ``l2 * ||W||^2 / 2`` over rows ``[start, stop)`` from ``(w, b)`` in place; returns the
    number of iterations."""
    n = stop - start
    w.requires_grad_(True), b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=LBFGS_HISTORY,
                            line_search_fn="strong_wolfe", tolerance_grad=GTOL,
                            tolerance_change=CTOL)

    @torch.no_grad()
    def closure():
        # loss and gradients in closed form, chunk by chunk (softmax - onehot is the gradient of the mean
        # cross-entropy w.r.t. the logits); the loss is summed in float64
        gw = l2 * w
        gb = torch.zeros_like(b)
        loss = 0.0
        with _matmul_threads(w.device):
            for i, j, x in rows.chunks(start, stop):
                y = labels[i:j]
                logits = torch.addmm(b, x, w.t())
                picked = logits.gather(1, y[:, None])
                top = logits.amax(1, keepdim=True)
                p = logits.sub_(top).exp_()  # in place, one exp: softmax = p / total
                total = p.sum(1, keepdim=True)
                loss += (top + total.log() - picked).double().sum().item()
                p.mul_(total.reciprocal_().mul_(1.0 / n))
                p[torch.arange(len(y), device=p.device), y] -= 1.0 / n
                gw.addmm_(p.t(), x)
                gb += p.sum(0)
        w.grad, b.grad = gw, gb
        return torch.tensor(loss / n + 0.5 * l2 * torch.dot(w.flatten(), w.flatten()).item(), dtype=w.dtype)

    with torch.no_grad():
        opt.step(closure)
    return int(opt.state[opt._params[0]].get("n_iter", 0))


@torch.no_grad()
def _correct(rows: _Rows, labels: torch.Tensor, start: int, stop: int, w: torch.Tensor, b: torch.Tensor) -> int:
    hits = 0
    with _matmul_threads(w.device):
        for i, j, x in rows.chunks(start, stop):
            hits += int((torch.addmm(b, x, w.t()).argmax(1) == labels[i:j]).sum())
    return hits


def _layer(w: torch.Tensor, b: torch.Tensor) -> torch.nn.Linear:
    layer = torch.nn.Linear(w.shape[1], w.shape[0], dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(w.detach().cpu())
        layer.bias.copy_(b.detach().cpu())
    return layer


def _compute_dtype(n: int, d: int, c: int) -> torch.dtype:
    return torch.float64 if n * d * c < FLOAT64_BELOW else torch.float32


def fit_logistic_regression(features, labels: torch.Tensor, num_classes: int, l2: float, max_iter: int = 200,
                            device="cpu", init: torch.nn.Linear | None = None) -> torch.nn.Linear:
    """Multinomial logistic regression: minimise mean CE + ``l2 * ||W||^2 / 2`` with L-BFGS (float64 for small
    problems, float32 otherwise); returns a float64 ``nn.Linear`` on the CPU.  ``init`` warm-starts it."""
    device = resolve_device(device)
    x = _as_tensor(features)
    n, d = x.shape
    compute = _compute_dtype(n, d, num_classes)
    chunk = _chunk_rows(n, d, num_classes, device)
    zero = torch.zeros(d, dtype=torch.float64)
    rows = _Rows(x, zero, torch.ones(d, dtype=torch.float64), None, device, compute, compute, chunk)
    y = labels.long().to(device)
    w = torch.zeros(num_classes, d, dtype=compute, device=device)
    b = torch.zeros(num_classes, dtype=compute, device=device)
    if init is not None:
        w.copy_(init.weight.detach()), b.copy_(init.bias.detach())
    with _threads(n * d * num_classes, device):
        _lbfgs(rows, y, 0, n, w, b, l2, max_iter)
    return _layer(w, b)


def accuracy(layer: torch.nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (layer(features.to(layer.weight.dtype)).argmax(1) == labels).double().mean().item()


def _stratified_split(labels: torch.Tensor, holdout: float, generator: torch.Generator):
    """Indices (fit, validation) with ``holdout`` of each class in validation (at least one if a class has 2+)."""
    fit, val = [], []
    order = torch.argsort(labels, stable=True)
    classes, counts = torch.unique_consecutive(labels[order], return_counts=True)
    for idx in torch.split(order, counts.tolist()):
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_val = int(round(holdout * len(idx))) if len(idx) > 1 else 0
        n_val = max(n_val, 1) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        fit.append(idx[n_val:])
    return torch.cat(fit), torch.cat(val)


def _check_inputs(train_x, train_y, test_x, test_y):
    if train_x.shape[0] != len(train_y) or test_x.shape[0] != len(test_y):
        raise ValueError(f"linear probe: {train_x.shape[0]} training features but {len(train_y)} labels, "
                         f"{test_x.shape[0]} test features but {len(test_y)} labels: pass one label per row")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"linear probe: training features have {train_x.shape[1]} dimensions, test features "
                         f"{test_x.shape[1]}: extract both splits with the same checkpoint and --pool")
    if len(train_y) == 0 or len(test_y) == 0:
        raise ValueError("linear probe: no training or no test features: check the evaluation splits")


def linear_probe(train_x, train_y: torch.Tensor, test_x, test_y: torch.Tensor, l2_grid=DEFAULT_L2_GRID,
                 holdout: float = 0.2, seed: int = 0, device="auto", max_iter: int = 200,
                 memory_bytes: int | None = None) -> ProbeResult:
    """Linear probe: pick the L2 strength on a stratified hold-out of the training split, refit on all of it,
    report test accuracy.  Features may be tensors or NumPy arrays (memmaps are read in chunks)."""
    t0 = time.perf_counter()
    train_x, test_x = _as_tensor(train_x), _as_tensor(test_x)
    train_y, test_y = _as_tensor(train_y).long(), _as_tensor(test_y).long()
    _check_inputs(train_x, train_y, test_x, test_y)
    device = resolve_device(device)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    n, d = train_x.shape
    compute = _compute_dtype(n, d, num_classes)
    storage = plan_storage(n + test_x.shape[0], d, num_classes, device, compute, memory_bytes)
    mean, std = feature_stats(train_x)
    g = torch.Generator().manual_seed(seed)
    fit_idx, val_idx = _stratified_split(train_y, holdout, g)
    order = torch.cat([fit_idx, val_idx])  # rows [0, n_fit) fit, [n_fit, n) hold-out, [0, n) all
    n_fit = len(fit_idx)
    chunk = _chunk_rows(n, d, num_classes, device)
    rows = _Rows(train_x, mean, std, order, device, storage, compute, chunk)
    labels = train_y[order].to(device)
    w = torch.zeros(num_classes, d, dtype=compute, device=device)
    b = torch.zeros(num_classes, dtype=compute, device=device)
    best_l2, best_hits, best = l2_grid[0], -1, None
    val_acc, iters = {}, 0
    with _threads(n * d * num_classes, device):
        if len(val_idx):
            for l2 in sorted(l2_grid, reverse=True):  # strongest first: each fit warm-starts the next
                iters += _lbfgs(rows, labels, 0, n_fit, w, b, l2, max_iter)
                hits = _correct(rows, labels, n_fit, n, w, b)
                val_acc[l2] = hits / (n - n_fit)
                # ties go to the smaller L2, as the old ascending walk with a strict '>' chose
                if hits > best_hits or (hits == best_hits and l2 < best_l2):
                    best_l2, best_hits, best = l2, hits, (w.detach().clone(), b.detach().clone())
            w, b = best
        iters += _lbfgs(rows, labels, 0, n, w, b, best_l2, max_iter)
        train_hits = _correct(rows, labels, 0, n, w, b)
        del rows
        test_rows = _Rows(test_x, mean, std, None, device, storage, compute, chunk)
        test_hits = _correct(test_rows, test_y.to(device), 0, test_rows.n, w, b)
    return ProbeResult(test_hits / len(test_y), best_l2, train_hits / n, protocol="lbfgs", device=str(device),
                       dtype=str(compute).replace("torch.", ""), storage=str(storage).replace("torch.", ""),
                       seconds=time.perf_counter() - t0, val_accuracy=dict(sorted(val_acc.items())),
                       iterations=iters)


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as the MAE linear probe uses it (MAE's ``util/lars.py``): SGD with momentum whose
    update of each matrix is scaled by ``eta * ||w|| / ||update||``; biases and norm parameters (1-D) are not
    scaled and get no weight decay."""

    def __init__(self, params, lr=0.0, weight_decay=0.0, momentum=0.9, trust_coefficient=0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if p.ndim > 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    param_norm, update_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.0,
                                    torch.where(update_norm > 0, g["trust_coefficient"] * param_norm / update_norm,
                                                one), one)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


def sgd_probe(train_x, train_y: torch.Tensor, test_x, test_y: torch.Tensor, *, epochs: int = 90,
              batch_size: int = 16384, base_lr: float = 0.1, warmup_epochs: int = 10, weight_decay: float = 0.0,
              seed: int = 0, device="auto") -> ProbeResult:
    """The MAE paper's linear probe on precomputed features: ``BatchNorm1d(affine=False, eps=1e-6)`` + a linear
    head (weights N(0, 0.01), bias 0), LARS with lr ``base_lr * batch / 256``, momentum 0.9, ``warmup_epochs`` of
    linear warm-up then a half-cycle cosine per step, cross-entropy; test accuracy after the last epoch (no L2
    search: ``l2`` is reported as ``weight_decay``)."""
    t0 = time.perf_counter()
    train_x, test_x = _as_tensor(train_x), _as_tensor(test_x)
    train_y, test_y = _as_tensor(train_y).long(), _as_tensor(test_y).long()
    _check_inputs(train_x, train_y, test_x, test_y)
    if epochs <= 0 or batch_size <= 0:
        raise ValueError(f"sgd probe: epochs ({epochs}) and batch size ({batch_size}) must be positive")
    device = resolve_device(device)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    n, d = train_x.shape
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(d, affine=False, eps=1e-6), torch.nn.Linear(d, num_classes))
    torch.nn.init.trunc_normal_(head[1].weight, std=0.01, generator=g)
    torch.nn.init.zeros_(head[1].bias)
    head = head.to(device)
    x_all = train_x.to(device=device, dtype=torch.float32)
    y_all = train_y.to(device)
    batch = min(batch_size, n)
    lr = base_lr * batch / 256
    opt = LARS(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, n // batch)  # drop_last, as MAE's loader
    total, warm = epochs * steps_per_epoch, warmup_epochs * steps_per_epoch
    step = 0
    with _threads(n * d * num_classes, device):
        for _ in range(epochs):
            perm = torch.randperm(n, generator=g).to(device)
            for k in range(steps_per_epoch):
                idx = perm[k * batch:(k + 1) * batch]
                for group in opt.param_groups:
                    group["lr"] = lr * step / warm if step < warm else \
                        lr * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
                loss = F.cross_entropy(head(x_all[idx]), y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
        head.eval()
        with torch.no_grad():
            train_hits = sum(int((head(x_all[i:i + 65536]).argmax(1) == y_all[i:i + 65536]).sum())
                             for i in range(0, n, 65536))
            del x_all
            test_hits = 0
            for i in range(0, test_x.shape[0], 65536):
                logits = head(test_x[i:i + 65536].to(device=device, dtype=torch.float32))
                test_hits += int((logits.argmax(1) == test_y[i:i + 65536].to(device)).sum())
    return ProbeResult(test_hits / len(test_y), weight_decay, train_hits / n, protocol="sgd", device=str(device),
                       dtype="float32", storage="float32", seconds=time.perf_counter() - t0, iterations=step)


def run_probe(kind: str, train_x, train_y, test_x, test_y, *, seed: int = 0, device="auto", **kwargs) -> ProbeResult:
    """``kind="lbfgs"`` (:func:`linear_probe`) or ``"sgd"`` (:func:`sgd_probe`)."""
    if kind == "lbfgs":
        return linear_probe(train_x, train_y, test_x, test_y, seed=seed, device=device, **kwargs)
    if kind == "sgd":
        return sgd_probe(train_x, train_y, test_x, test_y, seed=seed, device=device, **kwargs)
    raise ValueError(f"probe must be one of {PROBES}, got {kind!r}")


@dataclass
class FewShotResult:
    shots: int
    mean_accuracy: float
    std_accuracy: float
    accuracies: list[float]


def few_shot(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
             shots: int, draws: int = 5, l2: float = 1e-2, seed: int = 0, device="cpu") -> FewShotResult:
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
        layer = fit_logistic_regression(x, train_y[idx], num_classes, l2, device=device)
        accs.append(accuracy(layer, tx, test_y))
    t = torch.tensor(accs)
    return FewShotResult(shots, t.mean().item(), t.std(unbiased=False).item(), accs)


def _center(shot_x: torch.Tensor, test_x: torch.Tensor, pool_x: torch.Tensor):
    """1-shot has one image per class, too few for per-feature statistics: standardise with the statistics of
    the unlabelled training pool instead (labels are not used)."""
    mean = pool_x.mean(0, keepdim=True)
    std = pool_x.std(0, keepdim=True).clamp_min(1e-6)
    return (shot_x - mean) / std, (test_x - mean) / std
