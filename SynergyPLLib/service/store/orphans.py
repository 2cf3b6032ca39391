"""Files a crash left behind: written, but never registered in the database.

A label version or a prediction is published as a file/folder first and registered second (see
:mod:`.files`), so a ``kill -9`` between the two leaves a file that no row points at. At start,
before any worker runs, :func:`remove_orphans` deletes such label files
(``cases/<id>/labels/*.nrrd``) and prediction folders (``cases/<id>/predictions/job-*``), and moves a
case folder without a case row (a crash while adding a case) to ``trash/``.

Never a referenced file: only paths no row names are touched, only inside case folders whose case row
exists; and when the database holds no case at all while case folders exist (e.g. the service was
pointed at the wrong database), nothing is touched.

In: a :class:`~.workspace.Workspace`.  Out: counts of what was removed, by kind.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from sqlalchemy import select

from .db import Case, LabelVersion, Prediction
from .files import move_to_trash
from .workspace import Workspace

log = logging.getLogger("synergypl.orphans")


def remove_orphans(ws: Workspace) -> dict[str, int]:
    """Delete unregistered label files and prediction folders; trash unregistered case folders."""
    counts = {"label_files": 0, "prediction_dirs": 0, "case_dirs": 0}
    cases_root = ws.root / "cases"
    folders = [p for p in cases_root.iterdir() if p.is_dir()] if cases_root.exists() else []
    if not folders:
        return counts
    with ws.db.Session() as s:
        case_ids = set(s.scalars(select(Case.id)))
        labels = {_norm(p) for p in s.scalars(select(LabelVersion.path))}
        predictions = {_norm(p) for p in s.scalars(select(Prediction.dir))}
    if not case_ids:
        log.warning("the database has no cases but %s holds %d case folders; leaving them alone (is "
                    "service.database_url right?)", cases_root, len(folders))
        return counts
    for folder in folders:
        if folder.name not in case_ids:
            move_to_trash(ws.root, folder, note="-unregistered")
            counts["case_dirs"] += 1
            continue
        for f in sorted((folder / "labels").glob("*.nrrd")):
            if f.is_file() and not f.name.startswith(".") and _norm(ws.rel(f)) not in labels:
                f.unlink()
                counts["label_files"] += 1
        for d in sorted((folder / "predictions").glob("job-*")):
            if d.is_dir() and _norm(ws.rel(d)) not in predictions:
                shutil.rmtree(d)
                counts["prediction_dirs"] += 1
    if any(counts.values()):
        log.warning("removed what a crash left unregistered: %s", counts)
    return counts


def _norm(rel: str) -> str:
    return Path(rel).as_posix().strip("/")

