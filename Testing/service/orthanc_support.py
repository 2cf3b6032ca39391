"""A real Orthanc PACS with its DICOMweb plugin for the PACS tests (Debian's ``orthanc`` and
``orthanc-dicomweb``; ``.ci/run`` installs them).

``Orthanc(tmp)`` writes a throwaway JSON configuration (HTTP on a free 127.0.0.1 port, no DICOM port,
storage and index in ``tmp``, the DICOMweb plugin, HTTP basic authentication with one registered
user), starts the server, waits for ``/system`` and stops it at the end. ``upload`` posts DICOM files to
the REST ``/instances`` endpoint.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from svc_support import free_port

ORTHANC_EXE = os.environ.get("SYNERGYPL_ORTHANC", "/usr/sbin/Orthanc")
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins", "/usr/local/share/orthanc/plugins")
USER, PASSWORD = "synergypl", "pacs-secret-1"


def dicomweb_plugin() -> Path | None:
    for d in PLUGIN_DIRS:
        p = Path(d) / "libOrthancDicomWeb.so"
        if p.exists():
            return p
    return None


def missing() -> str | None:
    """Why Orthanc cannot run here, or None."""
    exe = shutil.which(ORTHANC_EXE) or (ORTHANC_EXE if Path(ORTHANC_EXE).exists() else None)
    if exe is None:
        return f"Orthanc not installed ({ORTHANC_EXE}; apt-get install orthanc orthanc-dicomweb, as .ci/run does)"
    if dicomweb_plugin() is None:
        return f"Orthanc's DICOMweb plugin not found in {', '.join(PLUGIN_DIRS)} (apt-get install orthanc-dicomweb)"
    return None


class Orthanc:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.root / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict:
        return {"Name": "SynergyPL-test", "HttpPort": self.port, "RemoteAccessAllowed": False,
                "DicomServerEnabled": False, "StorageDirectory": str(self.root / "storage"),
                "IndexDirectory": str(self.root / "index"), "Plugins": [str(dicomweb_plugin())],
                "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
                "HttpTimeout": 30, "StorageCompression": False, "ConcurrentJobs": 1, "HttpThreadsCount": 8,
                "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False,
                             "StudiesMetadata": "Full", "SeriesMetadata": "Full"}}

    def start(self, timeout: float = 60.0) -> Orthanc:
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = self.root / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=1))
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed by the process's end
        self.proc = subprocess.Popen([shutil.which(ORTHANC_EXE) or ORTHANC_EXE, str(cfg)], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.get("/system")
                return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer /system within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- REST ------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None):
        req = urllib.request.Request(self.url + path, data=body, method=method)
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
        if ctype:
            req.add_header("Content-Type", ctype)
        with urllib.request.urlopen(req, timeout=30) as r:
            data = r.read()
        return json.loads(data) if data else None

    def get(self, path: str):
        return self._request("GET", path)

    def upload(self, files) -> list[dict]:
        """POST every file to /instances; the answers (ID, ParentSeries, Status...)."""
        return [self._request("POST", "/instances", Path(f).read_bytes(), "application/dicom") for f in files]

    def series_instances(self, series_uid: str) -> list[str]:
        found = self._request("POST", "/tools/find", json.dumps(
            {"Level": "Instance", "Query": {"SeriesInstanceUID": series_uid}}).encode(), "application/json")
        return found
