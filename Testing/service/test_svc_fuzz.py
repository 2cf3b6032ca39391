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

Budget: ``SYNERGYPL_FUZZ_EXAMPLES`` fuzzing examples per operation (default 40) and a wall-clock
limit ``SYNERGYPL_FUZZ_SECONDS`` (default 150 s) that the run must stay inside.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from svc_support import Server, make_project

EXAMPLES = int(os.environ.get("SYNERGYPL_FUZZ_EXAMPLES", "40"))
BUDGET_SECONDS = float(os.environ.get("SYNERGYPL_FUZZ_SECONDS", "150"))
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance", "negative_data_rejection",
          "unsupported_method")

STATS: dict = {"requests": 0, "statuses": Counter(), "operations": set(), "started": None}


def store_snapshot(project: Path) -> dict[str, str]:
    """sha256 of every stored image, label version and DICOM file."""
    return {str(p.relative_to(project)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((project / "cases").rglob("*")) if p.is_file()}


def check_database(project: Path) -> None:
    """Rows point at files with their recorded sha256, no label file lacks its row, keys hold."""
    con = sqlite3.connect(project / "synergypl.sqlite")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        rows = con.execute("SELECT case_id, version, path, sha256 FROM label_versions").fetchall()
        for cid, version, path, sha in rows:
            assert hashlib.sha256((project / path).read_bytes()).hexdigest() == sha, (cid, version)
        referenced = {path for _, _, path, _ in rows}
        on_disk = {str(p.relative_to(project)) for p in (project / "cases").glob("*/labels/*.nrrd")}
        assert on_disk == referenced, on_disk ^ referenced
        for cid, path, sha in con.execute("SELECT id, image_path, image_sha256 FROM cases"):
            assert hashlib.sha256((project / path).read_bytes()).hexdigest() == sha, cid
    finally:
        con.close()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, hippocampus_dir):
    project = make_project(tmp_path_factory.mktemp("fuzz") / "project", hippocampus_dir, cases=3, labeled=2)
    before = store_snapshot(project)
    with Server(project) as srv:
        srv.case_ids = [c["id"] for c in srv.client().list_cases()]
        srv.store_before = before
        yield srv


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    config = schemathesis.Config.from_dict({
        "seed": 8,
        "base-url": fuzz_server.url,
        "request-timeout": 60,
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
    if STATS["started"] is None:
        STATS["started"] = time.monotonic()
    response = case.call(timeout=60)
    STATS["requests"] += 1
    STATS["statuses"][response.status_code] += 1
    STATS["operations"].add(f"{case.operation.method.upper()} {case.operation.path}")
    if case.operation.path == "/api/train" and response.status_code == 202:
        fuzz_server.client().cancel_job(response.json()["id"])  # see the module docstring
    case.validate_response(response, checks=_checks())


@pytest.mark.data
def test_store_intact_after_fuzzing(fuzz_server):
    """Runs after the fuzzing in this module: nothing it sent changed or lost stored data."""
    project = fuzz_server.project
    assert STATS["requests"] > 0, "the fuzzing test did not run first"
    fuzz_server.stop()
    check_database(project)
    assert store_snapshot(project) == fuzz_server.store_before
    assert list((project / "tmp").iterdir()) == []
    seconds = time.monotonic() - STATS["started"]
    five = sum(n for s, n in STATS["statuses"].items() if s >= 500)
    print(f"\nfuzzing: {STATS['requests']} requests, {len(STATS['operations'])} operations, "
          f"{seconds:.0f} s, statuses {dict(sorted(STATS['statuses'].items()))}, 5xx = {five}")
    assert five == 0
    assert STATS["operations"] == fuzz_server.operations, fuzz_server.operations - STATS["operations"]
    assert seconds < BUDGET_SECONDS, f"fuzzing took {seconds:.0f} s, more than its budget of {BUDGET_SECONDS:.0f} s"
