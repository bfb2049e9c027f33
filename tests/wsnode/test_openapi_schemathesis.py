"""Schemathesis against the push API's own OpenAPI document, served by a real node process: every operation, with
generated input, answers as the document says (no 5xx, documented statuses and content types, bodies that match),
and push bodies the document forbids are refused with a 4xx.

Driven through Hypothesis directly (one node for all operations) rather than schemathesis' pytest plugin.
"""

from __future__ import annotations

from typing import Any

import hypothesis
import schemathesis
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from tests.wsnode.conftest import API_KEY, StartNode
from wsnode.envelope import valid_user_id
from wsnode.openapi import USER_ID_FORMAT

# Ids the node must accept: any printable characters but whitespace and '|' (what the format's description says).
schemathesis.openapi.format(USER_ID_FORMAT, st.text(min_size=1, max_size=128).filter(valid_user_id))
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SETTINGS = hypothesis.settings(max_examples=60, deadline=None, database=None,
                               suppress_health_check=list(hypothesis.HealthCheck))


def test_the_push_api_answers_as_its_openapi_document_says(start_node: StartNode) -> None:
    node = start_node("node-st")
    schema = schemathesis.openapi.from_url(f"{node.url}/api/v1/openapi.json")
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = [GenerationMode.POSITIVE]
        if operation.label == "POST /api/v1/push":
            # Negative cases only for the body: a user id "violating" a format the generator cannot negate, or an
            # unknown query parameter, is not a request the node must refuse.
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:

            @hypothesis.given(case=operation.as_strategy(mode, headers=AUTH))
            @SETTINGS
            def check(case: Any) -> None:
                case.call_and_validate(headers=AUTH)

            check()
            checked.append(f"{operation.label} {mode.value}")
    # Every operation but the document itself (schemathesis leaves out the URL it loaded the schema from).
    assert len(checked) == 6 and "POST /api/v1/push negative" in checked, checked
