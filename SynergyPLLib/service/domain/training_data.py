"""Which cases a training round uses, and the validation hold-out.

In: the workspace and ``labels`` = ``"confirmed"`` (cases whose latest label version is confirmed) or
``"all"`` (every case with a label version, in review or confirmed).
Out: ``{"labeled": [...], "validation": [...], "unlabeled": [...]}``, each a list of
``{"id", "image", "label", "label_version"}`` (paths relative to the project).

Validation hold-out: of n labeled cases, ``max(1, round(fraction * n))`` (fraction from
``service.validation_fraction``, default 0.2) but never all of them, chosen by a stable hash of the
case id (seeded with ``service.validation_seed``), so a case keeps its role as the project grows.
The held-out cases choose the checkpoint and fit the temperature; they are not trained on.
With a single labeled case there is nothing to hold out: it is used for training and validation.
Cases without any label version are the unlabeled pool for semi-supervised training (in "confirmed"
mode, cases whose latest label is still in review are used as unlabeled too).
"""

from __future__ import annotations

import hashlib

from sqlalchemy import select

from ..store.db import Case
from ..store.workspace import Workspace
from .cases import _latest_maps
from .errors import Conflict

LABEL_MODES = ("confirmed", "all")


def split_validation(ids: list[str], fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train_ids, validation_ids) as documented in the module docstring."""
    ids = sorted(ids)
    n = len(ids)
    if n < 2 or fraction <= 0:
        return ids, list(ids) if n == 1 else []
    n_val = min(n - 1, max(1, round(fraction * n)))
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    val = sorted(ranked[:n_val])
    return [i for i in ids if i not in val], val


def select_cases(ws: Workspace, labels: str = "confirmed") -> dict:
    """The round's cases; 409 when there is no usable labeled case."""
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {', '.join(LABEL_MODES)}")
    with ws.db.Session() as s:
        latest, _ = _latest_maps(s)
        cases = list(s.scalars(select(Case).order_by(Case.id)))
    labeled, unlabeled = {}, []
    for c in cases:
        lv = latest.get(c.id)
        usable = lv is not None and (labels == "all" or lv.status == "confirmed")
        entry = {"id": c.id, "image": c.image_path, "label": lv.path if usable else None,
                 "label_version": lv.version if usable else None}
        if usable:
            labeled[c.id] = entry
        elif lv is None or labels == "confirmed":
            unlabeled.append(entry)
    from .pacs import ensure_images

    ensure_images(ws, list(labeled))  # PACS cases: labeled ones fetched now, unfetched unlabeled ones left out
    unlabeled = [e for e in unlabeled if ws.abs(e["image"]).exists()]
    if not labeled:
        what = "confirmed label" if labels == "confirmed" else "label"
        raise Conflict(f"no case has a {what} yet; submit at least one label before training")
    fraction, seed = ws.config.service.validation_fraction, ws.config.service.validation_seed
    train_ids, val_ids = split_validation(list(labeled), fraction, seed)
    return {"labels": labels,
            "labeled": [labeled[i] for i in train_ids],
            "validation": [labeled[i] for i in val_ids],
            "unlabeled": unlabeled}
