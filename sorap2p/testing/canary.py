"""Privacy canaries: private trainer data carrying unique byte patterns.

`canary_loader(i)` is trainer ``i``'s ``node.data`` loader (``sorap2p.testing.canary:trainer_0``
... ``trainer_7``): its shard of the digits demo data (Dirichlet non-IID) plus a few feature
rows whose float32 bytes spell the trainer's 16-byte `marker` over and over. The markers are
finite, moderate floats (every fourth byte is 0x3F: values in [0.5, 2)), so the rows train
like ordinary pixels. After a run, `find_canaries` searches bytes for every marker, also in
hex and base64, and in the float32 rows' text forms (as a log line would print them).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import torch
from torch.utils.data import TensorDataset

from sorap2p.learn.data import DatasetSplits, as_tensors, load_digits_splits, trainer_shard

MAX_TRAINERS: Final = 8
SHARDS: Final = 3  # the shard count the loaders cut the demo data into (index mod SHARDS)
CANARY_ROWS: Final = 6


def marker(index: int) -> bytes:
    """Trainer ``index``'s 16-byte marker: 4 little-endian float32 in [0.5, 2)."""
    digest = hashlib.sha256(f"sorap2p/privacy-canary/{index}".encode()).digest()
    out = bytearray()
    for k in range(4):
        out += digest[3 * k : 3 * k + 3] + b"\x3f"
    return bytes(out)


def canary_values(index: int) -> tuple[float, ...]:
    return struct.unpack("<4f", marker(index))


def canary_loader(index: int) -> DatasetSplits:
    """Trainer ``index``'s private data: a demo shard plus rows made of its marker."""
    splits = load_digits_splits()
    shard = trainer_shard(splits.train, index % SHARDS, SHARDS, 0.5, 0)
    x, y = as_tensors(shard)
    row = torch.tensor(canary_values(index) * 16, dtype=torch.float32).reshape(1, 1, 8, 8)
    assert row.numpy().tobytes() == marker(index) * 16
    rows = row.repeat(CANARY_ROWS, 1, 1, 1)
    labels = torch.full((CANARY_ROWS,), index % splits.num_classes, dtype=torch.long)
    train = TensorDataset(torch.cat([x, rows]), torch.cat([y, labels]))
    return DatasetSplits(train, splits.test, splits.num_classes)


def trainer_0() -> DatasetSplits:
    return canary_loader(0)


def trainer_1() -> DatasetSplits:
    return canary_loader(1)


def trainer_2() -> DatasetSplits:
    return canary_loader(2)


def trainer_3() -> DatasetSplits:
    return canary_loader(3)


def trainer_4() -> DatasetSplits:
    return canary_loader(4)


def trainer_5() -> DatasetSplits:
    return canary_loader(5)


def trainer_6() -> DatasetSplits:
    return canary_loader(6)


def trainer_7() -> DatasetSplits:
    return canary_loader(7)


def loader_ref(index: int) -> str:
    if not 0 <= index < MAX_TRAINERS:
        raise ValueError(f"canary loaders exist for trainers 0..{MAX_TRAINERS - 1}")
    return f"{__name__}:trainer_{index}"


def patterns(index: int) -> dict[str, bytes]:
    """Every form in which trainer ``index``'s canary could leak, by name."""
    raw = marker(index)
    values = canary_values(index)
    return {
        "raw": raw,
        # 12 bytes: shorter than the marker, so a leak at any alignment is still caught
        "raw-head": raw[:12],
        "hex": raw.hex().encode(),
        "HEX": raw.hex().upper().encode(),
        "base64": base64.b64encode(raw * 3)[4:20],
        "repr": repr(values[0]).encode(),
        "text-6": f"{values[0]:.6f}, {values[1]:.6f}".encode(),
        "text-4": f"{values[0]:.4f}, {values[1]:.4f}".encode(),
    }


@dataclass(frozen=True, slots=True)
class Leak:
    where: str
    trainer: int
    form: str
    offset: int


def find_canaries(where: str, data: bytes, trainers: Iterable[int]) -> list[Leak]:
    """Every occurrence of any trainer's canary in ``data``."""
    out = []
    for t in trainers:
        for form, pattern in patterns(t).items():
            at = data.find(pattern)
            if at >= 0:
                out.append(Leak(where, t, form, at))
    return out


def files_under(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield path
