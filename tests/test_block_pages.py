"""Block pages named by the rules wherever they say so: a captcha whose prompt comes after a long
head of scripts, and a captcha dialog shown (a selector), as registries serve them with status
200 — the seed's registry hides `#modalcaptcha` on every page and shows it to a throttled one."""

from __future__ import annotations

from typing import Any

import pytest

from client.bodies import PAGE_SCAN, refusal
from protocol.failures import FailureCode
from protocol.params import ContentRules

HEAD = "<!DOCTYPE html><html><head>" + "<script>var x = 1;</script>" * 200 + "</head><body>"
PROMPT = "Введіть в поле результат арифметичного виразу"
HIDDEN = '<div id="modalcaptcha" style="display: none;">captcha: введіть суму цифр</div>'
SHOWN = '<div id="modalcaptcha" style="display: block;">captcha: введіть суму цифр</div>'
RULES = ContentRules(block_patterns=[PROMPT], block_selectors=["#modalcaptcha[style*=block]"])


def page(body: str) -> bytes:
    return (HEAD + body + "</body></html>").encode()


@pytest.mark.parametrize(
    ("body", "blocked"),
    [
        (f"<h1>{PROMPT}</h1>", True),  # the prompt 5 KiB into the page
        (SHOWN + "<p>Рішення № 5</p>", True),  # the dialog shown
        (HIDDEN + "<p>Рішення № 5</p>", False),  # the control: a decision with its hidden dialog
        ("<p>Рішення № 5</p>" + "x" * PAGE_SCAN + PROMPT, False),  # past the bound: not looked at
    ],
    ids=["late-prompt", "dialog-shown", "dialog-hidden", "past-the-bound"],
)
def test_a_block_page_is_found_anywhere_in_the_page(body: str, blocked: bool) -> None:
    html = page(body)
    assert len(HEAD) > 1024  # the prompt is past the first KiB the rules used to see
    found = refusal(".html", "text/html; charset=utf-8", html[:PAGE_SCAN], RULES)
    assert (found is not None and found.code == FailureCode.BLOCKED) == blocked, found
    if blocked:
        assert found is not None and not found.permanent  # tried again later


def test_a_document_that_is_not_html_is_not_parsed_for_blocks() -> None:
    """An RTF original that quotes the prompt deep inside is the document: only an HTML page is
    looked at whole (a body of another kind, in its first KiB only)."""
    rtf = b"{\\rtf1\\ansi " + b"x" * 4096 + PROMPT.encode() + b"}"
    assert refusal(".rtf", "application/rtf", rtf, RULES) is None


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/tasks/create", {"source": "urls", "params": {
            "urls": [{"doc_id": "1", "url": "http://127.0.0.1:9/1"}], "block_selectors": ["div[["]}}),
        ("/api/v1/jobs", {"source": "id_range", "params": {
            "url_template": "http://127.0.0.1:9/{id}", "start_id": 1, "count": 5,
            "block_selectors": ["a >> b"]}}),
    ],
    ids=["task", "job"],
)  # fmt: skip
async def test_a_selector_that_does_not_compile_is_refused(
    gate: Any, path: str, body: dict[str, Any]
) -> None:
    """Every document of such a task would fail on every attempt: 422 naming the field, nothing made."""
    r = await gate.http.post(path, headers=gate.admin, json=body)
    assert r.status_code == 422 and r.json()["code"] == "invalid_field", r.text
    assert "block_selectors[0]" in r.text and "is not a CSS selector" in r.text
    assert await gate.sql("SELECT 1 FROM tasks") == []
