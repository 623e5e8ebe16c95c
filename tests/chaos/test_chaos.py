"""Chaos runs with every fault, judged by the checker; and the checker's negative controls.

`make test` runs one seed on Backblaze B2's dialect (100 tasks, 3 clients, every fault).
`make chaos` also runs the quick seed (300 tasks, 4 clients, a lying client), three seeds of
2,000 tasks with 8 clients, and every negative control: a deliberately broken gate or client
that the checker must catch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from checker import check, table, violations
from harness import Cluster, Plan, dump
from variants import BYTE_LIARS

pytestmark = [pytest.mark.slow, pytest.mark.chaos]
RESULTS = Path(os.environ.get("CHAOS_RESULTS", "/tmp/docgate-chaos"))


@pytest.fixture
def cluster_for(tmp_path: Path) -> Iterator[object]:
    made: list[Cluster] = []

    def make(plan: Plan) -> Cluster:
        made.append(Cluster(plan, tmp_path))
        return made[-1]

    yield make
    for cluster in made:
        cluster.close()


def judged(cluster: Cluster) -> list[str]:
    run = cluster.execute()
    figures = check(run, cluster.s3())
    report = table(run, figures)
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plan = run.plan
    label = plan.gate_variant or plan.client_variant or ("real" if plan.sweep else "no-sweep")
    label += "-b2" if plan.dialect == "b2" else ""
    (RESULTS / f"seed-{plan.seed}-{label}.txt").write_text(report + "\n")
    dump(run, RESULTS / f"seed-{run.plan.seed}.json")
    return violations(figures)


@pytest.mark.chaos_full  # make chaos: the suite's time goes to the B2 seed below (same faults)
@pytest.mark.timeout(400)
def test_quick_seed_loses_nothing(cluster_for) -> None:  # type: ignore[no-untyped-def]
    plan = Plan(
        seed=7, tasks=300, clients=4, lease_seconds=5, fault_gap=(1.5, 3.0), deadline=200, liars=("liar",)
    )
    cluster = cluster_for(plan)
    assert judged(cluster) == []
    assert cluster.run.finished
    assert set(cluster.run.fired) == set(plan.faults), "every fault fired at least once"


@pytest.mark.timeout(600)
def test_a_b2_seed_loses_nothing(cluster_for) -> None:  # type: ignore[no-untyped-def]
    """The same faults, zombies included, on Backblaze B2's dialect: no conditional writes, a
    versioned bucket; every record pins the version it reported. Two of the four clients lie
    while they work: `liar` (reports the gate must refuse) and `cut-short` (objects cut short
    under the whole document's sha256, found out by the job's checks, verify_sample 0.5), so
    the checker's "lies told ≥ 1" and "byte liars quarantined" run in every `make test`: a liar
    that stops lying (a wrapper that no longer fits the client's calls) fails it here.
    It ends in about 70 s on an idle 2-core machine; beside the rest of the suite it has
    needed from 210 s to more than 320."""
    plan = Plan(
        seed=21, tasks=100, clients=4, lease_seconds=8, fault_gap=(2.0, 4.0), deadline=480, dialect="b2",
        liars=("liar", "cut-short"), verify_sample=0.5,
    )  # fmt: skip
    cluster = cluster_for(plan)
    assert judged(cluster) == []
    assert cluster.run.finished
    assert set(cluster.run.fired) == set(plan.faults), "every fault fired at least once"


@pytest.mark.chaos_full
@pytest.mark.timeout(420)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_full_seed_loses_nothing(cluster_for, seed: int) -> None:  # type: ignore[no-untyped-def]
    """8 clients, 4 of them liars: one sends reports the gate must refuse, and one of each byte
    liar (variants.py). With 5 % of each client's documents checked by others, every byte liar
    must be quarantined, no honest client, and no wrong document left recorded at the end."""
    plan = Plan(seed=seed, liars=FULL_LIARS, verify_sample=0.05)
    cluster = cluster_for(plan)
    assert judged(cluster) == []
    assert cluster.run.finished and cluster.run.seconds < 300
    assert set(cluster.run.fired) == set(plan.faults)


FULL_LIARS = ("liar", *BYTE_LIARS)

# Each broken variant, and the invariant the checker must then report broken.
CONTROLS = [
    ("no-fence", None, ("zombie",), "stale-token writes accepted"),
    ("eager-reaper", None, ("kill_client",), "leases taken back before they ran out"),
    ("no-reaper", None, ("kill_client",), "tasks unfinished"),
    ("blocking", None, ("kill_client",), "event-loop stall"),
    ("temp-key", "temp-key", ("kill_client",), "recorded keys naming a temporary file"),
    (None, "overwrite", ("kill_client",), "recorded documents not whole"),
    ("no-membership", "liar", ("kill_client",), "lies accepted"),
    # Byte liars in a job without verify_sample: nothing checks them, and what they lied about
    # stays recorded: the storage read-back must say so, each in its own words.
    (None, "wrong-bytes", ("kill_client",), "not the origin's bytes"),
    (None, "phantom", ("kill_client",), "missing in storage"),
    (None, "cut-short", ("kill_client",), "not whole"),
]


@pytest.mark.chaos_full
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("gate", "client", "faults", "caught"), CONTROLS, ids=[c[0] or c[1] for c in CONTROLS]
)
def test_the_checker_catches_a_broken_variant(
    cluster_for,
    gate: str | None,
    client: str | None,  # type: ignore[no-untyped-def]
    faults: tuple[str, ...],
    caught: str,
) -> None:
    plan = Plan(
        seed=11,
        tasks=150,
        clients=4,
        gates=1,
        lease_seconds=4,
        faults=faults,
        fault_gap=(3.0, 5.0),
        deadline=60,
        gate_variant=gate,
        client_variant=client,
    )
    found = judged(cluster_for(plan))
    assert any(caught in v for v in found), found


@pytest.mark.chaos_full
@pytest.mark.timeout(300)
def test_the_checker_catches_a_missing_sweep(cluster_for) -> None:  # type: ignore[no-untyped-def]
    plan = Plan(seed=12, tasks=100, clients=2, gates=1, faults=("kill_writer",), deadline=60, sweep=False)
    found = judged(cluster_for(plan))
    assert any("orphan temp objects" in v for v in found), found


@pytest.mark.chaos_full
@pytest.mark.timeout(300)
def test_an_honest_variant_passes(cluster_for) -> None:  # type: ignore[no-untyped-def]
    """The control of the controls: the variant launcher itself breaks nothing."""
    plan = Plan(
        seed=13,
        tasks=150,
        clients=4,
        gates=1,
        lease_seconds=4,
        faults=("zombie", "kill_client"),
        fault_gap=(3.0, 5.0),
        deadline=120,
        gate_variant="honest",
        client_variant="honest",
    )
    assert judged(cluster_for(plan)) == []


@pytest.mark.chaos_full
@pytest.mark.timeout(300)
def test_the_checker_catches_an_unchecked_byte_liar(cluster_for) -> None:  # type: ignore[no-untyped-def]
    """A byte liar among honest clients in a job without verify_sample: it is never quarantined,
    and its lies stay recorded; the checker must report both."""
    plan = Plan(seed=14, tasks=150, clients=4, gates=1, lease_seconds=4, faults=("kill_client",),
                fault_gap=(3.0, 5.0), deadline=60, liars=("wrong-bytes",))  # fmt: skip
    found = judged(cluster_for(plan))
    assert any("byte liars quarantined" in v for v in found), found
    assert any("not the origin's bytes" in v for v in found), found
