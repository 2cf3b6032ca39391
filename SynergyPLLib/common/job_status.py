"""The one vocabulary of job states, shared by the service, the client and the Slicer module.

A job goes ``queued -> running -> done | failed | cancelled``; ``interrupted`` when the process running
it died (worker killed, service restarted). The members are ``str``: on the wire (JSON, the database)
each is its plain value, e.g. ``"done"``, and a plain string compares and hashes equal to its member.
"""

from __future__ import annotations

from enum import Enum


class JobStatus(str, Enum):  # noqa: UP042 - StrEnum needs Python 3.11; the Slicer module runs 3.9
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    __hash__ = str.__hash__  # "done" in FINAL_STATES holds for plain strings read back from JSON or SQL

    def __str__(self) -> str:
        return self.value


#: states a job never leaves
FINAL_STATES = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.INTERRUPTED})
#: states of a job that still holds its lane (queued or running)
ACTIVE_STATES = (JobStatus.QUEUED, JobStatus.RUNNING)
