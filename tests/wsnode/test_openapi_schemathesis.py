"""Schemathesis against the push API's own OpenAPI document, served by a real node process: every operation, with
generated input, answers as the document says (no 5xx, documented statuses and content types, bodies that match).

Driven through Hypothesis directly (one node for all operations) rather than schemathesis' pytest plugin.
"""

from __future__ import annotations

from typing import Any

import hypothesis
import schemathesis
from hypothesis import strategies as st

from tests.wsnode.conftest import API_KEY, StartNode
from wsnode.envelope import valid_user_id
from wsnode.openapi import USER_ID_FORMAT

# Ids the node must accept: any printable characters but whitespace and '|' (what the format's description says).
schemathesis.openapi.format(USER_ID_FORMAT, st.text(min_size=1, max_size=128).filter(valid_user_id))


def test_the_push_api_answers_as_its_openapi_document_says(start_node: StartNode) -> None:
    node = start_node("node-st")
    schema = schemathesis.openapi.from_url(f"{node.url}/api/v1/openapi.json")
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(max_examples=60, deadline=None, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))
        def check(case: Any) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {API_KEY}"})

        check()
        checked.append(operation.label)
    # Every operation but the document itself (schemathesis leaves out the URL it loaded the schema from).
    assert len(checked) == 5 and "POST /api/v1/push" in checked, checked
