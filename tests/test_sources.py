"""Sources: built-ins turn task params into references; plugins come from entry points."""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from client.download import Fetcher
from client.guard import Policy
from client.sources import DocRef, SourceContext, SourceError, load_sources
from client.work import Work
from protocol import v1


def task(source: str, params: dict[str, object]) -> v1.LeasedTask:
    return v1.LeasedTask(
        task_id=uuid.uuid4(),
        source=source,
        search_params={},
        start_page=1,
        max_documents=10,
        params=params,
        status=v1.TaskStatus.ASSIGNED,
        attempts=1,
        max_attempts=3,
        lease_token=uuid.uuid4(),
        lease_expires_at=datetime.now(UTC),
    )


@pytest.fixture
async def context() -> SourceContext:
    return SourceContext(
        Fetcher(
            Policy(),
            concurrency=1,
            per_host_connections=1,
            per_host_rate=None,
            retries=0,
            timeout=5,
            max_size=1024,
        )
    )


async def refs(context: SourceContext, t: v1.LeasedTask) -> list[DocRef]:
    return [r async for r in load_sources(context)[t.source].documents(Work.of(t))]


async def test_id_range_by_range_and_by_ids(context: SourceContext) -> None:
    got = await refs(
        context,
        task("id_range", {"url_template": "https://h/b/{id}.tzb", "start_id": 5, "count": 2, "ext": ".tzb"}),
    )
    assert got == [DocRef("5", "https://h/b/5.tzb", ".tzb"), DocRef("6", "https://h/b/6.tzb", ".tzb")]
    got = await refs(context, task("id_range", {"url_template": "https://h/{id}", "ids": ["9", 11]}))
    assert [r.doc_id for r in got] == ["9", "11"]
    with pytest.raises(SourceError):
        await refs(context, task("id_range", {"url_template": "https://h/x"}))


async def test_urls(context: SourceContext) -> None:
    got = await refs(
        context,
        task(
            "urls",
            {
                "urls": [
                    {"doc_id": "a-1", "url": "https://h/a-1.pdf"},
                    {"doc_id": 2, "url": "https://h/2", "ext": ".html"},
                ]
            },
        ),
    )
    assert got == [DocRef("a-1", "https://h/a-1.pdf", ".pdf"), DocRef("2", "https://h/2", ".html")]
    with pytest.raises(SourceError):
        await refs(context, task("urls", {"urls": "nope"}))


async def test_sources_from_entry_points(
    context: SourceContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "registry_plugin.py").write_text(
        "from client.sources import DocRef\n"
        "class Registry:\n"
        "    def __init__(self, context):\n"
        "        self.context = context\n"
        "    async def documents(self, task):\n"
        "        for n in range(task.params['n']):\n"
        "            yield DocRef(f'r{n}', f'https://registry.example/r{n}', '.xml')\n"
    )
    dist = tmp_path / "registry_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: registry-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[docgate.sources]\nregistry = registry_plugin:Registry\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    got = await refs(context, task("registry", {"n": 2}))
    assert [r.url for r in got] == ["https://registry.example/r0", "https://registry.example/r1"]
    sys.modules.pop("registry_plugin", None)
