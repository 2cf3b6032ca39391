"""The token of ``synergypl serve`` and its start-up refusals: a per-project token that every client
sends and local clients find themselves, tokens from a file or the environment (never in ``ps``), and
proxied loopback requests that are not trusted as local."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys

import pytest
from svc_support import REPO, Server, raw_request, server_env

from SynergyPLLib.client import AuthError, SynergyPLClient, token_file, token_for_project

TOKEN = "s3cret-token-for-tests"


def lan_address() -> str | None:
    """This machine's address on its primary network interface (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.200", 9))
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def _cli(*args, timeout=60, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SynergyPLLib.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=server_env(env))


def _serve(project, *args, timeout=60) -> subprocess.CompletedProcess:
    return _cli("serve", "--project", str(project), *args, timeout=timeout)


def _cmdline(pid: int) -> str:
    return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()


def test_start_up_refusals(project):
    r = _serve(project, "--port", "1", "--token", "abc")
    assert r.returncode == 2 and "too short" in r.stderr
    r = _serve(project.parent / "not-a-project", "--port", "1")
    assert r.returncode == 2 and "not a SynergyPL project" in r.stderr
    r = _serve(project, "--host", "0.0.0.0", "--port", "1", "--loopback-without-token")
    assert r.returncode == 2 and "--loopback-without-token is only allowed when listening on 127.0.0.1" in r.stderr
    r = _serve(project, "--port", "1", "--token-file", str(project / "missing-token"))
    assert r.returncode == 2 and "cannot read the token file" in r.stderr
    assert not token_file(project).exists()  # nothing was started, nothing written


def test_second_server_on_same_project_is_refused(project):
    with Server(project):
        r = _serve(project, "--port", "1")
        assert r.returncode == 2 and "already being served" in r.stderr


def test_project_token_is_made_once_kept_private_and_picked_up(project):
    with Server(project) as srv:
        path = token_file(project)
        token = token_for_project(project)
        assert token and len(token) >= 32
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        # a client that knows neither token nor folder gets 401 with where the token is
        with pytest.raises(AuthError) as err:
            SynergyPLClient(srv.url).list_cases()
        assert err.value.status == 401 and "needs a token" in err.value.message
        assert str(path) in err.value.message and "project=FOLDER" in err.value.message
        # the client finds the token from the folder; /api/health needs none
        assert len(SynergyPLClient(srv.url, project=project).list_cases()) == 6
        assert SynergyPLClient(srv.url).health()["status"] == "ok"
        assert SynergyPLClient(srv.url, project=project).info()["auth"]["token_required"] is True
        with pytest.raises(AuthError, match="wrong token"):
            SynergyPLClient(srv.url, token="not-the-token").list_cases()
        # the CLI prints it, for typing into a panel that did not start the server
        r = _cli("token", "--project", str(project))
        assert r.returncode == 0 and r.stdout.strip() == token
        assert token not in _cmdline(srv.proc.pid)
    # the same token on the next start (clients holding it keep working); --new replaces it
    with Server(project) as srv:
        assert token_for_project(project) == token
        r = _cli("token", "--project", str(project), "--new")
        assert r.returncode == 0 and r.stdout.strip() != token and "restart" in r.stderr
        assert srv.client(token=token).list_cases()[0]["id"] == "hippocampus_001"  # the running server keeps its token
    os.chmod(path, 0o644)  # a copied folder with a readable token file is made private again
    with Server(project) as srv:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert srv.client().list_cases()[0]["id"] == "hippocampus_001"


def test_token_from_file_and_environment_never_on_the_command_line(project, tmp_path):
    secret = tmp_path / "team-token"
    secret.write_text(TOKEN + "\n")
    secret.chmod(0o600)
    with Server(project, args=("--token-file", str(secret))) as srv:
        assert TOKEN not in _cmdline(srv.proc.pid)
        assert SynergyPLClient(srv.url, token=TOKEN).list_cases()[0]["id"] == "hippocampus_001"
        with pytest.raises(AuthError, match="needs a token"):
            SynergyPLClient(srv.url).list_cases()
        assert token_for_project(project) == TOKEN  # local clients still find the server's token
        assert stat.S_IMODE(token_file(project).stat().st_mode) == 0o600
    env_token = "another-team-token-42"
    with Server(project, env={"SYNERGYPL_TOKEN": env_token}) as srv:
        assert env_token not in _cmdline(srv.proc.pid)
        assert SynergyPLClient(srv.url, token=env_token).list_cases()[0]["id"] == "hippocampus_001"
        with pytest.raises(AuthError, match="wrong token"):
            SynergyPLClient(srv.url, token=TOKEN).list_cases()
        assert SynergyPLClient(srv.url, project=project).list_cases()


def test_token_on_the_command_line_still_works_but_warns(project):
    srv = Server(project)
    srv.args = ["--token", TOKEN]
    with srv:
        assert SynergyPLClient(srv.url, token=TOKEN).list_cases()[0]["id"] == "hippocampus_001"
        assert TOKEN in _cmdline(srv.proc.pid)  # which is why it warns
    assert "visible to every user of this machine" in srv.log() and "--token-file" in srv.log()


def test_proxied_loopback_requests_are_not_local(project):
    """With --loopback-without-token, a local proxy (nginx, ssh -L with a web front end...) relaying
    other machines would make everyone local; requests carrying forwarding headers need the token."""
    with Server(project, args=("--loopback-without-token",)) as srv:
        status, out = raw_request(srv.port, "GET", "/api/cases")
        assert status == 200 and len(out["items"]) == 6
        for header, value in (("X-Forwarded-For", "203.0.113.7"), ("Forwarded", "for=203.0.113.7;proto=https"),
                              ("X-Real-IP", "203.0.113.7"), ("X-Forwarded-For", "127.0.0.1")):
            status, out = raw_request(srv.port, "GET", "/api/cases", headers={header: value})
            assert status == 401 and "needs a token" in out["detail"], (header, status, out)
            assert ".synergypl-token" not in out["detail"]  # no local hints for relayed clients
            status, out = raw_request(srv.port, "GET", "/api/cases", headers={header: value, **srv.auth_headers()})
            assert status == 200, (header, out)
    # --token-everywhere (the default now) wins over --loopback-without-token
    with Server(project, args=("--loopback-without-token", "--token-everywhere")) as srv:
        status, out = raw_request(srv.port, "GET", "/api/cases")
        assert status == 401


def test_token_required_off_loopback(project):
    addr = lan_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to test remote access with")
    with Server(project, host="0.0.0.0", env={"SYNERGYPL_TOKEN": TOKEN}) as srv:
        remote = f"http://{addr}:{srv.port}"
        with pytest.raises(AuthError, match="needs a token") as err:
            SynergyPLClient(remote).list_cases()
        assert ".synergypl-token" not in err.value.message  # the file's path is for local users only
        with pytest.raises(AuthError, match="wrong token"):
            SynergyPLClient(remote, token="wrong-token-123").list_cases()
        assert len(SynergyPLClient(remote, token=TOKEN).list_cases()) == 6
        with pytest.raises(AuthError, match="wrong token"):
            SynergyPLClient(srv.url, token="wrong-token-123").list_cases()
        # Host names the machine's own IP address: allowed; a DNS name must be allowed explicitly
        status, _ = raw_request(srv.port, "GET", "/api/health", headers={"Host": f"{addr}:{srv.port}"})
        assert status == 200
        status, out = raw_request(srv.port, "GET", "/api/health", headers={"Host": f"gpu-box:{srv.port}"})
        assert status == 403 and "--allowed-host" in out["detail"]
    with Server(project, host="0.0.0.0", env={"SYNERGYPL_ALLOWED_HOSTS": "gpu-box, gpu-box.example.org"}) as srv:
        for name in ("gpu-box", "gpu-box.example.org"):
            status, _ = raw_request(srv.port, "GET", "/api/cases", headers={"Host": f"{name}:{srv.port}",
                                                                            **srv.auth_headers()})
            assert status == 200, name
