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
    return _broken(selectors(profile))


def broken_rules(rules: dict[str, object], where: str = "params") -> list[tuple[str, str]]:
    """(field, why) for each of a task's or job's block_selectors (its raw params) that does not
    compile: a task that would fail every document on every attempt is refused at the door."""
    listed = rules.get("block_selectors")
    if not isinstance(listed, list):
        return []
    return _broken([(f"{where}.block_selectors[{i}]", s) for i, s in enumerate(listed) if isinstance(s, str)])


def _broken(named: list[tuple[str, str]]) -> list[tuple[str, str]]:
    probe = LexborHTMLParser("<html></html>")
    found = []
    for name, selector in named:
        try:
            probe.css(selector)
        except (SelectolaxError, ValueError) as exc:
            found.append((name, f"{selector!r} is not a CSS selector ({exc})"))
    return found
