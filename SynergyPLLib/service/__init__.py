"""The SynergyPL backend: a project folder served over a REST API (FastAPI), with versioned labels,
versioned models and a job queue whose heavy work runs in worker processes.

See ``docs/api.md`` for the routes and ``docs/architecture.md`` for where this sits.
"""

SERVICE_VERSION = "0.1.0"
