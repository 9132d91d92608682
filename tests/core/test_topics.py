from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sorap2p.core.errors import RemoteProtocolError
from sorap2p.core.ids import SubnetId
from sorap2p.core.messages import UpdateAnnounce
from sorap2p.core.topics import Topic, TopicKind, topics_for
from sorap2p.testing.strategies import subnet_ids


@given(subnet_ids, st.sampled_from(list(TopicKind)))
def test_topic_round_trip(subnet: SubnetId, kind: TopicKind) -> None:
    topic = Topic(subnet, kind)
    assert str(topic) == f"/sorap2p/1/{subnet.name}/{kind.value}"
    assert Topic.parse(str(topic)) == topic


def test_each_kind_has_one_message_type() -> None:
    assert TopicKind.UPDATES.message_type is UpdateAnnounce
    types = [k.message_type for k in TopicKind]
    assert len(set(types)) == len(types)
    assert len(topics_for(SubnetId("x"))) == len(TopicKind)


@pytest.mark.parametrize(
    "text",
    [
        "/sorap2p/2/digits/updates",  # unknown version
        "/sorap2p/1/digits/unknown",  # unknown kind
        "/sorap2p/1/Digits/updates",  # bad subnet
        "/other/1/digits/updates",
        "/sorap2p/1/digits/updates/extra",
        "sorap2p/1/digits/updates",
        "",
        "/sorap2p/1/" + "a" * 200 + "/updates",
    ],
)
def test_bad_topics(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        Topic.parse(text)


@given(st.text(max_size=60))
def test_arbitrary_topic_text(text: str) -> None:
    with contextlib.suppress(RemoteProtocolError):
        Topic.parse(text)
