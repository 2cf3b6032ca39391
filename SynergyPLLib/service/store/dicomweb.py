"""A DICOMweb server (a PACS such as Orthanc, dcm4chee, Google/Azure DICOM) as a source of images and a
sink for DICOM SEG: QIDO-RS (search studies/series), WADO-RS (series metadata and instances), STOW-RS
(store), through the maintained ``dicomweb-client`` library on a ``requests`` session.

Configuration: the ``dicomweb:`` section of ``project.yaml`` (see docs/pacs.md)::

    dicomweb:
      url: https://pacs.example.org/dicom-web
      auth: none | basic | bearer
      username: synergypl            # basic
      password_env: SYNERGYPL_PACS_PASSWORD   # basic: the NAME of the environment variable
      token_env: SYNERGYPL_PACS_TOKEN          # bearer: the NAME of the environment variable
      ca_bundle: /etc/ssl/hospital-ca.pem      # TLS: a CA bundle, or
      verify: true                             # false only for a test server
      timeout: 30                              # seconds per request (connect and read)

Secrets are never in the file nor on a command line: only the name of the environment variable that
holds them. ``SYNERGYPL_DICOMWEB_URL`` overrides ``url``. Every failure is a :class:`DicomwebError`
whose ``kind`` says what happened (``config``, ``unreachable``, ``timeout``, ``not_found``, ``refused``,
``server``) and whose message names the server and the request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

URL_ENV = "SYNERGYPL_DICOMWEB_URL"
DEFAULT_PASSWORD_ENV = "SYNERGYPL_PACS_PASSWORD"
DEFAULT_TOKEN_ENV = "SYNERGYPL_PACS_TOKEN"
AUTH_MODES = ("none", "basic", "bearer")
KEYS = ("url", "auth", "username", "password_env", "token_env", "ca_bundle", "verify", "timeout")


class DicomwebError(Exception):
    """A DICOMweb request that failed; ``kind`` is one of config, unreachable, timeout, not_found,
    refused (401/403), server (another status or an unreadable answer)."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


@dataclass(frozen=True)
class DicomwebConfig:
    url: str
    auth: str = "none"
    username: str | None = None
    password_env: str = DEFAULT_PASSWORD_ENV
    token_env: str = DEFAULT_TOKEN_ENV
    ca_bundle: str | None = None
    verify: bool = True
    timeout: float = 30.0

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> DicomwebConfig:
        """The checked configuration; DicomwebError(kind='config') names the wrong key."""
        d = dict(d or {})
        unknown = sorted(set(d) - set(KEYS))
        if unknown:
            secret = [k for k in unknown if k in ("password", "token")]
            hint = (f"; put the secret in an environment variable and name it with {secret[0]}_env"
                    if secret else f"; known keys: {', '.join(KEYS)}")
            raise DicomwebError("config", f"dicomweb: unknown key(s) {', '.join(unknown)}{hint}")
        url = os.environ.get(URL_ENV) or d.get("url")
        if not url or not str(url).startswith(("http://", "https://")):
            raise DicomwebError("config", f"dicomweb.url must be an http:// or https:// URL (or set {URL_ENV}), "
                                          f"got {url!r}")
        auth = str(d.get("auth", "none"))
        if auth not in AUTH_MODES:
            raise DicomwebError("config", f"dicomweb.auth must be one of {', '.join(AUTH_MODES)}, got {auth!r}")
        if auth == "basic" and not d.get("username"):
            raise DicomwebError("config", "dicomweb.auth is basic: give dicomweb.username")
        try:
            timeout = float(d.get("timeout", 30.0))
        except (TypeError, ValueError):
            raise DicomwebError("config", f"dicomweb.timeout must be seconds, got {d.get('timeout')!r}") from None
        if timeout <= 0:
            raise DicomwebError("config", "dicomweb.timeout must be > 0 seconds")
        return cls(url=str(url).rstrip("/"), auth=auth, username=d.get("username"),
                   password_env=str(d.get("password_env") or DEFAULT_PASSWORD_ENV),
                   token_env=str(d.get("token_env") or DEFAULT_TOKEN_ENV),
                   ca_bundle=d.get("ca_bundle"), verify=bool(d.get("verify", True)), timeout=timeout)

    def to_dict(self) -> dict[str, Any]:
        """What init writes to project.yaml (no secret: only the variables' names)."""
        d: dict[str, Any] = {"url": self.url, "auth": self.auth}
        if self.auth == "basic":
            d.update(username=self.username, password_env=self.password_env)
        if self.auth == "bearer":
            d["token_env"] = self.token_env
        if self.ca_bundle:
            d["ca_bundle"] = self.ca_bundle
        if not self.verify:
            d["verify"] = False
        d["timeout"] = self.timeout
        return d

    def _secret(self, env: str, what: str) -> str:
        value = os.environ.get(env)
        if not value:
            raise DicomwebError("config", f"dicomweb.auth is {self.auth}: set the {what} in the environment "
                                          f"variable {env} (named by dicomweb.{what}_env in project.yaml)")
        return value

    def session(self):
        """A ``requests`` session with the TLS and authentication settings."""
        s = _session_class()()
        if self.ca_bundle:
            if not Path(self.ca_bundle).is_file():
                raise DicomwebError("config", f"dicomweb.ca_bundle {self.ca_bundle}: no such file")
            s.verify = s.forced_verify = self.ca_bundle
        elif not self.verify:
            s.verify = s.forced_verify = False
        if self.auth == "basic":
            s.auth = (self.username, self._secret(self.password_env, "password"))
        elif self.auth == "bearer":
            s.headers["Authorization"] = f"Bearer {self._secret(self.token_env, 'token')}"
        return s


def _session_class():
    import requests

    class Session(requests.Session):
        """requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's ``verify``; a
        configured ca_bundle (or verify: false) must win."""

        forced_verify: str | bool | None = None

        def merge_environment_settings(self, url, proxies, stream, verify, cert):  # noqa: ANN001
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if self.forced_verify is not None:
                settings["verify"] = self.forced_verify
            return settings

    return Session


def _value(item: dict, tag: str, default: Any = None) -> Any:
    """A value from a DICOM JSON object (PN as its alphabetic string)."""
    v = (item.get(tag) or {}).get("Value")
    if not v:
        return default
    v = v[0]
    return v.get("Alphabetic", "") if isinstance(v, dict) else v


STUDY_TAGS = {"StudyInstanceUID": "0020000D", "PatientID": "00100020", "PatientName": "00100010",
              "StudyDate": "00080020", "StudyDescription": "00081030", "AccessionNumber": "00080050",
              "NumberOfStudyRelatedSeries": "00201206"}
SERIES_TAGS = {"StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E", "Modality": "00080060",
               "SeriesDescription": "0008103E", "SeriesNumber": "00200011",
               "NumberOfSeriesRelatedInstances": "00201209"}


class DicomwebStore:
    """One DICOMweb server. Every method raises :class:`DicomwebError` on failure."""

    def __init__(self, config: DicomwebConfig) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.config = config
        self.client = DICOMwebClient(url=config.url, session=config.session(), timeout=config.timeout)
        self.client.set_http_retry_params(retry=False)  # a timeout is reported, not silently multiplied

    @classmethod
    def from_project(cls, section: dict[str, Any] | None) -> DicomwebStore:
        if not section:
            raise DicomwebError("config", "this project has no dicomweb: section in project.yaml (see docs/pacs.md)")
        return cls(DicomwebConfig.from_dict(section))

    def _call(self, what: str, fn, *args, **kwargs):
        import requests

        where = f"{what} at {self.config.url}"
        try:
            return fn(*args, **kwargs)
        except requests.exceptions.Timeout:
            raise DicomwebError("timeout", f"{where}: no answer within {self.config.timeout:g} s "
                                           "(dicomweb.timeout)") from None
        except requests.exceptions.SSLError as exc:
            raise DicomwebError("unreachable", f"{where}: TLS failed ({_short(exc)}); check dicomweb.ca_bundle") from None
        except requests.exceptions.ConnectionError as exc:
            raise DicomwebError("unreachable", f"{where}: cannot connect ({_short(exc)})") from None
        except requests.exceptions.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else None
            if code == 404:
                raise DicomwebError("not_found", f"{where}: not found (HTTP 404)", 404) from None
            if code in (401, 403):
                raise DicomwebError("refused", f"{where}: HTTP {code}, the server refused the credentials "
                                               "(dicomweb.auth, username and the password/token variable)", code) from None
            raise DicomwebError("server", f"{where}: HTTP {code} ({_short(exc)})", code) from None
        except requests.exceptions.RequestException as exc:
            raise DicomwebError("server", f"{where}: {_short(exc)}") from None
        except (ValueError, KeyError, TypeError) as exc:  # an answer that is not DICOM JSON / multipart
            raise DicomwebError("server", f"{where}: unreadable answer ({type(exc).__name__}: {exc})") from None

    # ---- QIDO-RS ---------------------------------------------------------------------------------
    def studies(self, **search) -> list[dict]:
        """Studies matching QIDO search filters (e.g. PatientID='P1'), as plain dicts."""
        found = self._call("QIDO-RS studies", self.client.search_for_studies, search_filters=search or None,
                           fields=list(STUDY_TAGS))
        return [{k: _value(it, t) for k, t in STUDY_TAGS.items()} for it in found]

    def series(self, study_uid: str | None = None, **search) -> list[dict]:
        """Series of one study (or of all studies), as plain dicts."""
        found = self._call("QIDO-RS series", self.client.search_for_series, study_instance_uid=study_uid,
                           search_filters=search or None, fields=list(SERIES_TAGS))
        return [{k: _value(it, t) for k, t in SERIES_TAGS.items()} for it in found]

    def series_exists(self, study_uid: str, series_uid: str) -> bool:
        return any(s["SeriesInstanceUID"] == series_uid
                   for s in self.series(study_uid, SeriesInstanceUID=series_uid))

    # ---- WADO-RS ---------------------------------------------------------------------------------
    def series_metadata(self, study_uid: str, series_uid: str) -> list:
        """The series' instances as pydicom Datasets without pixel data (WADO-RS metadata)."""
        import pydicom

        items = self._call(f"WADO-RS metadata of series {series_uid}", self.client.retrieve_series_metadata,
                           study_uid, series_uid)
        # bulk data (the pixels) is left on the server: only the attributes are read
        return [pydicom.Dataset.from_json({k: v for k, v in it.items() if "BulkDataURI" not in v})
                for it in items]

    def fetch_series(self, study_uid: str, series_uid: str, dest: Path) -> list[Path]:
        """Every instance of the series written to ``dest`` as ``IMnnnnn.dcm`` (Part 10 files)."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        out = []

        def run():
            for i, ds in enumerate(self.client.iter_series(study_uid, series_uid)):
                p = dest / f"IM{i:05d}.dcm"
                ds.save_as(p, enforce_file_format=True)
                out.append(p)

        self._call(f"WADO-RS series {series_uid}", run)
        if not out:
            raise DicomwebError("not_found", f"WADO-RS series {series_uid} at {self.config.url}: no instances")
        return out

    # ---- STOW-RS ---------------------------------------------------------------------------------
    def store(self, datasets: list, study_uid: str | None = None) -> dict:
        """Store Datasets (STOW-RS); returns the server's answer (DICOM JSON) or raises."""
        ans = self._call("STOW-RS", self.client.store_instances, datasets, study_uid)
        failed = (ans or {}).get("00081198", {}).get("Value") if isinstance(ans, dict) else None
        if failed:
            raise DicomwebError("server", f"STOW-RS at {self.config.url}: the server refused {len(failed)} instance(s)")
        return ans or {}


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:300]
