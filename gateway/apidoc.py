"""The OpenAPI document of the Open API dialect, served at ``/openapi.json``.

Request schemas are generated from the very msgspec structs that decode requests, so the
document cannot drift from the parser; a test checks every route is described.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.dialects.openapi import JOB_TYPES, MAX_PAGE, CreateJobRequest, PatchJobRequest
from gateway.store import JOB_STATES

_ERROR = {"type": "object", "properties": {"errors": {"type": "string"}}, "required": ["errors"]}
_TASK_ROW = {"type": "object", "properties": {k: {"type": "string"} for k in ("url", "hostname", "ip", "description")}}
_JOB = {
    "type": "object",
    "required": ["id", "created_at", "updated_at", "state", "type", "args", "result"],
    "properties": {
        "id": {"type": "integer"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "task_id": {"type": "string"},
        "bio": {"type": "string"},
        "type": {"type": "string", "enum": list(JOB_TYPES)},
        "state": {"type": "string", "enum": list(JOB_STATES)},
        "source": {"type": "string"},
        "args": {"type": "object", "description": "The request's arguments; headers and password are always blanked."},
        "result": {
            "type": "object",
            "properties": {
                "state": {"type": "string"},
                "job_states": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "state": {"type": "string"},
                            "error": {"type": "string"},
                            "results": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "scheduler_cluster_id": {"type": "integer", "minimum": 0},
                                        "success_tasks": {"type": "array", "items": _TASK_ROW},
                                        "failure_tasks": {"type": "array", "items": _TASK_ROW},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
        "scheduler_clusters": {"type": "array", "items": {"$ref": "#/components/schemas/Cluster"}},
    },
}
_CLUSTER = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "adapter": {"type": "string"},
        "platform": {"type": "string"},
        "health": {
            "type": "object",
            "properties": {
                "reachable": {"type": "boolean"},
                "latency_ms": {"type": "number"},
                "error": {"type": "string"},
            },
        },
    },
}


def _responses(ok: dict[str, Any] | None, *errors: int) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": "OK", **({"content": {"application/json": {"schema": ok}}} if ok else {})}
    }
    for status in (401, *errors):
        responses[str(status)] = {
            "description": "Error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return responses


def _list_parameters(max_page_size: int) -> list[dict[str, Any]]:
    """The list's query parameters with the very bounds ``list_jobs`` enforces (400 outside them)."""
    return [
        {"name": name, "in": "query", "schema": schema}
        for name, schema in (
            ("page", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1}),
            ("per_page", {"type": "integer", "minimum": 1, "maximum": max_page_size, "default": 10}),
            ("state", {"type": "string", "enum": list(JOB_STATES)}),
            ("type", {"type": "string", "enum": list(JOB_TYPES)}),
        )
    ]


def document(version: str, max_page_size: int = 100) -> dict[str, Any]:
    (create, patch), components = msgspec.json.schema_components(
        [CreateJobRequest, PatchJobRequest], ref_template="#/components/schemas/{name}"
    )
    job, cluster = {"$ref": "#/components/schemas/Job"}, {"$ref": "#/components/schemas/Cluster"}
    job_id = [
        {
            "name": "id",
            "in": "path",
            "required": True,
            "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
        }
    ]

    def body(schema: dict[str, Any]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    return {
        "openapi": "3.1.0",
        "info": {"title": "Harbor preheat gateway: Dragonfly Open API dialect", "version": version},
        "components": {
            "schemas": {**components, "Job": _JOB, "Cluster": _CLUSTER, "Error": _ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthy": {"get": {"summary": "Harbor's health check", "responses": _responses({"type": "string"}, 503)}},
            "/oapi/v1/jobs": {
                "post": {
                    "summary": "Create a preheat job",
                    "requestBody": body(create),
                    "responses": _responses(job, 413, 422, 429),
                },
                "get": {
                    "summary": "List jobs, newest first",
                    "parameters": _list_parameters(max_page_size),
                    "responses": _responses({"type": "array", "items": job}, 400),
                },
            },
            "/oapi/v1/jobs/{id}": {
                "get": {"summary": "Read a job", "parameters": job_id, "responses": _responses(job, 404)},
                "patch": {
                    "summary": "Change a job's bio",
                    "parameters": job_id,
                    "requestBody": body(patch),
                    "responses": _responses(job, 404, 422),
                },
                "delete": {
                    "summary": "Cancel unfinished work, then remove the job",
                    "parameters": job_id,
                    "responses": _responses(None, 404),
                },
            },
            "/oapi/v1/clusters": {
                "get": {
                    "summary": "Clusters with their adapter and last health",
                    "responses": _responses({"type": "array", "items": cluster}),
                }
            },
        },
    }
