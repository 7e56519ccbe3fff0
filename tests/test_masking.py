"""Masking (flows/masking.py) and where ``${secrets.NAME}`` may be written."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, urlencode

import pytest

from flows import services
from flows.masking import MASK, Masker
from flows.services.errors import InvalidFlow
from tests.factories import flow_doc, mapped, task

SECRET = "s3cr3t-Value/with+odd=chars"


@pytest.mark.parametrize("prefix", ["", "u", "us", "user:", "Bearer x "])
def test_a_value_is_masked_inside_base64_at_every_offset(prefix) -> None:
    # A Basic header, or a body echoed base64-encoded: the value's encoding depends on how
    # many bytes precede it.
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        encoded = encode(f"{prefix}{SECRET}!".encode()).decode()
        masked = Masker([SECRET]).text(f"Authorization: Basic {encoded}")
        assert MASK in masked
        middle = encode(SECRET.encode()).decode()[4:-4]
        assert middle not in masked


def test_json_escaped_url_encoded_and_repr_forms_are_masked() -> None:
    value = 'a"b\\c d&e=f'
    text = " | ".join(
        [json.dumps({"v": value}), urlencode({"k": value}), quote(value), repr(value)]
    )
    masked = Masker([value]).text(text)
    assert masked.count(MASK) == 4, masked


def test_lists_nested_objects_and_keys_are_masked_and_other_values_kept() -> None:
    masker = Masker([SECRET])
    value = {"a": [1, {"b": [f"x{SECRET}y", True, None]}], SECRET: 2.5, "keep": "plain"}
    assert masker.value(value) == {
        "a": [1, {"b": [f"x{MASK}y", True, None]}],
        MASK: 2.5,
        "keep": "plain",
    }


def test_a_short_value_is_masked_itself_but_not_its_fragments() -> None:
    # The base64 fragments of a 3-character value are 2-3 characters long: masking them
    # would hide unrelated text everywhere, so only the value itself is.
    masker = Masker(["abc"])
    assert masker.text("xabcx and YWJj") == f"x{MASK}x and {MASK}"
    assert masker.text("the quick brown fox") == "the quick brown fox"


def test_no_values_masks_nothing() -> None:
    masker = Masker(["", ""])
    assert not masker
    assert masker.value({"a": "b"}) == {"a": "b"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("document", "field", "says"),
    [
        (
            flow_doc([task("a", "http_request", url="https://x.example/${secrets.a.b}")]),
            "tasks[0].parameters.url",
            "name one secret",
        ),
        (
            flow_doc([mapped("m", ["${secrets.token}"], [task("each", "noop")])]),
            "tasks[0].items[0]",
            "a secret is resolved only for the task that uses it",
        ),
        (
            flow_doc(
                [
                    mapped("m", [1, 2], [task("each", "noop")])
                    | {"parameters": {"k": "${secrets.t}"}}
                ]
            ),
            "tasks[0].parameters.k",
            "a secret is resolved only for the task that uses it",
        ),
    ],
)
def test_where_a_secret_reference_may_not_be_written(document, field, says) -> None:
    with pytest.raises(InvalidFlow) as caught:
        services.validate_flow(document)
    errors = {e["field"]: e["message"] for e in caught.value.errors}
    assert field in errors, errors
    assert says in errors[field]


@pytest.mark.django_db
def test_a_secret_inside_a_map_iterator_task_is_allowed() -> None:
    document = flow_doc(
        [mapped("m", [1, 2], [task("each", "http_request", url="https://x/${secrets.t}")])]
    )
    assert services.validate_flow(document).tasks[0].name == "m"
