"""The link to a control step's children ("See the 5 items") shows on the execution page
without opening the step's collapsed row."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest

from flows.models import Execution
from tests.factories import flow_doc, mapped, parallel, run_to_end, start_execution, task

pytestmark = pytest.mark.django_db


class _VisibleLinks(HTMLParser):
    """(href, text) of every link a closed ``<details>`` does not hide: outside any
    ``<details>``, or in its ``<summary>``."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = 0  # depth of <details> bodies we are in (outside their <summary>)
        self.stack: list[str] = []
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "details":
            self.stack.append("details")
            self.hidden += 1
        elif tag == "summary" and self.stack and self.stack[-1] == "details":
            self.stack.append("summary")
            self.hidden -= 1
        elif tag == "a" and not self.hidden:
            self._href, self._text = dict(attrs).get("href") or "", ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "summary" and self.stack and self.stack[-1] == "summary":
            self.stack.pop()
            self.hidden += 1
        elif tag == "details" and self.stack:
            self.stack.pop()
            self.hidden -= 1
        elif tag == "a" and self._href is not None:
            self.links.append((self._href, " ".join(self._text.split())))
            self._href = None

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text += data


def visible_links(html: str) -> list[tuple[str, str]]:
    parser = _VisibleLinks()
    parser.feed(html)
    return parser.links


@pytest.fixture
def operator(client: Any, make_user: Any) -> Any:
    client.force_login(make_user("olga", "operator"))
    return client


@pytest.fixture
def fanned() -> Execution:
    document = flow_doc(
        [
            parallel("both", {"left": [task("l1")], "right": [task("r1")]}),
            mapped("each", "${input.items}", [task("x")]),
        ]
    )
    return run_to_end(start_execution(document, input={"items": list(range(5))}).id)


def test_a_map_steps_items_link_is_visible_with_its_row_collapsed(operator, fanned):
    html = operator.get(f"/executions/{fanned.id}/").content.decode()

    each = fanned.steps.get(task_name="each").seq
    both = fanned.steps.get(task_name="both").seq
    links = visible_links(html)
    assert (f"/executions/{fanned.id}/steps/{each}/children", "See the 5 items →") in links
    assert (f"/executions/{fanned.id}/steps/{both}/children", "List them →") in links


def test_the_parser_sees_links_in_a_summary_but_not_in_a_closed_body():
    html = (
        '<a href="/out">out</a><details><summary><a href="/sum">sum</a></summary>'
        '<a href="/in">in</a><details><summary>x</summary><a href="/deep">d</a></details>'
        "</details>"
    )

    assert visible_links(html) == [("/out", "out"), ("/sum", "sum")]
