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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Protocol

from client.download import Fetcher
from protocol import v1

log = logging.getLogger("docgate.client.sources")


@dataclass(frozen=True)
class DocRef:
    doc_id: str
    url: str
    ext: str = ""


@dataclass(frozen=True)
class SourceContext:
    fetcher: Fetcher
    search_url: str | None = None
    link_pattern: str | None = None


class Source(Protocol):
    def documents(self, task: v1.LeasedTask) -> AsyncIterator[DocRef]: ...


class SourceError(Exception):
    """The task's parameters do not make sense for its source (the task fails, not retried)."""


def load_sources(context: SourceContext) -> dict[str, Source]:
    from client.sources.id_range import IdRangeSource
    from client.sources.search import SearchSource
    from client.sources.urls import UrlsSource

    factories: dict[str, Callable[[SourceContext], Source]] = {
        "search": SearchSource,
        "id_range": IdRangeSource,
        "urls": UrlsSource,
    }
    for entry in entry_points(group="docgate.sources"):
        try:
            factories[entry.name] = entry.load()
        except Exception as exc:  # a broken plugin must not stop the built-in sources
            log.error("cannot load source %s from %s: %s", entry.name, entry.value, exc)
    return {name: factory(context) for name, factory in factories.items()}
