"""The committed golden vectors match the code, and the decoders accept them."""

from __future__ import annotations

import json

from sorap2p.core import messages as m
from sorap2p.core.cid import Cid
from sorap2p.core.codec import decode, encode
from sorap2p.core.crypto import ChunkCipher, IdentityKey
from sorap2p.core.ids import PeerId
from sorap2p.testing.vectors import VECTORS_PATH, build


def test_vectors_file_matches_code() -> None:
    committed = json.loads(VECTORS_PATH.read_text())
    assert committed == build(), "wire format changed: regenerate vectors and bump the version"


def test_vectors_decode_and_verify_independently() -> None:
    vec = json.loads(VECTORS_PATH.read_text())
    for k in vec["keys"]:
        key = IdentityKey(bytes.fromhex(k["seed"]))
        assert str(key.peer_id) == k["peer_id"]
        assert PeerId.parse(k["peer_id"]).raw.hex() == k["peer_id_bytes"]
    for c in vec["cids"]:
        assert str(Cid.hash(bytes.fromhex(c["data"]), c["codec"])) == c["cid"]
    for a in vec["aead"]:
        cipher = ChunkCipher(bytes.fromhex(a["key"]), bytes.fromhex(a["payload_id"]))
        plain = cipher.decrypt(a["index"], bytes.fromhex(a["sealed"]), a["last"])
        assert plain.hex() == a["plaintext"]
    for v in vec["messages"]:
        raw = bytes.fromhex(v["encoded"])
        msg = decode(raw)
        assert type(msg).__name__ == v["type"]
        m.verify_signed(msg)
        assert encode(msg) == raw
