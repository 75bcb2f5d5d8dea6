"""Feedback messages: good ones become records, anything else an Invalid with a reason."""

from __future__ import annotations

import orjson
import pytest

from operators.feedback import Feedback, parse_feedback_message

AID = "0123456789abcdef01234567"


def test_a_label_on_feedback_topic_names_its_sensor() -> None:
    body = orjson.dumps({"alert_id": AID, "label": "true_positive"})
    assert parse_feedback_message("site1/feedback/p-7", body, 5.0) == Feedback(
        "p-7", AID, "true_positive", "site1/feedback/p-7", 5.0
    )


@pytest.mark.parametrize(
    ("topic", "payload", "reason", "detail"),
    [
        ("feedback/p", b"{oops", "malformed_feedback", "not JSON"),
        ("feedback/p", b"[1]", "malformed_feedback", "JSON object"),
        ("feedback/p", orjson.dumps({"alert_id": AID}), "malformed_feedback", "label"),
        ("feedback/p", orjson.dumps({"alert_id": 7, "label": "true_positive"}),
         "malformed_feedback", "alert_id"),
        ("sensors/p/readings", orjson.dumps({"alert_id": AID, "label": "true_positive"}),
         "malformed_feedback", "feedback/<sensor_id>"),
        ("feedback/p", b"x" * 5000, "payload_too_large", "bytes"),
    ],
)  # fmt: skip
def test_malformed_feedback_says_why(topic: str, payload: bytes, reason: str, detail: str) -> None:
    out = parse_feedback_message(topic, payload, 0.0)
    assert not isinstance(out, Feedback)
    assert out.reason == reason and detail in out.detail and out.origin == topic
