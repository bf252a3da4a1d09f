"""The OpenAPI document says what the API does: errors as problem+json, alternative
representations, public operations without security, and request schemas as strict as the
Structs that read them."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar

PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDetail"}}}


@pytest.fixture(scope="module")
def document(app: Litestar) -> dict[str, Any]:
    return app.openapi_schema.to_schema()


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, operation) for path, item in document["paths"].items() for method, operation in item.items()]


def test_every_error_of_a_protected_operation_is_a_problem(document: dict[str, Any]) -> None:
    for method, path, operation in _operations(document):
        if operation.get("security") == [{}]:
            continue
        errors = {status: response for status, response in operation["responses"].items() if status >= "400"}
        assert {"400", "401", "403", "422", "429", "503"} <= set(errors), (method, path)
        if "requestBody" in operation:
            assert {"413", "415"} <= set(errors), (method, path)
        for status, response in errors.items():
            assert response["content"] == PROBLEM, (method, path, status)


def test_public_operations_need_no_credential(document: dict[str, Any]) -> None:
    public = {path for _, path, operation in _operations(document) if operation.get("security") == [{}]}
    assert public == {"/health/live", "/health/ready", "/problems", "/problems/{slug}"}
    ready = document["paths"]["/health/ready"]["get"]["responses"]
    assert set(ready) == {"200", "503"}


def test_alternative_representations_are_documented(document: dict[str, Any]) -> None:
    paths = document["paths"]
    for path in ("/v1/metrics/retention", "/v1/metrics/cohorts", "/v1/metrics/risk/customers"):
        content = paths[path]["get"]["responses"]["200"]["content"]
        assert set(content) == {"application/json", "text/csv"}, path
        assert "$ref" in content["application/json"]["schema"], path
    journal = paths["/v1/finance/journal"]["get"]["responses"]["200"]["content"]
    assert set(journal) == {"application/x-ndjson", "text/csv"}
    chart = paths["/v1/metrics/retention/chart.svg"]["get"]["responses"]["200"]["content"]
    assert set(chart) == {"image/svg+xml"}


def test_creates_that_repeat_answer_200_too(document: dict[str, Any]) -> None:
    for path in ("/v1/customers", "/v1/signals", "/v1/me/referral", "/v1/customers/{customer_id}/referral"):
        assert {"200", "201"} <= set(document["paths"][path]["post"]["responses"]), path


def test_request_schemas_are_as_strict_as_their_structs(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for name in ("OrderRequest", "OrderLine", "TierConfig", "Signal", "FingerprintsRequest"):
        assert schemas[name]["additionalProperties"] is False, name
    assert schemas["OrderRequest"]["properties"]["lines"]["items"] == {"$ref": "#/components/schemas/OrderLine"}
    assert schemas["Signal"]["properties"]["score"]["minimum"] == 0
    device = schemas["FingerprintsRequest"]["properties"]["device_hashes"]["items"]
    assert device["type"] == "string" and device["minLength"] == 1 and "pattern" in device
    multipliers = schemas["EarningRulesRequest"]["properties"]["category_multipliers"]
    assert multipliers["propertyNames"]["minLength"] == 1 and multipliers["additionalProperties"]["minimum"] == 0
    assert "additionalProperties" not in schemas["CustomerResponse"]  # responses may grow


def test_query_parameter_defaults_are_documented(app: Litestar, document: dict[str, Any]) -> None:
    """An optional query parameter's schema says the value the handler takes without it
    (retention's `granularity` is `month`, repeat's `count` is `purchases`)."""
    missing = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            for method in handler.http_methods:
                operation = document["paths"].get(route.path_format, {}).get(method.lower())
                if operation is None:
                    continue
                documented = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "query"}
                for name, parameter in handler.parsed_fn_signature.parameters.items():
                    kwarg = parameter.kwarg_definition
                    query = getattr(kwarg, "name", None) or name
                    default = parameter.default
                    if query not in documented or default is None or not parameter.has_default:
                        continue
                    value = getattr(default, "value", default)
                    if documented[query]["schema"].get("default") != value:
                        missing.append((method, route.path_format, query, value))
    assert not missing
