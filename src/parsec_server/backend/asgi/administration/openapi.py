"""The OpenAPI 3.1 document of the administration API, generated from the route table and
the msgspec schemas the routes validate with (msgspec's JSON Schema is draft 2020-12, the
dialect of OpenAPI 3.1). Nothing in it is written by hand but the descriptions."""

from __future__ import annotations

from typing import Any

import msgspec

from parsec_server.api.ids import OrganizationID
from parsec_server.backend.asgi.administration.http import MAX_BODY_SIZE
from parsec_server.backend.asgi.administration.routes import OPENAPI_PATH, ROUTES, Route
from parsec_server.backend.asgi.administration.schemas import ErrorRep

_REF = "#/components/schemas/{name}"
_ERROR_REF = {"$ref": _REF.format(name="ErrorRep")}
_COMMON_ERRORS = {
    401: "No `Authorization: Bearer` header",
    403: "Wrong administration token",
}
_BODY_ERRORS = {
    400: "Malformed JSON (`malformed_json`) or invalid data (`invalid_data`)",
    413: f"Body larger than {MAX_BODY_SIZE} bytes",
    415: "Body not `application/json`",
}
_QUERY_ERRORS = {400: "Invalid query parameter (`invalid_data`)"}


def openapi_document(version: str) -> dict[str, Any]:
    types: list[Any] = [ErrorRep]
    for route in ROUTES:
        types.append(route.response)
        if route.body is not None:
            types.append(route.body)
    refs, components = msgspec.json.schema_components(types, ref_template=_REF)
    schema_of = dict(zip((id(t) for t in types), refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schema_of)
    paths[OPENAPI_PATH] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "security": [],
            "responses": {
                "200": {
                    "description": "The OpenAPI document",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "Parsec server administration API",
            "version": version,
            "description": "See docs/administration-api.md. Every error answer is "
            '`{"error": <code>, "detail": <text or null>}`.',
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The server's administration token",
                }
            },
        },
    }
    portable: dict[str, Any] = _portable_patterns(document)
    return portable


def _operation(route: Route, schema_of: dict[int, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.handler.__name__,
        "summary": route.summary,
    }
    parameters = [
        {
            "name": name[1:-1],
            "in": "path",
            "required": True,
            "schema": msgspec.json.schema(OrganizationID),
        }
        for name in route.segments
        if name.startswith("{")
    ]
    errors = dict(_COMMON_ERRORS)
    if route.query is not None:
        parameters += _query_parameters(route.query)
        errors.update(_QUERY_ERRORS)
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": _no_ref_siblings(schema_of[id(route.body)])}
            },
        }
        errors.update(_BODY_ERRORS)
    errors.update(route.errors)
    content = {"application/json": {"schema": schema_of[id(route.response)]}}
    if route.csv:
        content["text/csv"] = {"schema": {"type": "string"}}
    responses: dict[str, Any] = {"200": {"description": "Success", "content": content}}
    for status, description in sorted(errors.items()):
        answer: dict[str, Any] = {
            "description": description,
            "content": {"application/json": {"schema": _ERROR_REF}},
        }
        if status == 401:
            answer["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        responses[str(status)] = answer
    operation["responses"] = responses
    return operation


def _query_parameters(query: type) -> list[dict[str, Any]]:
    (ref,), components = msgspec.json.schema_components([query], ref_template=_REF)
    schema = components[ref["$ref"].rsplit("/", 1)[1]]
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in schema["properties"].items()
    ]


def _no_ref_siblings(schema: dict[str, Any]) -> dict[str, Any]:
    """`{"$ref": X, ...rules}` as `{"allOf": [{"$ref": X}], ...rules}`: the same in JSON
    Schema 2020-12, and understood by tools that ignore a `$ref`'s siblings."""
    if "$ref" not in schema or len(schema) == 1:
        return schema
    rules = {k: v for k, v in schema.items() if k != "$ref"}
    return {"allOf": [{"$ref": schema["$ref"]}], **rules}


def _portable_patterns(value: Any) -> Any:
    """Our patterns anchor with Python's `\\A` and `\\Z`; ECMA-262 (JSON Schema's regex
    dialect) writes them `^` and `$` (without the multiline flag, `$` is the very end)."""
    if isinstance(value, dict):
        return {
            k: (
                v.replace("\\A", "^").replace("\\Z", "$")
                if k == "pattern" and isinstance(v, str)
                else _portable_patterns(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_portable_patterns(v) for v in value]
    return value
