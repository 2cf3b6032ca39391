"""The per-project token file: where a server's token lives so that local clients find it themselves.

``synergypl serve`` writes the token it uses to ``<project>/.synergypl-token`` (mode 0600, so only the
user who runs the server can read it), generating one on the first start. Anyone who knows the project
folder *and* may read that file -- the client library, the CLI, the Slicer panel's *Start local server*
-- calls :func:`token_for_project` instead of asking the user to type a token.

Standard library only (it runs in Slicer's Python 3.9-3.12).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

TOKEN_FILE_NAME = ".synergypl-token"
MIN_TOKEN_LENGTH = 8


def token_file(project: str | os.PathLike) -> Path:
    """The path of ``project``'s token file (it may not exist yet)."""
    return Path(project).expanduser() / TOKEN_FILE_NAME


def token_for_project(project: str | os.PathLike) -> str | None:
    """The token of the server of ``project`` (a folder), or None when no server has run on it yet or
    the file cannot be read by this user."""
    try:
        text = token_file(project).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def write_project_token(project: str | os.PathLike, token: str) -> Path:
    """Store ``token`` as ``project``'s token, readable by this user only (0600), atomically.

    Returns the file's path. Raises OSError when the folder cannot be written."""
    path = token_file(project)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    try:
        if hasattr(os, "fchmod"):  # a left-over tmp file would keep its old mode
            os.fchmod(fd, 0o600)
        os.write(fd, (token + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(str(tmp), str(path))
    return path


def ensure_project_token(project: str | os.PathLike, token: str | None = None) -> tuple[str, Path]:
    """The token ``serve`` uses for ``project``: ``token`` when given (a team's token), else the one
    already in the project's token file, else a new one. Writes it to the token file (0600) unless
    the file already holds it with safe permissions. Returns (token, path of the file)."""
    path = token_file(project)
    current = token_for_project(project)
    chosen = token or current or new_token()
    if chosen != current or _too_open(path):
        write_project_token(project, chosen)
    return chosen, path


def _too_open(path: Path) -> bool:
    """True when others than the owner may read or write ``path`` (POSIX only)."""
    if os.name != "posix":
        return False
    try:
        return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return True
