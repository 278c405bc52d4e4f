"""Linear readers of residuals: logistic probes, CCS, random directions, a bilinear label probe.

All work on float32 feature matrices (items x d) and fit in full batch on the CPU. Contrast pairs
come as two matrices ``xa``, ``xb`` (one row per pair, the two members in a seeded random order)
and ``a_true`` (whether the first member is the true one); every truth reader is scored by
whether it picks the true member of a held-out pair (chance 50%), which needs no threshold and so
treats a calibrated probe, CCS, a prompted model and the decoder alike.

CCS (Burns et al. 2022) with the fixes of the later work: each member set is normalised by its own
mean and standard deviation (per-class normalisation, so the probe cannot read which prompt
variant it sees), the probe is fitted from several random starts and the start with the lowest
unsupervised loss is kept, and its sign (CCS cannot tell true from false) is fixed by its
accuracy on the *training* pairs, never on the pairs it is scored on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Centre and scale every matrix by the train rows' per-feature mean and std."""
    mean = train.mean(0, keepdim=True)
    std = train.std(0, keepdim=True).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


def normalize_classes(xa: torch.Tensor, xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class normalisation of one split's pair members (each set by its own statistics)."""
    return standardize(xa)[0], standardize(xb)[0]


@dataclass
class Linear:
    """A direction and bias: the score of ``x`` is ``x @ w + b``."""

    w: torch.Tensor
    b: torch.Tensor

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w + self.b


def _lbfgs(params: list[torch.Tensor], loss_fn, max_iter: int) -> None:
    opt = torch.optim.LBFGS(params, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, max_iter: int = 100) -> Linear:
    """Binary logistic regression (labels 0/1) with an L2 penalty on ``w``, by L-BFGS."""
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    y = y.float()

    def loss():
        logits = x @ w + b
        return F.binary_cross_entropy_with_logits(logits, y) + l2 * (w * w).sum()

    with torch.enable_grad():
        _lbfgs([w, b], loss, max_iter)
    return Linear(w.detach(), b.detach())


def ccs_loss(probe: Linear, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """Consistency (p(a) = 1 - p(b)) plus confidence (not both near 0.5); one value per column
    of ``probe.w`` when it holds several probes (d x R)."""
    pa, pb = torch.sigmoid(probe.score(xa)), torch.sigmoid(probe.score(xb))
    return ((pa - (1 - pb)) ** 2).mean(0) + (torch.minimum(pa, pb) ** 2).mean(0)


def fit_ccs(
    xa: torch.Tensor,
    xb: torch.Tensor,
    restarts: int = 10,
    steps: int = 300,
    seed: int = 0,
    lr: float = 1e-2,
) -> Linear:
    """CCS on normalised pair members; the restart with the lowest loss (sign not yet fixed).

    The restarts are trained together, as the columns of one (d x restarts) matrix: their losses
    add up, so each column follows its own gradient.
    """
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(xa.shape[1], restarts, generator=generator) / xa.shape[1] ** 0.5
    w.requires_grad_(True)
    b = torch.zeros(restarts, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            ccs_loss(Linear(w, b), xa, xb).sum().backward()
            opt.step()
    with torch.no_grad():
        best = int(torch.argmin(ccs_loss(Linear(w, b), xa, xb)))
    return Linear(w.detach()[:, best].clone(), b.detach()[best].clone())


def ccs_choice(probe: Linear, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """Whether CCS says the first member is the true one: 0.5 (p(a) + 1 - p(b)) > 0.5."""
    pa, pb = torch.sigmoid(probe.score(xa)), torch.sigmoid(probe.score(xb))
    return 0.5 * (pa + 1 - pb) > 0.5


def orient(probe: Linear, choice, xa, xb, a_true: torch.Tensor) -> Linear:
    """The probe, negated if it picks the true member of fewer than half the *training* pairs."""
    accuracy = (choice(probe, xa, xb) == a_true.bool()).float().mean()
    return probe if accuracy >= 0.5 else Linear(-probe.w, -probe.b)


def score_choice(probe: Linear, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """Whether the first member scores higher (the probe's pick of the true member)."""
    return probe.score(xa) > probe.score(xb)


def random_probes(d: int, n: int, seed: int) -> list[Linear]:
    """``n`` random unit directions (the baseline a reader must beat)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        w = torch.randn(d, generator=generator)
        out.append(Linear(w / w.norm(), torch.zeros(())))
    return out


# --- which label, among labels never trained on -------------------------------------------------


def fit_label_probe(
    x: torch.Tensor, target: torch.Tensor, label_emb: torch.Tensor, l2: float, max_iter: int = 100
) -> torch.Tensor:
    """Multinomial logistic regression whose class weights are ``W @ e_c`` for label embeddings.

    ``x`` (n x d) standardised features, ``target`` (n,) indices into ``label_emb`` (k x e), the
    embeddings of the training labels' descriptions. The class of a label never seen in training
    is scored the same way from its own embedding, so the map ``W`` (d x e) carries over to
    held-out labels.
    """
    weight = torch.zeros(x.shape[1], label_emb.shape[1], requires_grad=True)

    def loss():
        logits = (x @ weight) @ label_emb.T
        return F.cross_entropy(logits, target) + l2 * (weight * weight).sum()

    with torch.enable_grad():
        _lbfgs([weight], loss, max_iter)
    return weight.detach()


def label_choice(
    x: torch.Tensor, weight: torch.Tensor, candidates: torch.Tensor, options: list[list[int]]
) -> list[int]:
    """Per item, the index (into ``candidates``) of the best scoring of its ``options``."""
    scores = (x @ weight) @ candidates.T
    return [opts[int(torch.argmax(scores[i, opts]))] for i, opts in enumerate(options)]


def random_maps(d: int, e: int, n: int, seed: int) -> list[torch.Tensor]:
    """``n`` random (d x e) maps: the label probe's baseline."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(d, e, generator=generator) / d**0.5 for _ in range(n)]
