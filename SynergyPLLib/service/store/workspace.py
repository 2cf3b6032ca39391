"""One open project: its folder, configuration and database, shared by the API process and workers.

In: the project folder.  Out: :class:`Workspace` with ``root``, ``config`` (:class:`ProjectConfig`),
``db`` (:class:`~.db.Database`) and path helpers. ``rel``/``abs`` convert between the relative paths
kept in the database and real paths, so a project folder can be moved.
"""

from __future__ import annotations

from pathlib import Path

from .db import Database
from .files import check_case_id
from .project import ProjectConfig


class Workspace:
    def __init__(self, root: str | Path, *, create_db: bool = True) -> None:
        self.root = Path(root).resolve()
        self.config = ProjectConfig.load(self.root)
        self.db = Database(self.config.database_url(self.root))
        if create_db:
            self.db.create()
        for sub in ("cases", "models", "logs", "tmp"):
            (self.root / sub).mkdir(exist_ok=True)

    # paths ----------------------------------------------------------------------------------------
    def abs(self, rel: str | Path) -> Path:
        return self.root / rel

    def rel(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.root))

    def case_dir(self, case_id: str) -> Path:
        return self.root / "cases" / check_case_id(case_id)

    def model_dir(self, job_id: int) -> Path:
        return self.root / "models" / f"job-{job_id:06d}"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def close(self) -> None:
        self.db.dispose()
