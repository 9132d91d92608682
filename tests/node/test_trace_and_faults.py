"""Small parts of the fault handling: the gossip trace format, finding a full store behind
wrapped errors, label flipping, and the privacy canaries' self-checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sorap2p.core.errors import IntegrityError
from sorap2p.core.topics import TopicKind
from sorap2p.core.validation import Verdict
from sorap2p.node import work
from sorap2p.node.roles.trainer import store_full
from sorap2p.node.services import GossipTrace, read_trace
from sorap2p.store.errors import StoreFullError
from sorap2p.testing.canary import canary_values, find_canaries, marker, patterns

records = st.lists(
    st.tuples(st.sampled_from(["<", ">"]), st.sampled_from(list(TopicKind)), st.binary()),
    max_size=6,
)


@settings(max_examples=50, deadline=None)
@given(records)
def test_trace_records_round_trip(tmp_path_factory: pytest.TempPathFactory, recs: list) -> None:  # type: ignore[type-arg]
    path = tmp_path_factory.mktemp("trace") / "gossip.trace"
    trace = GossipTrace(path)
    for direction, kind, payload in recs:
        if direction == "<":
            seen: list[bytes] = []

            def validate(origin: object, data: bytes, seen: list[bytes] = seen) -> Verdict:
                seen.append(data)
                return Verdict.ignore("x")

            assert trace.wrap(kind, validate)(None, payload).reason == "x"  # type: ignore[arg-type]
            assert seen == [payload]
        else:
            trace.record(b">", kind, payload)
    trace.close()
    assert read_trace(path.read_bytes()) == recs


def test_store_full_is_found_behind_wrappers() -> None:
    full = StoreFullError(None, "/x", OSError(28, "No space left on device"))
    try:
        try:
            raise full
        except StoreFullError as exc:
            raise RuntimeError("fetch failed") from exc
    except RuntimeError as wrapped:
        assert store_full(wrapped) is full
        group = ExceptionGroup("jobs", [ValueError("a"), wrapped])
        assert store_full(group) is full
    assert store_full(IntegrityError("other")) is None
    assert "is full" in str(full)


def test_label_flip_maps_every_label_to_another_class() -> None:
    x = torch.randn(20, 1, 8, 8)
    y = torch.arange(20) % 10
    fx, fy = work.flip_labels((x, y), 10)  # type: ignore[misc]
    assert fx is x and torch.equal(fy, 9 - y) and bool((fy != y).all())


def test_canary_markers_are_unique_finite_and_found() -> None:
    marks = {marker(i) for i in range(8)}
    assert len(marks) == 8 and all(len(mk) == 16 for mk in marks)
    for i in range(8):
        assert all(0.5 <= v < 2.0 for v in canary_values(i))
    data = b"junk" + marker(3)[5:] + marker(3) + b"junk"
    found = find_canaries("x", data, range(8))
    assert {(f.trainer, f.form) for f in found} >= {(3, "raw"), (3, "raw-head")}
    assert find_canaries("x", b"log " + patterns(2)["text-4"], range(8))[0].trainer == 2
    assert find_canaries("x", bytes(range(256)) * 4, range(8)) == []


def test_an_empty_trace_has_no_records(tmp_path: Path) -> None:
    trace = GossipTrace(tmp_path / "t")
    trace.close()
    assert read_trace((tmp_path / "t").read_bytes()) == []
