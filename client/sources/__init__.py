"""Sources turn a leased task into (doc_id, url, ext) references.

Built in: `search` (the seed's: page through a registry's search listing),
`id_range` (a url_template over a range or list of ids) and `urls` (an
explicit list). More come from the `docgate.sources` entry point group: each
entry point names a callable that takes a `SourceContext` and returns an
object with `documents(task) -> AsyncIterator[DocRef]`, e.g. in a plugin's
pyproject.toml:

    [project.entry-points."docgate.sources"]
    my_registry = "my_plugin:MyRegistrySource"
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from client.download import Fetcher
from protocol import v1
from protocol.params import Seen

if TYPE_CHECKING:
    from client.work import Work

log = logging.getLogger("docgate.client.sources")


@dataclass(frozen=True)
class DocRef:
    doc_id: str
    url: str
    ext: str = ""
    seen: Seen | None = None  # a revisit's: the document as last recorded


# Which of these doc_ids the gate has recorded in a collection (GateAPI.known).
Known = Callable[[list[str], str], Awaitable[set[str]]]


@dataclass(frozen=True)
class SourceContext:
    fetcher: Fetcher
    search_url: str | None = None
    link_pattern: str | None = None
    known: Known | None = None


class Source(Protocol):
    """A built-in source: the task parsed (client.work.Work) in, references out."""

    def documents(self, work: Work) -> AsyncIterator[DocRef]: ...


@runtime_checkable
class Listed(Protocol):
    """A source that pages a registry's results says what they held (stated total, found,
    capped): a harvest's coverage ledger is made of it."""

    @property
    def report(self) -> v1.ListingReport | None: ...


class Plugin(Protocol):
    """A plugin's source (the `docgate.sources` entry points): it reads the task as the gate sent it."""

    def documents(self, task: v1.LeasedTask) -> AsyncIterator[DocRef]: ...


@dataclass(frozen=True)
class PluginSource:
    plugin: Plugin

    def documents(self, work: Work) -> AsyncIterator[DocRef]:
        return self.plugin.documents(work.task)


class SourceError(Exception):
    """The task's parameters do not make sense for its source (the task fails, not retried)."""


def load_sources(context: SourceContext) -> dict[str, Source]:
    from client.sources.id_range import IdRangeSource
    from client.sources.search import SearchSource
    from client.sources.urls import UrlsSource

    sources: dict[str, Source] = {
        "search": SearchSource(context),
        "id_range": IdRangeSource(context),
        "urls": UrlsSource(context),
    }
    for entry in entry_points(group="docgate.sources"):
        try:
            factory: Callable[[SourceContext], Plugin] = entry.load()
            sources[entry.name] = PluginSource(factory(context))
        except Exception as exc:  # a broken plugin must not stop the built-in sources
            log.error("cannot load source %s from %s: %s", entry.name, entry.value, exc)
    return sources
