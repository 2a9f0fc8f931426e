"""The send API's OpenAPI 3.1 document (``GET /openapi.json``), built around the job schema
the worker is tested against (``web/job.schema.json``). Pure."""

from __future__ import annotations

from typing import Any

#: a job's statuses as the API reports them, in order (a later event never moves it back)
STATUS_ORDER = (("queued",), ("retrying",), ("sent", "failed"), ("delivered",), ("read",))
_STRING = {"type": "string"}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def openapi(job_schema: dict[str, Any]) -> dict[str, Any]:
    """The API's OpenAPI 3.1 document; its ``Job`` is the job schema the worker is tested
    against (``job_schema``)."""
    job = {k: v for k, v in job_schema.items() if k not in {"$schema", "$id"}}
    problem = {
        "type": "object",
        "required": ["errors"],
        "properties": {
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                },
            }
        },
    }
    accepted = {
        "type": "object",
        "required": ["job_key", "message_id"],
        "properties": {"job_key": {"type": "string"}, "message_id": {"type": "string"}},
    }
    status = {
        "type": "object",
        "required": ["job_key", "status"],
        "properties": {
            "job_key": {"type": "string"},
            "status": {"enum": sorted(s for group in STATUS_ORDER for s in group)},
            "code": {"type": ["string", "null"]},
            "whatsapp_message_id": {"type": ["string", "null"]},
            "accepted_at": {"type": "number"},
            "updated_at": {"type": "number"},
        },
    }
    return _document(job, problem, accepted, status)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _document(
    job: dict[str, Any], problem: dict[str, Any], accepted: dict[str, Any], status: dict[str, Any]
) -> dict[str, Any]:
    errors = {
        "401": _json(_ref("Problem"), "no or a wrong API key"),
        "429": _json(_ref("Problem"), "over this key's rate (Retry-After)"),
        "503": _json(_ref("Problem"), "the broker is away (nothing published)"),
    }
    idempotency = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "maxLength": 128},
        "description": "becomes the job's message id; the same key and body: the same answer",
    }
    batch = {
        "type": "object",
        "required": ["messages"],
        "properties": {"messages": {"type": "array", "items": _ref("Job")}},
    }
    results = {
        "type": "object",
        "properties": {"results": {"type": "array", "items": {"type": "object"}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "wa-trio send API", "version": "1"},
        "components": {
            "schemas": {"Job": job, "Problem": problem, "Accepted": accepted, "Status": status},
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
        "paths": {
            "/v1/messages": {
                "post": {
                    "summary": "Publish one job",
                    "parameters": [idempotency],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("Job")}},
                    },
                    "responses": {
                        "202": _json(_ref("Accepted"), "published, confirmed by the broker"),
                        "403": _json(_ref("Problem"), "the key may not send to that account"),
                        "409": _json(_ref("Problem"), "the key was used for another body"),
                        "422": _json(_ref("Problem"), "invalid job (the DLQ's codes)"),
                        **errors,
                    },
                }
            },
            "/v1/messages:batch": {
                "post": {
                    "summary": "Publish several jobs (one result each)",
                    "parameters": [idempotency],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": batch}},
                    },
                    "responses": {
                        "200": _json(results, "one result per job, in order"),
                        "413": _json(_ref("Problem"), "more than WHATSAPP_API_BATCH_MAX jobs"),
                        **errors,
                    },
                }
            },
            "/v1/messages/{job_key}": {
                "get": {
                    "summary": "What the worker knows of a job this key published",
                    "parameters": [
                        {
                            "name": "job_key",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": _json(_ref("Status"), "the job's last status"),
                        "404": _json(_ref("Problem"), "unknown to this key"),
                        "401": errors["401"],
                    },
                }
            },
        },
    }


__all__ = ["STATUS_ORDER", "openapi"]
