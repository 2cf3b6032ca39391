"""Property-based fuzzing of the whole API from its OpenAPI document (Schemathesis on Hypothesis)
against a real ``synergypl serve`` on 127.0.0.1.

Every operation in ``/openapi.json`` gets the examples, coverage (boundary and just-outside-the-schema
values: huge and negative integers, wrong types, missing fields) and fuzzing phases, in positive and
negative mode, with a fixed number of examples per operation and a fixed seed, so the run is the same
every time and fits the CI budget. Checked on every response:

- ``not_a_server_error``: no 5xx;
- ``status_code_conformance``, ``content_type_conformance``, ``response_headers_conformance`` and
  ``response_schema_conformance``: every status, media type and body is the one the document declares
  (errors included: ``{"detail": "..."}``);
- ``negative_data_rejection``: input outside the schema is refused with a 4xx;
- ``unsupported_method``: other methods get 405.

``positive_data_acceptance`` is not used: a request can match the schema and still be refused for what
its file holds (random bytes are not an image: 422) or for the project's state (409), which the
document cannot express.

Real case ids are mixed into the generated ``case_id`` path parameters (except for DELETE), so that
uploads and queries also reach the checks behind an existing case. A training round the fuzzer manages
to start is cancelled at once: the test is about the API, not about spending the CPU budget on
training. Afterwards the store must be intact: every image and label version byte for byte as before,
the database consistent (rows point at files with the recorded sha256, no file without its row,
foreign keys hold) and tmp/ empty.

The module runs once on SQLite and once on PostgreSQL (which refuses what SQLite lets through: NUL
characters, strings longer than their column). Budget per backend: ``SYNERGYPL_FUZZ_EXAMPLES`` fuzzing
examples per operation (default 40) and a wall-clock limit ``SYNERGYPL_FUZZ_SECONDS`` (default 150 s)
that the run must stay inside.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from sqlalchemy import select, text
from svc_support import BACKENDS, Server, make_project

from SynergyPLLib.service.store.db import Case, Database, LabelVersion

EXAMPLES = int(os.environ.get("SYNERGYPL_FUZZ_EXAMPLES", "40"))
BUDGET_SECONDS = float(os.environ.get("SYNERGYPL_FUZZ_SECONDS", "150"))
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance", "negative_data_rejection",
          "unsupported_method")

STATS: dict[str, dict] = {b: {"requests": 0, "statuses": Counter(), "operations": set(), "started": None}
                          for b in BACKENDS}
# the whole module runs once per database backend
pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True, scope="module")


def store_snapshot(project: Path) -> dict[str, str]:
    """sha256 of every stored image, label version and DICOM file."""
    return {str(p.relative_to(project)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((project / "cases").rglob("*")) if p.is_file()}


def check_database(project: Path, url: str) -> None:
    """Rows point at files with their recorded sha256, no label file lacks its row, versions are 1..n
    per case, and (SQLite) the file passes its integrity and foreign-key checks."""
    db = Database(url)
    try:
        with db.Session() as s:
            if db.is_sqlite:
                assert s.execute(text("PRAGMA integrity_check")).scalar() == "ok"
                assert s.execute(text("PRAGMA foreign_key_check")).all() == []
            labels = list(s.scalars(select(LabelVersion).order_by(LabelVersion.case_id, LabelVersion.version)))
            cases = list(s.scalars(select(Case)))
        for lv in labels:
            assert hashlib.sha256((project / lv.path).read_bytes()).hexdigest() == lv.sha256, (lv.case_id, lv.version)
        for c in cases:
            assert hashlib.sha256((project / c.image_path).read_bytes()).hexdigest() == c.image_sha256, c.id
            assert [lv.version for lv in labels if lv.case_id == c.id] == list(
                range(1, 1 + sum(lv.case_id == c.id for lv in labels)))
        on_disk = {str(p.relative_to(project)) for p in (project / "cases").glob("*/labels/*.nrrd")}
        assert on_disk == {lv.path for lv in labels}, on_disk ^ {lv.path for lv in labels}
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, hippocampus_dir, backend, request):
    url = request.getfixturevalue("postgres_cluster").create_database("fuzz") if backend == "postgresql" else None
    project = make_project(tmp_path_factory.mktemp("fuzz") / "project", hippocampus_dir, cases=3, labeled=2,
                           database_url=url)
    before = store_snapshot(project)
    with Server(project) as srv:
        srv.case_ids = [c["id"] for c in srv.client().list_cases()]
        srv.store_before, srv.backend = before, backend
        srv.database_url = url or f"sqlite:///{project / 'synergypl.sqlite'}"
        yield srv


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    config = schemathesis.Config.from_dict({
        "seed": 8,
        "base-url": fuzz_server.url,
        "request-timeout": 60,
        "headers": fuzz_server.auth_headers(),  # the project's token, as every client sends it
        "phases": {"stateful": {"enabled": False}},
        "generation": {"max-examples": EXAMPLES, "mode": "all", "deterministic": True, "database": "none"},
    })
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json", config=config)
    fuzz_server.operations = {f"{method.upper()} {path}" for path, item in schema.raw_schema["paths"].items()
                              for method in item}
    real_ids = st.sampled_from(fuzz_server.case_ids)

    @schema.hook
    def flatmap_path_parameters(context, path_parameters):  # noqa: ANN001
        if (context.operation is None or context.operation.method.upper() == "DELETE"
                or not isinstance(path_parameters, dict) or "case_id" not in path_parameters):
            return st.just(path_parameters)
        return st.one_of(st.just(path_parameters), real_ids.map(lambda cid: {**path_parameters, "case_id": cid}))

    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request):
    # schemathesis 4.32 reads and rewrites ``node._nodeid``, which pytest 9 no longer has
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def _checks():
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi import checks

    return [not_a_server_error] + [getattr(checks, name) for name in CHECKS[1:]]


@pytest.mark.data
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_fuzz(case, fuzz_server):
    stats = STATS[fuzz_server.backend]
    if stats["started"] is None:
        stats["started"] = time.monotonic()
    response = case.call(timeout=60)
    stats["requests"] += 1
    stats["statuses"][response.status_code] += 1
    stats["operations"].add(f"{case.operation.method.upper()} {case.operation.path}")
    if case.operation.path == "/api/train" and response.status_code == 202:
        fuzz_server.client().cancel_job(response.json()["id"])  # see the module docstring
    case.validate_response(response, checks=_checks())


@pytest.mark.data
def test_store_intact_after_fuzzing(fuzz_server):
    """Runs after the fuzzing in this module: nothing it sent changed or lost stored data."""
    project, stats = fuzz_server.project, STATS[fuzz_server.backend]
    assert stats["requests"] > 0, "the fuzzing test did not run first"
    fuzz_server.stop()
    check_database(project, fuzz_server.database_url)
    assert store_snapshot(project) == fuzz_server.store_before
    assert list((project / "tmp").iterdir()) == []
    seconds = time.monotonic() - stats["started"]
    five = sum(n for s, n in stats["statuses"].items() if s >= 500)
    print(f"\nfuzzing ({fuzz_server.backend}): {stats['requests']} requests, {len(stats['operations'])} of "
          f"{len(fuzz_server.operations)} operations, {seconds:.0f} s, statuses "
          f"{dict(sorted(stats['statuses'].items()))}, 5xx = {five}")
    assert five == 0
    assert stats["operations"] == fuzz_server.operations, fuzz_server.operations - stats["operations"]
    assert seconds < BUDGET_SECONDS, f"fuzzing took {seconds:.0f} s, more than its budget of {BUDGET_SECONDS:.0f} s"
