"""CSS selectors of source profiles, compiled the way the client runs them (selectolax's lexbor
engine): the gate refuses a profile whose selector would fail on every attempt."""

from __future__ import annotations

from selectolax.lexbor import LexborHTMLParser, SelectolaxError

from protocol.sources import SourceProfile


def selectors(profile: SourceProfile) -> list[tuple[str, str]]:
    """Every CSS selector of the profile, with the field that holds it."""
    out = [("results.links", profile.results.links)]
    if profile.start is not None:
        out.append(("start.hidden_fields", profile.start.hidden_fields))
    if profile.detail is not None and profile.detail.document is not None:
        out.append(("detail.document", profile.detail.document))
    if profile.results.total is not None:
        out.append(("results.total.selector", profile.results.total.selector))
    out.extend((f"block_selectors[{i}]", s) for i, s in enumerate(profile.block_selectors or ()))
    return out


def broken_selectors(profile: SourceProfile) -> list[tuple[str, str]]:
    """(field, why) for each selector that does not compile."""
    probe = LexborHTMLParser("<html></html>")
    found = []
    for name, selector in selectors(profile):
        try:
            probe.css(selector)
        except (SelectolaxError, ValueError) as exc:
            found.append((name, f"{selector!r} is not a CSS selector ({exc})"))
    return found
