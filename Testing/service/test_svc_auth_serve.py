"""Token rules and start-up refusals of ``synergypl serve``."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from svc_support import REPO, Server, server_env

from SynergyPLLib.client import AuthError, SynergyPLClient

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


def _serve(project, *args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SynergyPLLib.cli", "serve", "--project", str(project), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env=server_env())


def test_refuses_non_loopback_without_token_and_short_tokens(project):
    r = _serve(project, "--host", "0.0.0.0", "--port", "1")
    assert r.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a token" in r.stderr
    r = _serve(project, "--host", "0.0.0.0", "--port", "1", "--token", "abc")
    assert r.returncode == 2 and "too short" in r.stderr
    r = _serve(project.parent / "not-a-project", "--port", "1")
    assert r.returncode == 2 and "not a SynergyPL project" in r.stderr


def test_second_server_on_same_project_is_refused(project):
    with Server(project):
        r = _serve(project, "--port", "1")
        assert r.returncode == 2 and "already being served" in r.stderr


def test_token_everywhere_and_wrong_token(project):
    with Server(project, args=("--token-everywhere",), token=TOKEN) as srv:
        with pytest.raises(AuthError) as err:
            srv.client(token="").info()
        assert err.value.status == 401 and "needs a token" in err.value.message
        with pytest.raises(AuthError, match="wrong token"):
            srv.client(token="not-the-token").info()
        assert srv.client().info()["name"] == "Hippocampus"
        # the other header works too
        import urllib.request

        req = urllib.request.Request(srv.url + "/api/cases", headers={"X-SynergyPL-Token": TOKEN})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200


def test_token_required_off_loopback_only(project):
    addr = lan_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to test remote access with")
    with Server(project, host="0.0.0.0", token=TOKEN) as srv:
        remote = f"http://{addr}:{srv.port}"
        with pytest.raises(AuthError, match="needs a token"):
            SynergyPLClient(remote).list_cases()
        with pytest.raises(AuthError, match="wrong token"):
            SynergyPLClient(remote, token="wrong-token-123").list_cases()
        assert len(SynergyPLClient(remote, token=TOKEN).list_cases()) == 6
        # loopback clients need no token, but a wrong one is still refused
        assert len(SynergyPLClient(srv.url).list_cases()) == 6
        with pytest.raises(AuthError, match="wrong token"):
            SynergyPLClient(srv.url, token="wrong-token-123").list_cases()
        assert SynergyPLClient(srv.url).info()["auth"]["token_required"] is True
