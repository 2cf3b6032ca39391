"""Better soft pseudo-labels (Porcher et al. 2024), adapted to voxel classes.

- :class:`ClassPrototypes`: running mean feature per class (from the network's last feature map on
  labeled voxels) and the class-similarity smoothing rows derived from their cosine similarity: the
  label-smoothing mass of class c goes to the classes most similar to c, not uniformly.
- :func:`rare_class_scale`: per-class factor (<= 1) on the confidence bar so that rare classes, which the
  teacher predicts with less confidence, pass the confident-region selection more often.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class ClassPrototypes:
    """Exponential moving average of per-class mean features.

    ``update(features (B, F, ...), labels (B, ...))`` adds one batch; ``smoothing_rows()`` returns a
    (C, C) row-stochastic matrix with zero diagonal: row c spreads smoothing mass over the other classes
    in proportion to their (positive) cosine similarity to c, uniform when none is similar.
    """

    def __init__(self, num_classes: int, momentum: float = 0.9):
        self.num_classes = num_classes
        self.momentum = momentum
        self.prototypes: torch.Tensor | None = None  # (C, F)
        self.seen = torch.zeros(num_classes, dtype=torch.bool)

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        feats = features.detach().float()
        if labels.shape[-3:] != feats.shape[-3:]:
            labels = F.interpolate(labels[:, None].float(), size=feats.shape[-3:], mode="nearest")[:, 0]
        flat = feats.movedim(1, -1).reshape(-1, feats.shape[1])
        lab = labels.reshape(-1).long().to(flat.device)
        if self.prototypes is None:
            self.prototypes = torch.zeros(self.num_classes, flat.shape[1])
        for c in range(self.num_classes):
            sel = lab == c
            if not sel.any():
                continue
            mean = flat[sel].mean(0).cpu()
            if self.seen[c]:
                self.prototypes[c] = self.momentum * self.prototypes[c] + (1 - self.momentum) * mean
            else:
                self.prototypes[c] = mean
                self.seen[c] = True

    def similarity(self) -> torch.Tensor:
        """(C, C) cosine similarity of the prototypes (identity where a class was never seen)."""
        if self.prototypes is None:
            return torch.eye(self.num_classes)
        p = F.normalize(self.prototypes, dim=1)
        sim = p @ p.T
        unseen = ~self.seen
        sim[unseen, :] = 0
        sim[:, unseen] = 0
        return sim.fill_diagonal_(1.0)

    def smoothing_rows(self) -> torch.Tensor:
        c = self.num_classes
        weights = self.similarity().clamp_min(0).fill_diagonal_(0)
        uniform = (torch.ones(c, c) - torch.eye(c)) / max(1, c - 1)
        sums = weights.sum(1, keepdim=True)
        return torch.where(sums > 1e-8, weights / sums.clamp_min(1e-8), uniform)

    def state_dict(self) -> dict:
        return {"prototypes": self.prototypes, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.prototypes = state["prototypes"]
        self.seen = state["seen"]


def class_frequencies(labels: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Share of voxels of each class over the given label maps (sums to 1)."""
    counts = np.zeros(num_classes, dtype=np.float64)
    for lab in labels:
        counts += np.bincount(lab.ravel(), minlength=num_classes)[:num_classes]
    return counts / max(counts.sum(), 1.0)


def rare_class_scale(frequencies: np.ndarray, power: float) -> torch.Tensor:
    """Confidence-bar factor per class: ``(freq_c / freq_max) ** power`` (1 for the commonest class).

    With power 0.25, a class 45 times rarer than background needs about 39% of the usual margin.
    """
    f = np.clip(np.asarray(frequencies, dtype=np.float64), 1e-8, None)
    return torch.tensor((f / f.max()) ** power, dtype=torch.float32)


def rare_boost_weights(frequencies: np.ndarray, power: float) -> torch.Tensor:
    """Per-class weight on the teacher's probabilities (Porcher's rare-class boost, for voxel classes).

    Rarity is measured among the *foreground* classes (index >= 1) on the labeled data:
    ``w_c = (f_common / f_c) ** power`` with ``f_common`` the frequency of the commonest foreground class;
    background keeps 1. Two foreground classes of similar size (hippocampus) get weights near 1; a class
    absent from the labels gets the weight of the rarest seen one.
    """
    f = np.asarray(frequencies, dtype=np.float64)
    w = np.ones(f.shape[0])
    fg = f[1:]
    if fg.size and fg.max() > 0:
        seen = fg[fg > 0]
        w[1:] = (fg.max() / np.where(fg > 0, fg, seen.min())) ** power
    return torch.tensor(w, dtype=torch.float32)


def boost_probabilities(probs: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``p_c * w_c / sum_k p_k * w_k`` over the class axis 1 (identity when ``weights`` is None)."""
    if weights is None:
        return probs
    w = weights.to(probs).view(1, -1, *([1] * (probs.dim() - 2)))
    boosted = probs * w
    return boosted / boosted.sum(1, keepdim=True).clamp_min(1e-12)


def soft_pseudo_targets(probs: torch.Tensor, eps: float, smoothing_rows: torch.Tensor | None) -> torch.Tensor:
    """Soft pseudo-label targets (B, C, ...) from the (boosted, calibrated) teacher probabilities:
    ``(1 - eps) * onehot(argmax) + eps * R[argmax]``, R the similar-class rows (uniform if None)."""
    hard = probs.argmax(1)
    c = probs.shape[1]
    onehot = F.one_hot(hard, c).movedim(-1, 1).to(probs)
    if eps <= 0:
        return onehot
    spread = (torch.full((c, c), 1.0 / c) if smoothing_rows is None else smoothing_rows).to(probs)[hard].movedim(-1, 1)
    return (1 - eps) * onehot + eps * spread
