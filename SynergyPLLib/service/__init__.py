"""The SynergyPL backend: a project folder served over a REST API (FastAPI), with versioned labels,
versioned models and a job queue whose heavy work runs in worker processes.

Layers, imports one way: ``api`` (HTTP) -> ``domain`` (rules) -> ``store`` (database, files);
``jobs`` (queue, worker supervision, workers) -> ``domain``/``store``. See ``docs/api.md`` for the
routes and ``docs/architecture.md`` for the map of every file.
"""

SERVICE_VERSION = "0.1.0"
