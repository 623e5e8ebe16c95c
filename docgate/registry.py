"""`docgate origin --registry`: a court-decision registry as the seed's really behaves.

The behaviours, and the evidence for each (captured pages and scrapers of reyestr.court.gov.ua
in the public repository shepherdvovkes/reyestr: single_search_result.html,
test_playwright_homepage.html, bulk_requests.py, bulk_requests_playwright.py):

- The search is a form-encoded POST to `/` (`<form action="/" method="post">`). Regions and
  instance types are multi-valued checkbox lists named `CourtRegion[]` and `INSType[]`.
- `PagingInfo.ItemsPerPage` is required (`data-val-required="The ItemsPerPage field is
  required."`): a search without it answers 200 with an error page and no results.
- Results are an HTML table whose document links are `<a class="doc_text2"
  href="/Review/<id>">`; other pages are `/Page/<n>` links, which only work inside the
  session that ran the search (a new session gets the empty search form, status 200).
- A detail page `/Review/<id>` embeds the decision's text; its original is behind a link
  (here `/Rtf/<id>`, an RTF file).
- Every normal page carries a hidden captcha element (`<div id="modalcaptcha"
  style="display: none;">`), so "captcha" appears on every page; the real block page asks to
  "enter the sum of the digits" (bulk_requests.py's markers: "введіть cуму цифр",
  "введіть в поле результат арифметичного виразу") and comes with status 200.
- Variants other registries add: a hidden anti-forgery token to echo back (ASP.NET MVC's
  `__RequestVerificationToken`), rotated on every page (`--token rotating`); paging by
  re-posting the form with the page number (`--paging form`); pages and forms in
  windows-1251 (`--charset windows-1251`): the search text must be sent in it to match.

- The form's registration date range is `RegDateBegin`/`RegDateEnd`, days written dd.mm.yyyy
  (scrapers of the registry send e.g. `'RegDateBegin': '01.02.2015'`; also `ImportDateBegin`/
  `ImportDateEnd`); a date the form cannot read is a validation error page.
- A results page states the search's total ("За заданими параметрами пошуку знайдено
  документів: N", the seed's notes) and the pager is built for at most `max_results` results
  (the seed's registry: 100,000): what lies past the cap cannot be paged to at all, only found
  by a narrower search.

Decisions are deterministic: decision i (0-based) has id 100000 + 7·i, region 2 + i % 25,
instance 1 + i % 3, and a court named in Ukrainian; `SearchExpression` matches a word of the
court's name. They are registered over the `years` before `today`, ever denser towards today
(a registry grows), the first `burst` of them on one day in the middle (a day of mass
registrations, more than one search shows). `POST /_add?n=N` registers N new decisions today
(a registry that keeps publishing); `GET /_stats` counts requests by kind and how many
soft-block pages were served.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from html import escape
from typing import Any

from aiohttp import web

COURTS = ("Київський районний суд", "Львівський окружний суд", "Одеський апеляційний суд")
CAPTCHA_PROMPT = "Введіть в поле результат арифметичного виразу"
TOTAL_PHRASE = "За заданими параметрами пошуку знайдено документів:"
DATE_FORMAT = "%d.%m.%Y"
PAGE_SIZES = (10, 25, 50, 100)
SESSION_COOKIE = "ASP.NET_SessionId"


@dataclass(frozen=True)
class RegistryConfig:
    documents: int = 3000
    charset: str = "utf-8"
    form_field: str = "static"  # the hidden anti-forgery field: none | static | rotating
    paging: str = "links"  # links (/Page/<n>, session-bound) | form (POST with page=<n>)
    max_rate: float = 0.0  # requests per second past which the captcha page is served (0: never)
    block_seconds: float = 2.0
    max_results: int = 0  # the most results one search's pager shows (0: no cap)
    years: float = 3.0  # decisions are registered over this many years before today
    burst: int = 0  # the first decisions, all registered on one day in the middle
    today: date = field(default_factory=lambda: datetime.now(UTC).date())

    def day(self, i: int) -> date:
        """The day decision i was registered: denser towards today (the i-th of n at the cube
        root of i/n of the span), the first `burst` on the span's middle day."""
        span = int(self.years * 365.25)
        start = self.today - timedelta(days=span)
        if i >= self.documents:
            return self.today  # registered while the registry runs (/_add)
        if i < self.burst:
            return start + timedelta(days=span // 2)
        rest = max(1, self.documents - self.burst)
        return start + timedelta(days=int(span * ((i - self.burst + 0.5) / rest) ** (1 / 3)))


def decision(i: int) -> dict[str, Any]:
    return {
        "id": 100_000 + 7 * i,
        "region": 2 + i % 25,
        "instance": 1 + i % 3,
        "court": COURTS[i % len(COURTS)],
    }


def decision_text(doc_id: int) -> str:
    return f"Рішення № {doc_id}. Іменем України суд ухвалив: позов задовольнити частково. " * 5


def rtf_for(doc_id: int) -> bytes:
    text = decision_text(doc_id).encode("cp1251")
    return b"{\\rtf1\\ansi\\ansicpg1251 " + text.replace(b"\\", b"\\\\") + b"}"


@dataclass
class Session:
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    found: list[int] = field(default_factory=list)  # decision indexes of the last search
    per_page: int = 25


class Registry:
    def __init__(self, config: RegistryConfig) -> None:
        self.config = config
        self.sessions: dict[str, Session] = {}
        self.stats: Counter[str] = Counter()
        self.recent: list[float] = []
        self.blocked_until = 0.0
        self.count = config.documents
        self.days = [config.day(i) for i in range(config.documents)]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.form)
        app.router.add_post("/", self.search)
        app.router.add_get(r"/Page/{n:\d+}", self.page)
        app.router.add_get(r"/Review/{id:\d+}", self.review)
        app.router.add_get(r"/Rtf/{id:\d+}", self.rtf)
        app.router.add_get("/_stats", self.show_stats)
        app.router.add_post("/_add", self.add)
        return app

    # ---- pages

    def _html(self, body: str, request: web.Request, session: Session | None = None) -> web.Response:
        if self._too_fast():
            self.stats["blocked"] += 1
            page = (
                f"<html><body><h1>{CAPTCHA_PROMPT}</h1><p>3 + 4 = ?</p>"
                "<form><input name=captcha></form></body></html>"
            )
            return self._encoded(page, request, session)
        token = ""
        if session is not None and self.config.form_field != "none":
            if self.config.form_field == "rotating":
                session.token = secrets.token_hex(8)
            token = f'<input name="__RequestVerificationToken" type="hidden" value="{session.token}">'
        page = (
            f'<!DOCTYPE html><html><head><meta charset="{self.config.charset}"><title>Реєстр</title></head>'
            f"<body>{body.replace('<!--token-->', token)}"
            '<div id="modalcaptcha" style="display: none;">captcha: введіть суму цифр</div></body></html>'
        )
        return self._encoded(page, request, session)

    def _encoded(self, page: str, request: web.Request, session: Session | None) -> web.Response:
        response = web.Response(
            body=page.encode(self.config.charset, "xmlcharrefreplace"),
            content_type="text/html",
            charset=self.config.charset,
        )
        if session is not None and request.cookies.get(SESSION_COOKIE) not in self.sessions:
            sid = next(k for k, v in self.sessions.items() if v is session)
            response.set_cookie(SESSION_COOKIE, sid, httponly=True)
        return response

    def _too_fast(self) -> bool:
        if not self.config.max_rate:
            return False
        now = time.monotonic()
        self.recent = [t for t in self.recent if now - t < 1.0] + [now]
        if len(self.recent) > self.config.max_rate:
            self.blocked_until = now + self.config.block_seconds
        return now < self.blocked_until

    def _session(self, request: web.Request, create: bool) -> Session | None:
        sid = request.cookies.get(SESSION_COOKIE)
        if sid in self.sessions:
            return self.sessions[sid]
        if not create:
            return None
        sid = secrets.token_hex(12)
        self.sessions[sid] = Session()
        return self.sessions[sid]

    def _form(self, error: str = "") -> str:
        regions = "".join(
            f'<label><input type="checkbox" name="CourtRegion[]" value="{r}">{r}</label>'
            for r in range(2, 27)
        )
        types = "".join(
            f'<label><input type="checkbox" name="INSType[]" value="{t}">{t}</label>' for t in (1, 2, 3)
        )
        sizes = "".join(f'<option value="{n}">{n}</option>' for n in PAGE_SIZES)
        problem = f'<div class="validation-summary-errors">{escape(error)}</div>' if error else ""
        return (
            f'{problem}<form action="/" method="post"><!--token-->'
            '<input name="SearchExpression" type="text" value="">'
            '<input name="RegDateBegin" type="text" value=""><input name="RegDateEnd" type="text" value="">'
            f"<div>{regions}</div><div>{types}</div>"
            f'<select data-val="true" data-val-required="The ItemsPerPage field is required." '
            f'id="PagingInfo_ItemsPerPage" name="PagingInfo.ItemsPerPage">{sizes}</select>'
            '<input type="submit" value="Пошук"></form>'
        )

    def _results(self, session: Session, n: int) -> str:
        pageable = session.found[: self.config.max_results or None]  # the pager stops at the cap
        pages = max(1, -(-len(pageable) // session.per_page))
        shown = pageable[(n - 1) * session.per_page : n * session.per_page] if n <= pages else []
        rows = "".join(
            f'<tr><td><a class="doc_text2" href="/Review/{decision(i)["id"]}" target="_blank">'
            f"{decision(i)['id']}</a></td><td>{escape(decision(i)['court'])}</td></tr>"
            for i in shown
        )
        if self.config.paging == "links":
            pager = "".join(f'<a href="/Page/{p}">{p}</a> ' for p in range(1, pages + 1) if p != n)
        else:
            pager = (
                '<form action="/" method="post"><!--token--><input name="page" type="hidden" value=""></form>'
            )
        table = f'<table id="tableresult">{rows}</table>'
        total = f'<div class="total">{TOTAL_PHRASE} {len(session.found)}</div>'
        return f'{total}{table}<div class="pager">{pager}</div>'

    # ---- routes

    async def form(self, request: web.Request) -> web.Response:
        self.stats["form"] += 1
        session = self._session(request, create=True)
        return self._html(self._form(), request, session)

    async def search(self, request: web.Request) -> web.Response:
        session = self._session(request, create=True)
        assert session is not None
        raw = await request.read()
        from urllib.parse import parse_qs

        form = parse_qs(raw.decode("ascii", "replace"), encoding=self.config.charset, errors="replace")
        if (
            self.config.form_field != "none"
            and form.get("__RequestVerificationToken", [""])[0] != session.token
        ):
            self.stats["bad_token"] += 1
            return self._html(self._form("The anti-forgery token is missing or stale."), request, session)
        if "page" in form and self.config.paging == "form":
            self.stats["page"] += 1
            n = int(form["page"][0] or "1")
            return self._html(self._results(session, n) + self._form(), request, session)
        self.stats["search"] += 1
        size = form.get("PagingInfo.ItemsPerPage", [""])[0]
        if not size.isdigit() or int(size) not in PAGE_SIZES:
            return self._html(self._form("The ItemsPerPage field is required."), request, session)
        regions = {int(v) for v in form.get("CourtRegion[]", []) if v.isdigit()}
        types = {int(v) for v in form.get("INSType[]", []) if v.isdigit()}
        words = form.get("SearchExpression", [""])[0].strip().lower()
        try:
            first, last = (_day(form, "RegDateBegin"), _day(form, "RegDateEnd"))
        except ValueError:
            return self._html(self._form("The field RegDateBegin must be a date."), request, session)
        session.per_page = int(size)
        session.found = [
            i
            for i in range(self.count)
            if (not regions or decision(i)["region"] in regions)
            and (not types or decision(i)["instance"] in types)
            and (first is None or self._day_of(i) >= first)
            and (last is None or self._day_of(i) <= last)
            and (not words or words in decision(i)["court"].lower())
        ]
        return self._html(self._results(session, 1) + self._form(), request, session)

    async def page(self, request: web.Request) -> web.Response:
        self.stats["page"] += 1
        session = self._session(request, create=False)
        if session is None or not session.found:  # paging lives in the session that searched
            self.stats["page_without_session"] += 1
            return self._html(self._form(), request, self._session(request, create=True))
        return self._html(
            self._results(session, int(request.match_info["n"])) + self._form(), request, session
        )

    async def review(self, request: web.Request) -> web.Response:
        self.stats["review"] += 1
        doc_id = int(request.match_info["id"])
        body = (
            f'<div id="divdocument"><p>{escape(decision_text(doc_id))}</p></div>'
            f'<a id="btnRtf" href="/Rtf/{doc_id}">RTF</a>'
        )
        return self._html(body, request)

    async def rtf(self, request: web.Request) -> web.Response:
        self.stats["rtf"] += 1
        return web.Response(body=rtf_for(int(request.match_info["id"])), content_type="application/rtf")

    async def show_stats(self, request: web.Request) -> web.Response:
        return web.json_response(dict(self.stats))

    async def add(self, request: web.Request) -> web.Response:
        """Register `n` new decisions today (a test's hook: a registry that keeps publishing)."""
        n = int(request.query.get("n", "1"))
        first = self.count
        self.count += n
        return web.json_response({"added": [decision(i)["id"] for i in range(first, self.count)]})

    def _day_of(self, i: int) -> date:
        return self.days[i] if i < len(self.days) else self.config.today


def _day(form: dict[str, list[str]], name: str) -> date | None:
    value = form.get(name, [""])[0].strip()
    return datetime.strptime(value, DATE_FORMAT).date() if value else None


def profile(base_url: str) -> dict[str, Any]:
    """The source profile for this registry (examples/reyestr.json is this, for port 8090)."""
    return {
        "description": "A court-decision registry searched as the seed did: form POST, session-bound "
        "paging, RTF originals",
        "base_url": base_url,
        "charset": "utf-8",
        "start": {"url": "/", "hidden_fields": "form input[type=hidden]"},
        "search": {
            "url": "/",
            "method": "POST",
            "fields": {"PagingInfo.ItemsPerPage": "25", "SearchExpression": ""},
            "params_map": {"CourtRegion": "CourtRegion[]", "INSType": "INSType[]"},
            "dates": {"begin": "RegDateBegin", "end": "RegDateEnd", "format": DATE_FORMAT},
        },
        "results": {
            "links": "a.doc_text2",
            "id_pattern": r"/Review/(?P<id>\d+)$",
            "page_size": 25,
            "total": {"selector": "div.total", "pattern": r"знайдено документів:\s*(?P<total>[\d\s]+)"},
            "max_results": 100_000,
        },
        "next_page": {"url": "/Page/{page}"},
        "detail": {"document": "a#btnRtf", "ext": ".rtf"},
        "block_patterns": [CAPTCHA_PROMPT],
        "expect_content_type": ["application/rtf"],
        "politeness": {"requests_per_second": 5},
    }


def expected(
    config: RegistryConfig,
    regions: frozenset[int] = frozenset(),
    types: frozenset[int] = frozenset(),
    words: str = "",
    days: tuple[date, date] | None = None,
) -> list[int]:
    """The ids a search finds: what a test compares the archive with."""
    return [
        decision(i)["id"]
        for i in range(config.documents)
        if (not regions or decision(i)["region"] in regions)
        and (not types or decision(i)["instance"] in types)
        and (not words or words.lower() in decision(i)["court"].lower())
        and (days is None or days[0] <= config.day(i) <= days[1])
    ]
