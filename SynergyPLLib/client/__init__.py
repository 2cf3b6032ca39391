"""HTTP client of the SynergyPL service: standard library (+ numpy nowhere required), no torch, no
FastAPI, so the Slicer module can use it in Slicer's own Python (3.9 in Slicer 5.8, 3.12 in 5.10+).

    from SynergyPLLib.client import SynergyPLClient, ConflictError
    c = SynergyPLClient("http://127.0.0.1:8765", project="~/hippo")  # token read from ~/hippo/.synergypl-token
    c.info(); job = c.predict("case_001"); c.wait_job(job["id"]); c.download_prediction("case_001", "heatmap", "h.nrrd")
"""

from .api import DEFAULT_URL, FINAL, SynergyPLClient
from .errors import (
    AuthError,
    BadRequestError,
    ConflictError,
    ConnectionError,
    JobFailedError,
    NotFoundError,
    ServerError,
    SynergyPLError,
    TimeoutError,
    TooLargeError,
)
from .tokens import TOKEN_FILE_NAME, token_file, token_for_project

__all__ = ["DEFAULT_URL", "FINAL", "SynergyPLClient", "AuthError", "BadRequestError", "ConflictError",
           "ConnectionError", "JobFailedError", "NotFoundError", "ServerError", "SynergyPLError", "TimeoutError",
           "TooLargeError", "TOKEN_FILE_NAME", "token_file", "token_for_project"]
