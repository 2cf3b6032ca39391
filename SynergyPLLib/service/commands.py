"""The service's subcommands of ``synergypl``: ``init``, ``serve``, ``token`` (``demo`` lives in cli.py).

``add_parsers(subparsers)`` is called by :mod:`SynergyPLLib.cli`; each parser sets ``func`` to a
function taking the parsed arguments and returning an exit code. Heavy imports happen inside them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .settings import DEFAULT_HOST, DEFAULT_PORT


def cmd_init(args) -> int:
    if getattr(args, "from_dicomweb", None):  # a project whose cases are PACS series (docs/pacs.md)
        from .domain.pacs import cmd_init_dicomweb

        return cmd_init_dicomweb(args)
    from .domain.project_init import init_project

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    ws = init_project(Path(args.project), Path(args.source) if args.source else None, labeled=args.labeled,
                      limit=args.cases, name=args.name, classes=classes, profile=args.profile,
                      max_upload_mb=args.max_upload_mb, database_url=args.database_url)
    from .domain.cases import list_cases

    cases = list_cases(ws)
    n_lab = sum(1 for c in cases if c["status"] == "confirmed")
    print(f"created project {ws.config.name!r} at {ws.root}: {len(cases)} cases, {n_lab} labeled; "
          f"classes {[c.name for c in ws.config.classes]}; edit {ws.root / 'project.yaml'} to change names, "
          f"colours, terminology or engine options")
    ws.close()
    return 0


def cmd_serve(args) -> int:
    from .server import serve
    from .settings import ServiceSettings, SettingsError

    try:
        token = _serve_token(args)
        allowed = tuple(args.allowed_host or ()) + ServiceSettings.allowed_hosts_from_env()
        settings = ServiceSettings(project=Path(args.project).resolve(), host=args.host, port=args.port,
                                   token=token, token_everywhere=args.token_everywhere,
                                   loopback_without_token=args.loopback_without_token, allowed_hosts=allowed,
                                   max_upload_mb=args.max_upload_mb, log_level=args.log_level)
        return serve(settings)
    except SettingsError as exc:
        print(f"synergypl serve: {exc}", file=sys.stderr)
        return 2


def _serve_token(args) -> str | None:
    """The token given to ``serve``: --token-file, else --token (with a warning: other users see the
    command line in `ps`), else SYNERGYPL_TOKEN; None lets the server use the project's own token."""
    from .settings import ServiceSettings, SettingsError

    if args.token_file:
        path = Path(args.token_file).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"cannot read the token file {path}: {exc}") from None
        if not token:
            raise SettingsError(f"the token file {path} is empty")
        if os.name == "posix" and path.stat().st_mode & 0o077:
            print(f"synergypl serve: warning: {path} can be read by other users; `chmod 600 {path}`",
                  file=sys.stderr)
        return token
    if args.token:
        print("synergypl serve: warning: a token given with --token is visible to every user of this machine "
              "(`ps`, /proc/PID/cmdline); use --token-file FILE or the SYNERGYPL_TOKEN environment variable",
              file=sys.stderr)
        return args.token
    return ServiceSettings.token_from_env()


def cmd_token(args) -> int:
    """Print the project's token (creating it when no server has run yet, or a new one with --new)."""
    from ..client.tokens import ensure_project_token, new_token
    from .settings import ServiceSettings, SettingsError

    project = Path(args.project).resolve()
    try:
        ServiceSettings(project=project).check_project()
    except SettingsError as exc:
        print(f"synergypl token: {exc}", file=sys.stderr)
        return 2
    token, path = ensure_project_token(project, new_token() if args.new else None)
    print(token)
    if args.new:
        print(f"synergypl token: wrote a new token to {path}; restart `synergypl serve` to use it",
              file=sys.stderr)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("init", help="create a project from a Decathlon folder or a folder of images")
    i.add_argument("--project", required=True, help="new project folder")
    i.add_argument("--from", dest="source", help="Decathlon folder (dataset.json, imagesTr/, labelsTr/) or image folder")
    i.add_argument("--labeled", type=int, default=None, help="import labels of only the first N cases (rest unlabeled)")
    i.add_argument("--cases", type=int, default=None, help="import only the first N cases")
    i.add_argument("--name", help="project name (default: the data set's name)")
    i.add_argument("--classes", help="comma-separated class names (needed for a folder of images)")
    i.add_argument("--profile", default="cpu", choices=["cpu", "gpu"], help="engine profile written to project.yaml")
    i.add_argument("--max-upload-mb", type=float, default=512.0)
    i.add_argument("--database-url", default=None, help="SQLAlchemy URL (default: SQLite file in the project)")
    i.add_argument("--from-dicomweb", metavar="URL", help="a DICOMweb server (PACS); its series become the cases")
    i.add_argument("--study", action="append", help="with --from-dicomweb: only this study (repeatable)")
    i.add_argument("--series", action="append", help="with --from-dicomweb: only this series (repeatable)")
    i.add_argument("--dicomweb-auth", default="none", choices=["none", "basic", "bearer"])
    i.add_argument("--dicomweb-username", default=None, help="for basic auth (the password comes from the environment)")
    i.add_argument("--dicomweb-secret-env", default=None, metavar="VAR",
                   help="NAME of the environment variable holding the password/token (default SYNERGYPL_PACS_PASSWORD "
                        "or SYNERGYPL_PACS_TOKEN); never the secret itself")
    i.add_argument("--dicomweb-ca-bundle", default=None, help="CA bundle for the server's TLS certificate")
    i.set_defaults(func=cmd_init)

    s = sub.add_parser("serve", help="serve a project over HTTP (REST API at /api, docs at /docs)")
    s.add_argument("--project", required=True)
    s.add_argument("--host", default=DEFAULT_HOST, help="bind address (default: loopback only)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT)
    s.add_argument("--token-file", default=None,
                   help="file holding the token every client must send (default: SYNERGYPL_TOKEN, else the "
                        "project's own token in PROJECT/.synergypl-token, generated on the first start)")
    s.add_argument("--token", default=None,
                   help="the token itself; discouraged: other users see it in `ps` (use --token-file)")
    s.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="a Host name clients may use besides localhost and IP addresses (a team server's DNS "
                        "name; repeatable; also SYNERGYPL_ALLOWED_HOSTS=a,b; '*' for any)")
    s.add_argument("--loopback-without-token", action="store_true",
                   help="let clients on this machine in without the token (weaker: every local user can then "
                        "use the project); only with a loopback --host")
    s.add_argument("--token-everywhere", action="store_true",
                   help="require the token from every client (the default; overrides --loopback-without-token)")
    s.add_argument("--max-upload-mb", type=float, default=None, help="default: project.yaml service.max_upload_mb")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.set_defaults(func=cmd_serve)

    t = sub.add_parser("token", help="print a project's server token (the one `serve` uses; created if none)")
    t.add_argument("--project", required=True)
    t.add_argument("--new", action="store_true", help="replace it with a new token (restart the server to use it)")
    t.set_defaults(func=cmd_token)
