"""The OpenAPI 3.1 document of leadflow's HTTP API, served at `GET /openapi.json`.

Request bodies that have a pydantic model take its JSON schema, so the
document cannot drift from what the handlers validate; a test checks that
every route the app registers is described here and nothing else.
"""

from __future__ import annotations

from typing import Any

from leadflow_app import access
from schemas import CrmEvent, EngagementEvent

_ERROR = {"$ref": "#/components/schemas/Error"}


def _answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"description": description}
    if schema is not None:
        body["content"] = {"application/json": {"schema": schema}}
    return body


def _refusals(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "Malformed body (bad JSON, bad encoding); dead-lettered.",
        401: "Missing or wrong credential; dead-lettered.",
        403: "Bad signature, unconfigured secret or forbidden origin.",
        408: "Body sent slower than HTTP_BODY_MIN_RATE_BYTES_S; dead-lettered.",
        413: "Body larger than the configured limit, or than Kafka takes; dead-lettered.",
        415: "Unsupported content type; dead-lettered.",
        422: "Fields refused, each named in `fields`; dead-lettered.",
        429: "Rate limit of this credential, or too many uploads at once; see Retry-After.",
        503: "Kafka did not acknowledge; retry with the same idempotency key.",
        504: "Not answered within HTTP_REQUEST_TIMEOUT_S; retry with the same key.",
    }
    return {str(status): _answer(meaning[status], _ERROR) for status in statuses}


def _accepted() -> dict[str, Any]:
    return _answer(
        "Kafka acknowledged the event (acks=all).",
        {
            "type": "object",
            "properties": {"status": {"const": "accepted"}, "event_id": {"type": "string"}},
            "required": ["status", "event_id"],
        },
    )


def _with_access(paths: dict[str, Any]) -> None:
    """Each operation's access decision, from the one table the server enforces."""
    for path, item in paths.items():
        for method, operation in item.items():
            rule = access.rule_for(method.upper(), path)
            if rule is None:
                continue  # the server refuses to start; the matrix test names the route
            operation["x-access"] = rule.describe()
            responses = operation.setdefault("responses", {})
            if rule.kind in ("scope", "form"):
                operation["security"] = [{"bearer": []}, {"apiKeyHeader": []}]
                if rule.kind == "form":
                    operation["security"].append({})  # a public form's token + origin instead
                responses.setdefault("401", _answer("No API key, or an unknown one.", _ERROR))
                responses.setdefault("403", _answer("The key lacks the scope.", _ERROR))
            else:
                operation["security"] = []
            if method == "post":
                responses.setdefault("429", _answer("Rate limit; see Retry-After.", _ERROR))


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


_FORM_FIELDS = {
    "type": "object",
    "description": "Form fields as the site names them (name, email, phone, 姓名, 手机 …, utm_*).",
    "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
}
_SIGNED_JSON = {"application/json": {"schema": {"type": "object"}}}
_CALL_EVENT = {
    "type": "object",
    "required": ["call_id", "from", "to", "direction", "status", "started_at"],
    "properties": {
        "call_id": {"type": "string"},
        "from": {"type": "string"},
        "to": {"type": "string"},
        "direction": {"enum": ["inbound", "outbound"]},
        "status": {"type": "string"},
        "started_at": {"type": "string", "format": "date-time"},
        "ended_at": {"type": "string", "format": "date-time"},
        "duration_s": {"type": "integer", "minimum": 0},
        "agent_id": {"type": "string"},
        "outcome": {"type": "string"},
        "notes": {"type": "string"},
    },
}
_JSON_OBJECT = {"type": "object"}
_UPLOAD_SUMMARY = {
    "type": "object",
    "properties": {
        "upload_id": {"type": "string"},
        "rows_read": {"type": "integer"},
        "published": {"type": "integer"},
        "rejected": {"type": "object", "additionalProperties": {"type": "integer"}},
        "warned": {"type": "object", "additionalProperties": {"type": "integer"}},
        "problems": {
            "type": "array",
            "maxItems": 20,
            "items": {
                "type": "object",
                "properties": {
                    "row": {"type": "integer"},
                    "outcome": {"enum": ["rejected", "warned"]},
                    "reasons": {"type": "array", "items": {"type": "string"}},
                    "message": {"type": "string"},
                },
            },
        },
        "problem_rows": {"type": "integer"},
        "errors_url": {"type": ["string", "null"]},
    },
}
_DATE = {"type": "string", "format": "date-time"}
_BY = {"enum": ["channel", "source", "campaign", "team", "owner"]}


_LEAD_ID = {"name": "lead_id", "in": "path", "required": True, "schema": {"type": "string"}}
_TOKEN = {
    "name": "token",
    "in": "path",
    "required": True,
    "description": "A signed tracking link's token, as the mailer wrote it (leadflow.tracking).",
    "schema": {"type": "string", "maxLength": 640, "pattern": "^[A-Za-z0-9_-]+[.][A-Za-z0-9_-]+$"},
}
_BAD_LINK = _answer(
    "Not a link leadflow signed for this use (bad_token), or naming no template or link "
    "(unknown_template, unknown_link); dead-lettered on dlq.tracking. Never a redirect.",
    _ERROR,
)
_NO_STORE = {"Cache-Control": {"schema": {"const": "no-store"}}}
_ONE_CLICK = {
    "type": "object",
    "description": "RFC 8058 one-click; the page's own button sends an empty body.",
    "properties": {"List-Unsubscribe": {"const": "One-Click"}},
}


def document(version: str) -> dict[str, Any]:
    web_form_responses = {
        "202": _accepted(),
        **_refusals(400, 401, 403, 413, 415, 422, 429, 503),
    }
    json_event_responses = {"202": _accepted(), **_refusals(413, 415, 422, 503)}
    call_responses = {"202": _accepted(), **_refusals(401, 403, 413, 422, 503)}
    social_post = {
        "200": _answer("Every announced lead was recorded.", _JSON_OBJECT),
        **_refusals(400, 403, 413, 422, 503),
    }
    paths: dict[str, Any] = {
        "/v1/leads/web": {
            "post": {
                "summary": "A website form post (JSON, urlencoded or multipart).",
                "parameters": [
                    _query("form_id", "The form, as named in config/forms.yaml."),
                    {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}},
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": _FORM_FIELDS},
                        "application/x-www-form-urlencoded": {"schema": _FORM_FIELDS},
                        "multipart/form-data": {"schema": _FORM_FIELDS},
                    },
                },
                "responses": web_form_responses,
            },
            "options": {
                "summary": "CORS preflight for a form's allowed origins.",
                "parameters": [_query("form_id", "The form.")],
                "responses": {"204": _answer("Allowed."), **_refusals(403)},
            },
        },
        "/v1/uploads/tradeshow": {
            "post": {
                "summary": "A badge-scanner export (CSV/XLSX) with its event name.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["file", "event"],
                                "properties": {
                                    "file": {"type": "string", "contentMediaType": "text/csv"},
                                    "event": {"type": "string"},
                                    "mapping": {"type": "string"},
                                    "timezone": {
                                        "type": "string",
                                        "description": "Zone of scan times written without an "
                                        "offset: Asia/Shanghai, +08:00 (default UTC).",
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _answer(
                        "The upload's summary: rows read, leads published, `rejected` and "
                        "`warned` counts by reason, the first 20 such rows (`problems`: row, "
                        "outcome, reasons, message), `upload_id`, and `errors_url` (the error "
                        "file of those rows) when any row was rejected or warned.",
                        _UPLOAD_SUMMARY,
                    ),
                    **_refusals(400, 408, 413, 415, 422, 429, 503),
                },
            }
        },
        "/v1/uploads/{upload_id}/errors.csv": {
            "get": {
                "summary": "An upload's rejected and warned rows: its columns and a reason.",
                "parameters": [
                    {
                        "name": "upload_id",
                        "in": "path",
                        "required": True,
                        "description": "The upload answer's upload_id (32 hex digits).",
                        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "CSV (UTF-8 with BOM): the original columns and a "
                        "`reason`; cells starting with =, +, -, @, tab or CR get a leading "
                        "`'`. Kept 7 days, for the last 500 uploads with problem rows.",
                        "content": {"text/csv": {"schema": {"type": "string"}}},
                    },
                    "404": _answer(
                        "No such upload, none of its rows was rejected or warned, or its "
                        "file is no longer kept.",
                        _ERROR,
                    ),
                },
            }
        },
        "/v1/events/crm": {
            "post": {
                "summary": "A rep's action: accept, convert, set_stage, won, lost, disqualify.",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": CrmEvent.model_json_schema()}},
                },
                "responses": json_event_responses,
            }
        },
        "/v1/events/engagement": {
            "post": {
                "summary": "Marketing engagement (webinar attended, pricing page …).",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": EngagementEvent.model_json_schema()}
                    },
                },
                "responses": json_event_responses,
            }
        },
        "/v1/calls/twilio": {
            "post": {
                "summary": "Twilio Voice status callback, signed with X-Twilio-Signature.",
                "requestBody": {
                    "required": True,
                    "content": {"application/x-www-form-urlencoded": {"schema": _JSON_OBJECT}},
                },
                "responses": call_responses,
            }
        },
        "/v1/calls/events": {
            "post": {
                "summary": "A call event in leadflow's JSON (X-Api-Key when configured).",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _CALL_EVENT}},
                },
                "responses": call_responses,
            }
        },
        "/v1/calls/asterisk": {
            "post": {
                "summary": "An Asterisk AMI Cdr event as its `Key: value` text.",
                "requestBody": {
                    "required": True,
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "responses": call_responses,
            }
        },
        "/v1/social/meta": {
            "get": {
                "summary": "Meta's webhook verification: echoes hub.challenge.",
                "parameters": [
                    _query("hub.mode", "subscribe"),
                    _query("hub.verify_token", "SOCIAL_META_VERIFY_TOKEN"),
                    _query("hub.challenge", "Echoed back."),
                ],
                "responses": {"200": _answer("The challenge, as text."), **_refusals(403)},
            },
            "post": {
                "summary": "A leadgen notification, signed with X-Hub-Signature-256.",
                "requestBody": {"required": True, "content": _SIGNED_JSON},
                "responses": social_post,
            },
        },
        "/v1/social/linkedin": {
            "get": {
                "summary": "LinkedIn's webhook validation (challengeCode).",
                "parameters": [_query("challengeCode", "The code to answer.")],
                "responses": {
                    "200": _answer("challengeResponse", _JSON_OBJECT),
                    **_refusals(403, 422),
                },
            },
            "post": {
                "summary": "A lead notification, signed with X-LI-Signature.",
                "requestBody": {"required": True, "content": _SIGNED_JSON},
                "responses": social_post,
            },
        },
        "/v1/privacy/erase": {
            "post": {
                "summary": "Erase a person everywhere (admin key; JSON only). "
                "With dry_run, answer what would go and change nothing.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "description": "Exactly one of email, phone, lead_id.",
                                "properties": {
                                    "email": {"type": "string"},
                                    "phone": {"type": "string"},
                                    "lead_id": {"type": "string"},
                                    "country": {
                                        "type": "string",
                                        "description": "Region of a phone in national format.",
                                    },
                                    "dry_run": {"type": "boolean", "default": False},
                                },
                                "additionalProperties": False,
                            }
                        }
                    },
                },
                "responses": {
                    "200": _answer("What was erased, or with dry_run what would be.", _JSON_OBJECT),
                    **_refusals(400, 401, 415, 422),
                },
            }
        },
        "/v1/leads": {
            "get": {
                "summary": "Leads by email, phone or id (merged people included).",
                "parameters": [
                    _query("email", "Any address the person used."),
                    _query("phone", "E.164."),
                    _query("lead_id", "A lead id."),
                    _query("limit", "At most this many.", {"type": "integer", "minimum": 1}),
                ],
                "responses": {"200": _answer("Leads.", _JSON_OBJECT), **_refusals(422)},
            }
        },
        "/v1/leads/{lead_id}/explain": {
            "get": {
                "summary": "Why a lead looks as it does: merges, score rules, routing and "
                "every routing decision about the person (`assignments`).",
                "parameters": [
                    {
                        "name": "lead_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _answer("The explanation.", _JSON_OBJECT),
                    "404": _answer("No such lead.", _ERROR),
                },
            }
        },
        "/v1/duplicates": {
            "get": {
                "summary": "Suggested duplicates: pairs a fuzzy rule found similar but did not "
                "merge because an email or phone differs; best score first.",
                "parameters": [_query("limit", "At most.", {"type": "integer", "minimum": 1})],
                "responses": {"200": _answer("Pairs.", _JSON_OBJECT), **_refusals(400)},
            }
        },
        "/v1/leads/{lead_id}/merge": {
            "post": {
                "summary": "Merge two leads a person knows are one (the lead that entered first "
                "survives). Answers 202 once the command is in Kafka.",
                "parameters": [_LEAD_ID],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"with": {"type": "string"}},
                                "required": ["with"],
                                "additionalProperties": False,
                            }
                        }
                    },
                },
                "responses": {
                    "202": _answer("The merge command is in the stream.", _JSON_OBJECT),
                    "404": _answer("No such lead.", _ERROR),
                    "409": _answer("One of them is already merged.", _ERROR),
                    **_refusals(400, 422),
                },
            }
        },
        "/v1/leads/{lead_id}/unmerge": {
            "post": {
                "summary": "Undo the merge of this lead: both leads, touches and owners back.",
                "parameters": [_LEAD_ID],
                "responses": {
                    "202": _answer("The unmerge command is in the stream.", _JSON_OBJECT),
                    "404": _answer("No such lead.", _ERROR),
                    "409": _answer("The lead is not merged.", _ERROR),
                    **_refusals(400, 422),
                },
            }
        },
        "/v1/dead-letters": {
            "get": {
                "summary": "Recent dead letters, newest first.",
                "parameters": [_query("stage", "A stage name."), _query("limit", "At most.")],
                "responses": {"200": _answer("Dead letters.", _JSON_OBJECT), **_refusals(422)},
            }
        },
        "/v1/audit": {
            "get": {
                "summary": "The audit log: every erase and every read of personal data.",
                "parameters": [
                    _query("action", "erase, erase_dry_run, read_leads, read_explain …"),
                    _query("key_id", "The id of the key that acted."),
                    _query("identifier", "An email, E.164 phone or lead id (hashed to look up)."),
                    _query("from", "Start (inclusive).", _DATE),
                    _query("to", "End (exclusive).", _DATE),
                    _query("limit", "At most.", {"type": "integer", "minimum": 1}),
                ],
                "responses": {"200": _answer("Audit rows.", _JSON_OBJECT), **_refusals(400)},
            }
        },
        "/v1/funnel": {
            "get": {
                "summary": "Cohort or activity funnel for a date range.",
                "parameters": [
                    _query("from", "Start (inclusive).", _DATE),
                    _query("to", "End (exclusive).", _DATE),
                    _query("by", "Breakdown.", _BY),
                    _query("mode", "strict or any.", {"enum": ["strict", "any"]}),
                    _query("kind", "cohort or activity.", {"enum": ["cohort", "activity"]}),
                    _query("window_days", "Conversion window.", {"type": "integer"}),
                ],
                "responses": {"200": _answer("The funnel.", _JSON_OBJECT), **_refusals(422)},
            }
        },
        "/v1/pipeline": {
            "get": {
                "summary": "The pipeline now or as of a past time.",
                "parameters": [
                    _query("as_of", "A past time.", _DATE),
                    _query("by", "Breakdown.", _BY),
                ],
                "responses": {"200": _answer("The pipeline.", _JSON_OBJECT), **_refusals(422)},
            }
        },
        "/v1/pipeline/stagnant": {
            "get": {
                "summary": "Open leads in a stage longer than N days.",
                "parameters": [_query("days", "N.", {"type": "integer", "minimum": 0})],
                "responses": {"200": _answer("Stagnant leads.", _JSON_OBJECT), **_refusals(422)},
            }
        },
        "/v1/nurture/sequences": {
            "get": {
                "summary": "Each nurture sequence's steps: leads enrolled, mailed, bounced, "
                "opened, clicked, replied, unsubscribed, skipped, exited; tasks created and done.",
                "parameters": [_query("sequence", "One sequence only.", {"type": "string"})],
                "responses": {
                    "200": _answer("Rows per sequence and step.", _JSON_OBJECT),
                    **_refusals(422),
                },
            }
        },
        "/v1/nurture/tasks": {
            "get": {
                "summary": "Call tasks per rep as of a time: due, done on time, late (done late "
                "or missed), missed, open.",
                "parameters": [_query("as_of", "ISO time (default now).", {"type": "string"})],
                "responses": {"200": _answer("Rows per rep.", _JSON_OBJECT), **_refusals(422)},
            }
        },
        "/v1/scoring/evaluation": {
            "get": {
                "summary": "The learned score judged on outcomes it predicted before learning "
                "them: model AUC, rules AUC and model log-loss per model version or week.",
                "parameters": [
                    _query("by", "version (default) or week.", {"enum": ["version", "week"]})
                ],
                "responses": {
                    "200": _answer("Rows per version or week.", _JSON_OBJECT),
                    **_refusals(422),
                },
            }
        },
        "/v1/nurture/o/{token}": {
            "get": {
                "summary": "Open pixel of a nurture email: records email_open for a valid link.",
                "parameters": [_TOKEN],
                "responses": {
                    "200": {
                        "description": "A 1x1 transparent GIF, for every token (a bad one is "
                        "dead-lettered and records nothing), so no mail shows a broken image.",
                        "headers": _NO_STORE,
                        "content": {"image/gif": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/v1/nurture/c/{token}": {
            "get": {
                "summary": "Click of a nurture email's link: records email_click, redirects "
                "to the URL its template lists at the signed index (nowhere else).",
                "parameters": [_TOKEN],
                "responses": {
                    "302": {
                        "description": "To the template's URL (also when Kafka did not take "
                        "the click: the person is never stuck).",
                        "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
                    },
                    "400": _BAD_LINK,
                    "429": _answer("Too many refused links from this client.", _ERROR),
                    **_refusals(503),
                },
            }
        },
        "/v1/nurture/u/{token}": {
            "get": {
                "summary": "Unsubscribe page of a nurture email: one button that posts back. "
                "Records nothing (link scanners fetch every link).",
                "parameters": [_TOKEN],
                "responses": {
                    "200": {
                        "description": "HTML; no personal data.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "400": _BAD_LINK,
                    "429": _answer("Too many refused links from this client.", _ERROR),
                    **_refusals(503),
                },
            },
            "post": {
                "summary": "Unsubscribe (the page's button, or RFC 8058 one-click): the lead is "
                "put on nurture.suppressions and email_unsubscribe is recorded. Idempotent.",
                "parameters": [_TOKEN],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/x-www-form-urlencoded": {"schema": _ONE_CLICK},
                        "multipart/form-data": {"schema": _ONE_CLICK},
                    },
                },
                "responses": {
                    "200": {
                        "description": "Unsubscribed: text/plain for one-click, else HTML.",
                        "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "text/html": {"schema": {"type": "string"}},
                        },
                    },
                    "400": _BAD_LINK,
                    "503": _answer(
                        "Kafka did not take the unsubscribe; nothing was promised, retry "
                        "(text/plain or HTML, with Retry-After)."
                    ),
                },
            },
        },
        "/dashboard": {
            "get": {
                "summary": "The funnel dashboard (HTML).",
                "responses": {"200": _answer("HTML.")},
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness and roles.",
                "responses": {"200": _answer("OK.", _JSON_OBJECT)},
            }
        },
        "/metrics": {
            "get": {"summary": "Prometheus metrics.", "responses": {"200": _answer("Text.")}}
        },
        "/openapi.json": {
            "get": {
                "summary": "This document.",
                "responses": {"200": _answer("OpenAPI.", _JSON_OBJECT)},
            }
        },
    }
    _with_access(paths)
    return {
        "openapi": "3.1.0",
        "info": {"title": "leadflow", "version": version},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from `leadflow keys create` (lf_…).",
                },
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string", "description": "A stable reason code."},
                        "message": {"type": "string"},
                        "fields": {"type": "object", "additionalProperties": {"type": "string"}},
                        "dead_letter_id": {"type": "string"},
                    },
                }
            },
        },
    }
