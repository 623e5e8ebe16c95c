"""Harvests on the wire: a job over a stored source profile, cut into windows, and its coverage.

A harvest says what a registry holds in a range, the way an archivist asks it: every decision
registered from 2010 to today, region by region. `partition` cuts it into windows — a date
range on the profile's date fields (`search.dates`) cut into days, weeks, months or years,
and/or the values of one field — and the gate makes one search task per window. A window
whose search states more results than the registry's cap (`results.max_results`) is split in
halves down to one day, then by `split_by`'s values; what still exceeds the cap is reported
`over_cap`, with its total, never `complete`. `repeat` re-searches the last `lookback` every
`every`, storing only what the collection does not hold yet.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, Field, StringConstraints, model_validator

from protocol.base import (
    MAX_ATTEMPTS_BOUND,
    MAX_PRIORITY,
    CollectionName,
    Duration,
    JsonObject,
    Reply,
    Request,
    SourceName,
    no_nul,
)
from protocol.params import JobSettings, ProfileTaskParams
from protocol.sources import DateFields

MAX_WINDOWS = 200_000  # windows one call may create (10 years of days × 50 values is 182,500)
MAX_VALUES = 1_000
EARLIEST = date(1900, 1, 1)


Day = Annotated[date, Field(strict=False)]
FieldValue = Annotated[str, StringConstraints(max_length=2_000), AfterValidator(no_nul)]
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]
WindowState = Literal["pending", "searching", "split", "complete", "short", "over_cap", "failed", "cancelled"]
# A window's search is over: what it holds is known (or known to be missing).
SETTLED = frozenset({"split", "complete", "short", "over_cap", "failed", "cancelled"})
GAPS = frozenset({"short", "over_cap", "failed", "cancelled"})


class DateRange(Request):
    """Days from `from` to `to` (both included, ISO dates), cut into windows of `every`:
    calendar months and years, or runs of days and weeks counted from `from`. Each window's
    first and last day fill the profile's `search.dates` fields, in its format."""

    from_: Day = Field(alias="from")
    to: Day
    every: Literal["day", "week", "month", "year"] = "month"

    @model_validator(mode="after")
    def _ordered(self) -> DateRange:
        if self.to < self.from_:
            raise ValueError("to is before from")
        if self.from_ < EARLIEST:
            raise ValueError(f"from is before {EARLIEST.isoformat()}")
        return self


class ValueList(Request):
    """One search field and the values to search it by, one window (or split) each."""

    field: FieldName
    values: Annotated[list[FieldValue], Field(min_length=1, max_length=MAX_VALUES)]

    @model_validator(mode="after")
    def _distinct(self) -> ValueList:
        if len(set(self.values)) != len(self.values):
            raise ValueError("values repeat")
        return self


class Partition(Request):
    dates: DateRange | None = None
    values: ValueList | None = None

    @model_validator(mode="after")
    def _something(self) -> Partition:
        if self.dates is None and self.values is None:
            raise ValueError("give dates, values, or both")
        return self


class Repeat(Request):
    """Search the last `lookback` again every `every` (durations: 90s, 30m, 6h, 3d)."""

    every: Duration
    lookback: Duration = "3d"


class HarvestCreate(JobSettings):
    """A harvest job: a stored profile's search, once per window of `partition`."""

    source: SourceName = Field(description="a stored source profile (PUT /api/v1/sources/{name})")
    search_params: JsonObject = Field(
        default_factory=dict, description="fixed search fields of every window (a court, a text)"
    )
    partition: Partition
    split: bool = Field(True, description="false: a window over the cap is searched as the registry shows it")
    split_by: ValueList | None = Field(
        default=None,
        description="a one-day window still over the cap is searched once per value of this field",
    )
    repeat: Repeat | None = None
    params: ProfileTaskParams = Field(default_factory=ProfileTaskParams)
    priority: Annotated[int, Field(ge=-MAX_PRIORITY, le=MAX_PRIORITY)] = 0
    max_attempts: Annotated[int, Field(ge=1, le=MAX_ATTEMPTS_BOUND)] | None = None
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    collection: CollectionName | None = Field(
        default=None, description="the collection its documents go to (default: the profile's)"
    )

    @model_validator(mode="after")
    def _fields(self) -> HarvestCreate:
        if self.partition.values and self.split_by and self.partition.values.field == self.split_by.field:
            raise ValueError("split_by names the partition's own field")
        if self.repeat is not None and self.partition.dates is None:
            raise ValueError("repeat needs partition.dates: a run searches the last days again")
        return self


class Place(Reply):
    """Which window: its days and values, its state and what the registry said it holds."""

    window_id: int
    date_from: date | None
    date_to: date | None
    value: str | None
    split_value: str | None
    state: WindowState
    stated_total: int | None


class Window(Place):
    run: int
    parent_id: int | None
    found: int
    stored: int
    failed: int
    skipped: int
    task_id: UUID | None
    updated_at: datetime


class GapFailure(Reply):
    code: str
    documents: int


class Gap(Place):
    """A window that holds less than the registry said: named, with why."""

    held: int = Field(description="stored + skipped as already held")
    missing: int | None = Field(description="stated_total − held, when the registry stated a total")
    failures: list[GapFailure] = Field(default_factory=list)
    last_error: str | None = None


class CoverageTotals(Reply):
    """Over the run's leaf windows (a split window's count is its halves')."""

    windows: int
    stated_total: int
    found: int
    stored: int
    failed: int
    skipped: int
    states: dict[str, int]


class Coverage(Reply):
    job_id: UUID
    run: int
    runs: int
    complete: bool = Field(description="every window settled, none a gap")
    creating: bool = Field(default=False, description="its windows are still being created in the background")
    date_from: date | None = None
    date_to: date | None = None
    next_run_at: datetime | None = None
    totals: CoverageTotals
    gaps: list[Gap]
    windows: list[Window]


class HarvestRun(Reply):
    job_id: UUID
    run: int
    windows_created: int
    date_from: date | None = None
    date_to: date | None = None


def window_days(dates: DateRange) -> list[tuple[date, date]]:
    """The windows of a date range, in order."""
    out: list[tuple[date, date]] = []
    start = dates.from_
    while start <= dates.to:
        if dates.every == "day":
            end = start
        elif dates.every == "week":
            end = start + timedelta(days=6)
        elif dates.every == "month":
            following = date(start.year + start.month // 12, start.month % 12 + 1, 1)
            end = following - timedelta(days=1)
        else:
            end = date(start.year, 12, 31)
        end = min(end, dates.to)
        out.append((start, end))
        start = end + timedelta(days=1)
    return out


def halves(date_from: date, date_to: date) -> list[tuple[date, date]]:
    """A window of two or more days cut in two (the first half the longer)."""
    days = (date_to - date_from).days
    middle = date_from + timedelta(days=days // 2)
    return [(date_from, middle), (middle + timedelta(days=1), date_to)]


def form_date(day: date, fmt: str) -> str:
    return day.strftime(fmt)


def window_params(
    spec: dict[str, Any], dates_fields: DateFields | None, window: dict[str, Any]
) -> dict[str, Any]:
    """A window's search_params: the harvest's fixed ones, its days on the profile's date fields
    (in the profile's format), and its values."""
    params = dict(spec.get("search_params") or {})
    if window.get("date_from") is not None and dates_fields is not None:
        params[dates_fields.begin] = form_date(window["date_from"], dates_fields.format)
        params[dates_fields.end] = form_date(window["date_to"], dates_fields.format)
    partition = spec["partition"]
    if window.get("value") is not None and partition.get("values"):
        params[partition["values"]["field"]] = window["value"]
    if window.get("split_value") is not None and spec.get("split_by"):
        params[spec["split_by"]["field"]] = window["split_value"]
    return params
