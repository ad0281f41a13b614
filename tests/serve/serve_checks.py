"""Checks shared by the HTTP tests of ``cvkit serve``."""

from __future__ import annotations

import httpx
import jsonschema

# every error the server answers: {"error": "..."} and nothing else
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
    "additionalProperties": False,
}


def expect_error(response: httpx.Response, status: int, *words: str) -> str:
    """Assert that ``response`` is the server's JSON error with ``status`` and a message that
    holds each of ``words``; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    jsonschema.validate(body, ERROR)
    for word in words:
        assert word in body["error"], body["error"]
    return body["error"]
