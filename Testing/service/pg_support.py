"""A throwaway PostgreSQL cluster for the tests: Debian's ``postgresql`` binaries (``initdb``,
``pg_ctl``), a data and socket folder of its own under /tmp, listening on 127.0.0.1 on a free port.

PostgreSQL refuses to run as root, and CI runs as root: the cluster then runs as the ``postgres`` user
that Debian's package creates (or ``nobody`` where there is none), started with ``subprocess``'s
``user=``/``group=`` so no ``su``/``runuser`` is needed. Authentication is ``trust`` on 127.0.0.1 only.

Each test database belongs to the role ``synergypl``, which is not a superuser: the service runs
with exactly the rights the README asks a team to grant (own database, create tables in it).

In: nothing (the binaries are found under /usr/lib/postgresql/<version>/bin or on PATH).
Out: :class:`PostgresCluster` with ``create_database(name) -> SQLAlchemy URL`` and ``stop()``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from svc_support import free_port

ROLE = "synergypl"


def find_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])
                   if p.parts[-3].isdigit() else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run the cluster as when we are root; None when we are not."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
            return pw.pw_uid, pw.pw_gid
        except KeyError:
            continue
    raise RuntimeError("running as root and there is neither a 'postgres' nor a 'nobody' user to run PostgreSQL as")


class PostgresCluster:
    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.port = free_port()
        self.user = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="synergypl-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.started = False

    def _cmd(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        kw = {}
        if self.user is not None:
            kw = {"user": self.user[0], "group": self.user[1], "extra_groups": []}
        r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, cwd=self.root,
                           env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "LANG": "C"}, **kw)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n{self._log()}")
        return r

    def _log(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def start(self) -> PostgresCluster:
        if self.user is not None:
            os.chown(self.root, *self.user)
        self._cmd(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        # fsync off: the tests kill the service, never PostgreSQL, so durability across a PostgreSQL crash
        # is not what they measure; it keeps 2 shared cores free for the service.
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                "-c fsync=off -c max_connections=200")
        self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60",
                  "start")
        self.started = True
        self.sql(f"CREATE ROLE {ROLE} LOGIN")
        return self

    def sql(self, statement: str, dbname: str = "postgres") -> list[tuple]:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname,
                             autocommit=True) as con:
            cur = con.execute(statement)
            return cur.fetchall() if cur.description else []

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database owned by the unprivileged role; its SQLAlchemy URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.sql(f"CREATE DATABASE {name} OWNER {ROLE}")
        return f"postgresql+psycopg://{ROLE}@127.0.0.1:{self.port}/{name}"

    def version(self) -> str:
        return self.sql("SHOW server_version")[0][0]

    def stop(self) -> None:
        if self.started:
            self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)
