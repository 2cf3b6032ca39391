"""The one vocabulary of job states, shared by the service, the client and the Slicer panel."""

from __future__ import annotations

from enum import Enum


class JobStatus(str, Enum):
    """A job's state; compares equal to its string (``JobStatus.DONE == "done"``)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # its worker ended (or the server restarted) while it ran

    def __str__(self) -> str:
        return self.value


FINAL_STATES = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.INTERRUPTED})
