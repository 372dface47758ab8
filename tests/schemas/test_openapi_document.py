"""``/openapi.json`` as a client generator reads it: fetched over HTTP from a real ``kvmworker serve`` process."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate as validate_openapi

from kvmworker.app import build_registry
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.settings import Settings
from tests.conftest import unique
from tests.schemas.test_published_schemas import PLATFORM_EXAMPLE, load, standard_keywords, unknown_keywords
from tests.schemas.test_schema_differential import COMMANDS, Judges, examples_for, mutations
from tests.support.processes import stop_process

OPENAPI_KEYWORDS = {"discriminator"}
"""What OpenAPI 3.1's schema dialect adds to JSON Schema 2020-12 and this document uses."""


@pytest.fixture(scope="module")
def serving(tmp_path_factory) -> Iterator[tuple[str, dict[str, Any], dict[str, str]]]:
    """A ``kvmworker serve`` process (worker and bridge on its embedded broker) with one user, ``kvt`` whose
    password is ``1234``; its /openapi.json, and the headers that carry its token."""
    state = tmp_path_factory.mktemp("openapi")
    users, token = state / "users", state / "token"
    add = [sys.executable, "-m", "kvmworker", "users", "add", "kvt", "--users", str(users), "--password-stdin"]
    subprocess.run([*add, "--hosts", "*", "--commands", "*"], input="1234\n", text=True, check=True)
    argv = [sys.executable, "-m", "kvmworker", "serve", "--port", "0", "--host", unique("kvt-oapi-")]
    argv += ["--users", str(users), "--token-file", str(token)]
    proc = subprocess.Popen(
        [*argv, "--state-dir", str(state)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        url = next((m.group(1) for line in proc.stdout if (m := re.search(r"(http://\S+)", line))), None)
        assert url, f"kvmworker serve exited ({proc.wait()}) without announcing its URL"
        response = httpx.get(url + "/openapi.json", timeout=10)
        assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
        yield url.rstrip("/"), response.json(), {"Authorization": f"Bearer {token.read_text().strip()}"}
    finally:
        stop_process(proc, 20)


@pytest.fixture(scope="module")
def served(serving) -> tuple[str, dict[str, Any]]:
    url, doc, _ = serving
    return url, doc


def call_validator(doc: dict[str, Any], component: str = "Call") -> jsonschema.Draft202012Validator:
    """A component of the document as a JSON Schema, its references resolved inside the document."""
    schema = {**doc, "$ref": f"#/components/schemas/{component}"}
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_the_served_document_passes_the_openapi_3_1_validator(served):
    _, doc = served
    assert doc["openapi"].startswith("3.1.")
    validate_openapi(doc)


def test_every_component_schema_is_json_schema_2020_12_with_only_its_keywords(served):
    _, doc = served
    known = standard_keywords() | OPENAPI_KEYWORDS
    schemas = doc["components"]["schemas"]
    assert len(schemas) > 20
    for name, schema in schemas.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert unknown_keywords(schema, known) == [], name


def test_the_platform_example_is_a_valid_call_and_out_of_range_values_are_not(served):
    _, doc = served
    check = call_validator(doc)
    example = json.loads(PLATFORM_EXAMPLE)
    assert list(check.iter_errors(example)) == []
    for wrong in ({"vlan_id": 99999}, {"mtu": 5}, {"vlan_id": "12a"}, {"network_type": "vxlan"}):
        assert not check.is_valid(example | {"data": example["data"] | wrong}), wrong


def test_a_numeric_password_is_a_valid_login_for_the_schema_and_for_the_bridge(served):
    url, doc = served
    check = call_validator(doc)
    login = {"handler": "UserHandler", "command": "login", "data": {"username": "kvt", "password": 1234}}
    assert check.is_valid(login)
    assert httpx.post(url + "/", json=login, timeout=10).json()["code"] == 0
    refused = login | {"data": {"username": True, "password": "x"}}
    assert not check.is_valid(refused)
    assert httpx.post(url + "/", json=refused, timeout=10).json()["code"] != 0


def test_real_replies_are_valid_against_the_reply_schema_of_the_document_and_of_schemas(serving):
    url, doc, auth = serving
    ping = {"handler": "SystemHandler", "command": "ping", "data": {}}
    replies = [
        httpx.post(url + "/", json=ping, headers=auth, timeout=10).json(),
        httpx.post(url + "/", content=b"{bad", timeout=10).json(),
        httpx.post(url + "/", json=json.loads(PLATFORM_EXAMPLE) | {"dry_run": True, "data": {}}, timeout=10).json(),
    ]
    assert [r["code"] for r in replies][:2] == [0, 20001]
    for reply in replies:
        call_validator(doc, "Reply").validate(reply)
        jsonschema.Draft202012Validator(load("reply")).validate(reply)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Pipeline:
    settings = Settings(host=unique("kvt-oapi-"), state_dir=tmp_path_factory.mktemp("oapi-admit"))
    return Pipeline(build_registry(settings), host=settings.host)


@pytest.mark.parametrize("name", COMMANDS)
def test_the_documents_call_schema_agrees_with_schemas_and_the_worker_on_every_boundary_value(served, pipeline, name):
    """The boundary bodies of the differential test of schemas/ (every third: the document's $refs make each
    validation slower), judged by the served document as well."""
    _, doc = served
    check = call_validator(doc, f"Call.{name}")  # the branch the discriminators choose for it
    judges = Judges(pipeline, load(name), load("reply"), name)
    handler, command = name.split(".")
    for example in examples_for(name):
        for body in itertools.islice(mutations(example, judges.schema), 0, None, 3):
            envelope = {"handler": handler, "command": command, "data": body}
            assert check.is_valid(envelope) == judges.validator.is_valid(body), body
            judges.agree(body)
