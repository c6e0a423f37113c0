"""The OpenAPI document, made from the route table and the request and response models."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate
from pydantic import ValidationError

from netbootd.api import schemas
from netbootd.api.rest import PREFIX, ROUTES, machine_table, openapi_document, validation_problem


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_every_route_is_described_with_its_parameters_and_body() -> None:
    document = openapi_document()
    for route in ROUTES:
        operation = document["paths"][route.path][route.method.lower()]
        named = {p["name"] for p in operation.get("parameters", [])}
        assert set(re.findall(r"\{([^}]+)\}", route.path)) <= named
        assert {p.name for p in route.params} <= named
        if route.body is not None:
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": f"#/components/schemas/{route.body.__name__}"}
        assert "default" in operation["responses"]
        assert ("security" in operation) is route.write


def test_every_reference_names_a_component() -> None:
    document = openapi_document()
    text = repr(document)
    names = set(re.findall(r"#/components/schemas/(\w+)", text))
    assert names and names <= set(document["components"]["schemas"])


def test_the_component_schemas_are_the_models_own() -> None:
    components = openapi_document()["components"]["schemas"]
    assert components["MachineBody"]["required"] == ["name"]
    assert components["Verdict"]["properties"]["state"]["enum"] == [
        "booted",
        "stalled",
        "in-progress",
    ]
    # The body refuses what the schema does not allow.
    assert components["MachineBody"]["additionalProperties"] is False
    with pytest.raises(ValidationError):
        schemas.MachineBody.model_validate({"name": "a", "colour": "red"})


def test_no_two_paths_differ_only_in_their_template_names() -> None:
    # OpenAPI 3.1 §4.8.8: such paths are identical, and MUST NOT both exist.
    shapes = [re.sub(r"\{[^}]+\}", "{}", path) for path in openapi_document()["paths"]]
    assert len(shapes) == len(set(shapes))


def test_paths_are_under_the_prefix() -> None:
    assert all(route.path.startswith(PREFIX + "/") for route in ROUTES)


def test_a_body_becomes_an_inventory_table() -> None:
    body = schemas.MachineBody(name="n1", mac="52:54:00:00:00:01", boot_once="installer")
    assert machine_table(body) == {"mac": "52:54:00:00:00:01", "boot-once": "installer"}


def test_validation_problems_name_where() -> None:
    with pytest.raises(ValidationError) as caught:
        schemas.MachineBody.model_validate({"labels": {"a": 1}})
    problems = [validation_problem(error) for error in caught.value.errors()]
    assert "name: Field required" in problems
    assert any(problem.startswith("labels.a: ") for problem in problems)
