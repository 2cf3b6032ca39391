"""The project database: SQLAlchemy 2 models and engine set-up. SQLite in WAL mode by default (a file in
the project folder); PostgreSQL (tested: 15, driver psycopg 3) when ``service.database_url`` in
``project.yaml`` or the environment variable ``SYNERGYPL_DATABASE_URL`` names one
(``postgresql://user@host/db`` is read as ``postgresql+psycopg://...``).

Tables: ``cases``, ``label_versions`` (write-once rows, unique per case and version), ``model_versions``,
``predictions``, ``jobs`` and ``meta`` (key/value, e.g. the active model).

:func:`write_session` is the transaction for read-check-insert sequences (label versions, job start,
a worker claiming a job, a round registering its model): in this process a lock serialises them; across
processes (the API and its workers) the database does. On SQLite the transaction is ``BEGIN IMMEDIATE``
(the write lock is taken before the check, so another process cannot slip in between); on PostgreSQL it
first takes a transaction-level advisory lock (``pg_advisory_xact_lock``), the same one-writer rule,
released at commit or rollback, also when the process is killed. Label versions also lock their case
row (``SELECT ... FOR UPDATE``), and the unique constraint on ``(case_id, version)`` is the last line of
defence.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from ...common.job_status import JobStatus

# Ids and version numbers are INTEGER columns: 32-bit on PostgreSQL. The API bounds every id it is given
# to 1..MAX_ID, so a number no column can hold is a clear 4xx, not an overflow in the driver.
MAX_ID = 2**31 - 1

def now() -> datetime:
    return datetime.now(UTC)


class StatusText(TypeDecorator):
    """A job's status: a :class:`JobStatus` member is stored (and compared) as its plain value."""

    impl = String(12)
    cache_ok = True

    def process_bind_param(self, value, dialect):  # noqa: ANN001
        return None if value is None else JobStatus(value).value


class UTCDateTime(TypeDecorator):
    """Timestamps stored as naive UTC (SQLite has no time zones) and returned as aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):  # noqa: ANN001
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):  # noqa: ANN001
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class Case(Base):
    __tablename__ = "cases"
    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    source_format: Mapped[str] = mapped_column(String(20))  # nrrd | nifti | mha | dicom
    original_name: Mapped[str] = mapped_column(String(255), default="")
    image_path: Mapped[str] = mapped_column(String(500))  # relative to the project folder
    dicom_dir: Mapped[str | None] = mapped_column(String(500), nullable=True)
    geometry: Mapped[dict] = mapped_column(JSON)  # shape, spacing, origin, direction (LPS)
    image_sha256: Mapped[str] = mapped_column(String(64))


class LabelVersion(Base):
    __tablename__ = "label_versions"
    __table_args__ = (UniqueConstraint("case_id", "version", name="uq_case_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    parent_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    author: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(10))  # human | model
    status: Mapped[str] = mapped_column(String(20))  # confirmed | in_review
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    path: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(String(64))
    voxels: Mapped[dict] = mapped_column(JSON, default=dict)  # {class value: count}
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    job_id: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(500))  # model.pt, relative to the project folder
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    parent_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    data: Mapped[dict] = mapped_column(JSON, default=dict)  # training/validation case ids, label versions


class Prediction(Base):
    __tablename__ = "predictions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[int] = mapped_column(Integer)
    model_version: Mapped[int] = mapped_column(Integer)
    dir: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    disagreement: Mapped[float] = mapped_column(Float, default=0.0)
    flagged_voxels: Mapped[int] = mapped_column(Integer, default=0)
    n_regions: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(10), index=True)  # train | predict
    status: Mapped[str] = mapped_column(StatusText, index=True, default=JobStatus.QUEUED.value)
    case_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    progress: Mapped[dict] = mapped_column(JSON, default=dict)
    result: Mapped[dict] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)  # used (predict) / made (train)
    resume_of: Mapped[int | None] = mapped_column(Integer, nullable=True)
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)


# Any constant: the key of the advisory lock that write_session takes on PostgreSQL.
PG_WRITE_LOCK = 0x53594E50  # "SYNP"


def normalise_url(url: str) -> str:
    """``postgresql://`` / ``postgres://`` -> ``postgresql+psycopg://`` (the driver installed with the
    service); other URLs unchanged."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


class Database:
    """Engine + session factory for one project; safe to share between threads of a process."""

    def __init__(self, url: str) -> None:
        url = normalise_url(url)
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.is_postgres = url.startswith("postgresql")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 60, "check_same_thread": False}
        else:
            # a server restart or an idle-connection timeout must not turn the next request into a 500
            kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=20, pool_timeout=60)
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            _sqlite_setup(self.engine)
        self._immediate = self.engine.execution_options(synergypl_begin="IMMEDIATE")
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self._immediate, expire_on_commit=False)
        self.lock = threading.RLock()

    def create(self) -> None:
        Base.metadata.create_all(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read/write session committed at the end (rolled back on error)."""
        with self.Session() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        """A serialised transaction for check-then-insert (see module docstring)."""
        with self.lock, self._write() as s:
            try:
                if self.is_postgres:
                    s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_WRITE_LOCK})
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self.Session() as s:
            row = s.get(Meta, key)
            return default if row is None else row.value

    def set_meta(self, s: Session, key: str, value: Any) -> None:
        row = s.get(Meta, key)
        if row is None:
            s.add(Meta(key=key, value=value))
        else:
            row.value = value

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_setup(engine: Engine) -> None:
    """WAL journal, full fsync, foreign keys; BEGIN emitted by us so IMMEDIATE is possible."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):  # noqa: ANN001
        mode = conn.get_execution_options().get("synergypl_begin", "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())


def copy_database(src: Database, dst: Database) -> dict[str, int]:
    """Copy every row of ``src`` into the empty database ``dst`` (e.g. a project's SQLite file into its
    new PostgreSQL database), then move ``dst``'s id sequences past the copied ids so that new rows do not
    collide. Returns the number of rows per table."""
    dst.create()
    counts = {}
    with src.engine.connect() as a, dst.engine.begin() as b:
        for table in Base.metadata.sorted_tables:  # parents before children (foreign keys)
            rows = [dict(r._mapping) for r in a.execute(select(table))]
            if rows:
                b.execute(insert(table), rows)
            counts[table.name] = len(rows)
        if dst.is_postgres:
            for table in Base.metadata.sorted_tables:
                for col in table.primary_key.columns:
                    seq = b.scalar(text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": col.name})
                    if seq:  # a SERIAL id column
                        top = b.scalar(select(func.max(col))) or 0
                        b.execute(text("SELECT setval(:s, :v, :called)"), {"s": seq, "v": max(top, 1), "called": top > 0})
    return counts


def latest_label(s: Session, case_id: str) -> LabelVersion | None:
    return s.scalars(select(LabelVersion).where(LabelVersion.case_id == case_id)
                     .order_by(LabelVersion.version.desc()).limit(1)).first()


def latest_prediction(s: Session, case_id: str) -> Prediction | None:
    return s.scalars(select(Prediction).where(Prediction.case_id == case_id)
                     .order_by(Prediction.id.desc()).limit(1)).first()
