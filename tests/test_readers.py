"""The linear readers on planted signals: the logistic probe and CCS find a planted truth direction
that random directions miss; CCS's sign is fixed on training pairs only; the bilinear label probe
names labels it never saw in training."""

from __future__ import annotations

import torch

from pipeline.analysis.readers import (
    ccs_choice,
    fit_ccs,
    fit_label_probe,
    fit_logistic,
    label_choice,
    normalize_classes,
    orient,
    random_maps,
    random_probes,
    score_choice,
    standardize,
)


def planted_pairs(n: int, d: int = 32, strength: float = 3.0, seed: int = 0):
    """Pairs whose true member sits ``strength`` along a hidden direction above the false one,
    plus a large nuisance shared within each pair (the statement's topic)."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.zeros(d)
    direction[3] = 1.0
    topic = 4 * torch.randn(n, d, generator=g)
    truth = topic + strength / 2 * direction + 0.5 * torch.randn(n, d, generator=g)
    false = topic - strength / 2 * direction + 0.5 * torch.randn(n, d, generator=g)
    a_true = torch.rand(n, generator=g) < 0.5
    xa = torch.where(a_true[:, None], truth, false)
    xb = torch.where(a_true[:, None], false, truth)
    return xa, xb, a_true


def accuracy(picks: torch.Tensor, a_true: torch.Tensor) -> float:
    return float((picks == a_true).float().mean())


def test_logistic_probe_and_ccs_find_a_planted_direction_random_ones_do_not():
    xa, xb, a_true = planted_pairs(200)
    ta, tb, t_true = planted_pairs(200, seed=1)
    # Logistic: statements one by one, truth labels.
    x = torch.cat([xa, xb])
    y = torch.cat([a_true, ~a_true]).float()
    x, ta_s, tb_s = standardize(x, ta, tb)
    probe = fit_logistic(x, y, l2=1e-2)
    logistic = accuracy(score_choice(probe, ta_s, tb_s), t_true)
    # CCS: unsupervised on the training pairs, sign from the training labels.
    na, nb = normalize_classes(xa, xb)
    ccs = orient(fit_ccs(na, nb, restarts=4, steps=200), ccs_choice, na, nb, a_true)
    ca, cb = normalize_classes(ta, tb)
    ccs_acc = accuracy(ccs_choice(ccs, ca, cb), t_true)
    randoms = [
        accuracy(score_choice(orient(p, score_choice, na, nb, a_true), ca, cb), t_true)
        for p in random_probes(32, 20, seed=0)
    ]
    random_acc = sum(randoms) / len(randoms)
    assert logistic > 0.95 and ccs_acc > 0.95
    assert random_acc < 0.75
    assert min(logistic, ccs_acc) > random_acc + 0.2


def test_ccs_sign_comes_from_training_pairs_not_test_labels():
    xa, xb, a_true = planted_pairs(100)
    ta, tb, t_true = planted_pairs(100, seed=2)
    na, nb = normalize_classes(xa, xb)
    ca, cb = normalize_classes(ta, tb)
    probe = fit_ccs(na, nb, restarts=2, steps=100)
    oriented = orient(probe, ccs_choice, na, nb, a_true)
    flipped = orient(probe, ccs_choice, na, nb, ~a_true)
    # Orienting on the opposite training labels flips every test pick; test labels play no part.
    assert torch.equal(ccs_choice(oriented, ca, cb), ~ccs_choice(flipped, ca, cb))
    assert accuracy(ccs_choice(oriented, ca, cb), t_true) > 0.9


def test_label_probe_names_held_out_labels_from_their_embeddings():
    g = torch.Generator().manual_seed(0)
    d, e, n_labels = 24, 8, 40
    emb = torch.nn.functional.normalize(torch.randn(n_labels, e, generator=g), dim=-1)
    mix = torch.randn(e, d, generator=g)  # residual = embedding of the label, mixed, plus noise

    def dialogs(labels):
        idx = torch.tensor([lab for lab in labels for _ in range(3)])
        return emb[idx] @ mix + 0.3 * torch.randn(len(idx), d, generator=g), idx

    train_x, train_y = dialogs(range(30))
    test_x, test_y = dialogs(range(30, 40))
    train_x, test_x = standardize(train_x, test_x)
    weight = fit_label_probe(train_x, train_y, emb[:30], l2=1e-4)
    options = [list(range(30, 40))] * len(test_y)
    picks = torch.tensor(label_choice(test_x, weight, emb, options))
    probe_acc = float((picks == test_y).float().mean())
    baseline = [
        float((torch.tensor(label_choice(test_x, w, emb, options)) == test_y).float().mean())
        for w in random_maps(d, e, 20, seed=0)
    ]
    assert probe_acc > 0.8  # chance is 0.1
    assert sum(baseline) / len(baseline) < 0.3
