"""The parameter store: global models by round, accepted updates, per-round statistics and
versioned artifacts, indexed under ``HOME/params/`` over the block store at
``HOME/blockstore/``. Index files are small JSON documents written atomically; every DAG
they name is pinned, so garbage collection keeps it.

    params/globals/<round>.json          a GlobalRecord (model root, hashes, statistics)
    params/updates/<round>/<cid>.json    an UpdateRecord per accepted update
    params/artifacts/<name>/<v>.json     an ArtifactRecord per version
    params/head.json                     the round whose model is current (moved by rollback)
    params/head.log                      one JSON line per head move
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import torch

from sorap2p.core.cid import Cid
from sorap2p.core.errors import IntegrityError, LocalProtocolError, SoraError
from sorap2p.core.ids import PeerId, RoundId
from sorap2p.store.blockstore import FULL_ERRNOS, Blockstore
from sorap2p.store.errors import StoreFullError
from sorap2p.store.model import (
    byte_view,
    decode_state_dict,
    encode_state_dict,
    load_manifest,
    pack_state_dict,
    read_flat,
)
from sorap2p.store.unixfs import cat, import_bytes

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class RecordNotFoundError(SoraError):
    """The parameter store has no record for this round, update or artifact."""


@dataclass(frozen=True, slots=True)
class TensorStats:
    numel: int
    norm: float
    mean: float
    std: float


@dataclass(frozen=True, slots=True)
class GlobalRecord:
    round: int
    root: str  # the model DAG's manifest CID
    content_sha256: str  # sha256 of the packed tensor buffer (see sorap2p.store.model)
    created: float
    stats: dict[str, TensorStats]
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UpdateRecord:
    round: int
    peer: str
    root: str
    accepted: float
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ArtifactRecord:
    name: str
    version: int
    root: str  # a UnixFS file
    sha256: str
    size: int
    round: int | None
    created: float
    meta: dict[str, Any]


def summarize(sd: Mapping[str, torch.Tensor]) -> dict[str, TensorStats]:
    """Per-tensor numel, L2 norm, mean and (population) standard deviation, in float64."""
    out = {}
    for name in sorted(sd):
        t = sd[name].detach().to("cpu")
        if t.is_complex():
            raise LocalProtocolError(f"cannot summarise {name!r} of dtype {t.dtype}")
        x = t.to(torch.float64).reshape(-1)
        n = x.numel()
        if n == 0:
            out[name] = TensorStats(0, 0.0, 0.0, 0.0)
            continue
        out[name] = TensorStats(
            n,
            float(torch.linalg.vector_norm(x)),
            float(x.mean()),
            float(x.std(correction=0)),
        )
    return out


def _stats_from_json(raw: Mapping[str, Any]) -> dict[str, TensorStats]:
    return {k: TensorStats(**v) for k, v in raw.items()}


class ParameterStore:
    """Round-indexed models and artifacts for one node home directory."""

    def __init__(
        self, home: Path, *, fsync: bool = False, clock: Callable[[], float] = time.time
    ) -> None:
        self.home = Path(home)
        self.blocks = Blockstore(self.home / "blockstore", fsync=fsync)
        self.index = self.home / "params"
        self._clock = clock
        self._fsync = fsync
        for sub in ("globals", "updates", "artifacts", ".tmp"):
            (self.index / sub).mkdir(parents=True, exist_ok=True)

    # -- files ---------------------------------------------------------------------
    def _write_json(self, path: Path, value: object) -> None:
        tmp = self.index / ".tmp" / f"{path.name}.{os.getpid()}.{os.urandom(4).hex()}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(value, f, sort_keys=True, indent=1)
                f.flush()
                if self._fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
                raise StoreFullError(None, str(self.home), exc) from exc
            raise

    @staticmethod
    def _read_json(path: Path) -> Any:
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def _global_path(self, rnd: int) -> Path:
        return self.index / "globals" / f"{rnd:020d}.json"

    # -- global models -------------------------------------------------------------
    def put_global(
        self,
        rnd: RoundId,
        sd: Mapping[str, torch.Tensor],
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> GlobalRecord:
        """Store the global model of round ``rnd``, pin it, record its statistics, make it head."""
        root = encode_state_dict(self.blocks, sd)
        flat, _ = pack_state_dict(sd)
        digest = hashlib.sha256(byte_view(flat)).hexdigest()
        return self._record_global(rnd, root, digest, summarize(sd), meta)

    def add_global(
        self, rnd: RoundId, root: Cid, *, meta: Mapping[str, Any] | None = None
    ) -> GlobalRecord:
        """Record a model DAG that is already in the block store (e.g. fetched from a peer)."""
        sd = decode_state_dict(self.blocks, root)
        flat = read_flat(self.blocks, load_manifest(self.blocks, root))
        digest = hashlib.sha256(byte_view(flat)).hexdigest()
        return self._record_global(rnd, root, digest, summarize(sd), meta)

    def _record_global(
        self,
        rnd: RoundId,
        root: Cid,
        digest: str,
        stats: dict[str, TensorStats],
        meta: Mapping[str, Any] | None,
    ) -> GlobalRecord:
        self.blocks.pin(root, f"global/{rnd.number}")
        record = GlobalRecord(rnd.number, str(root), digest, self._clock(), stats, dict(meta or {}))
        self._write_json(self._global_path(rnd.number), asdict(record))
        self._set_head(rnd.number, "new")
        return record

    def get_global(self, rnd: RoundId) -> GlobalRecord:
        try:
            raw = self._read_json(self._global_path(rnd.number))
        except FileNotFoundError:
            raise RecordNotFoundError(f"no global model for round {rnd}") from None
        raw["stats"] = _stats_from_json(raw["stats"])
        return GlobalRecord(**raw)

    def history(self) -> list[GlobalRecord]:
        """Every recorded global model, oldest round first."""
        rounds = sorted(int(p.stem) for p in (self.index / "globals").glob("*.json"))
        return [self.get_global(RoundId(r)) for r in rounds]

    def latest(self) -> GlobalRecord | None:
        """The global model of the highest round recorded."""
        rounds = sorted(int(p.stem) for p in (self.index / "globals").glob("*.json"))
        return self.get_global(RoundId(rounds[-1])) if rounds else None

    def head(self) -> GlobalRecord | None:
        """The current global model: the latest one unless a rollback moved the head."""
        try:
            rnd = int(self._read_json(self.index / "head.json")["round"])
        except FileNotFoundError:
            return None
        return self.get_global(RoundId(rnd))

    def _set_head(self, rnd: int, reason: str) -> None:
        entry = {"round": rnd, "reason": reason, "at": self._clock()}
        self._write_json(self.index / "head.json", entry)
        with open(self.index / "head.log", "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")

    def head_log(self) -> list[dict[str, Any]]:
        try:
            lines = (self.index / "head.log").read_text("utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def rollback(self, rnd: RoundId) -> GlobalRecord:
        """Make round ``rnd``'s model current again (history is kept; the move is logged)."""
        record = self.get_global(rnd)
        root = Cid.parse(record.root)
        if not self.blocks.has(root):
            raise RecordNotFoundError(
                f"the model DAG of round {rnd} is no longer in the block store"
            )
        self._set_head(rnd.number, "rollback")
        return record

    def load_global(self, rnd: RoundId | None = None) -> dict[str, torch.Tensor]:
        """The tensors of round ``rnd`` (the head when None)."""
        record = self.head() if rnd is None else self.get_global(rnd)
        if record is None:
            raise RecordNotFoundError("no global model recorded yet")
        return decode_state_dict(self.blocks, Cid.parse(record.root))

    def verify_global(self, rnd: RoundId) -> GlobalRecord:
        """Re-read round ``rnd``'s model and check its hash; `IntegrityError` when it differs."""
        record = self.get_global(rnd)
        flat = read_flat(self.blocks, load_manifest(self.blocks, Cid.parse(record.root)))
        if hashlib.sha256(byte_view(flat)).hexdigest() != record.content_sha256:
            raise IntegrityError(f"global model of round {rnd} does not match its hash")
        return record

    def summary(self, rnd: RoundId) -> dict[str, TensorStats]:
        return self.get_global(rnd).stats

    # -- updates -------------------------------------------------------------------
    def add_update(
        self,
        rnd: RoundId,
        peer: PeerId,
        root: Cid,
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> UpdateRecord:
        """Record (and pin) an accepted update of ``peer`` in round ``rnd``."""
        self.blocks.pin(root, f"update/{rnd.number}/{peer}")
        record = UpdateRecord(rnd.number, str(peer), str(root), self._clock(), dict(meta or {}))
        path = self.index / "updates" / f"{rnd.number:020d}" / f"{root}.json"
        self._write_json(path, asdict(record))
        return record

    def updates(self, rnd: RoundId) -> list[UpdateRecord]:
        folder = self.index / "updates" / f"{rnd.number:020d}"
        if not folder.is_dir():
            return []
        records = [UpdateRecord(**self._read_json(p)) for p in folder.glob("*.json")]
        return sorted(records, key=lambda r: (r.accepted, r.root))

    # -- artifacts -----------------------------------------------------------------
    def put_artifact(
        self,
        name: str,
        data: bytes,
        *,
        rnd: RoundId | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> ArtifactRecord:
        """Store a new version of artifact ``name`` (a UnixFS file); versions count from 1."""
        if not _NAME_RE.match(name):
            raise LocalProtocolError(f"artifact name {name!r}: expected [A-Za-z0-9._-], 1-64")
        root = import_bytes(self.blocks, data).root
        folder = self.index / "artifacts" / name
        versions = self.artifacts(name)
        version = versions[-1].version + 1 if versions else 1
        self.blocks.pin(root, f"artifact/{name}/{version}")
        record = ArtifactRecord(
            name,
            version,
            str(root),
            hashlib.sha256(data).hexdigest(),
            len(data),
            None if rnd is None else rnd.number,
            self._clock(),
            dict(meta or {}),
        )
        self._write_json(folder / f"{version:06d}.json", asdict(record))
        return record

    def artifacts(self, name: str) -> list[ArtifactRecord]:
        folder = self.index / "artifacts" / name
        if not _NAME_RE.match(name) or not folder.is_dir():
            return []
        paths = sorted(folder.glob("*.json"))
        return [ArtifactRecord(**self._read_json(p)) for p in paths]

    def get_artifact(self, name: str, version: int | None = None) -> bytes:
        """The bytes of ``name`` at ``version`` (the newest when None), hash-checked."""
        versions = self.artifacts(name)
        chosen = [v for v in versions if version is None or v.version == version]
        if not chosen:
            raise RecordNotFoundError(f"no artifact {name!r} version {version}")
        record = chosen[-1]
        data = cat(self.blocks, Cid.parse(record.root))
        if hashlib.sha256(data).hexdigest() != record.sha256:
            raise IntegrityError(f"artifact {name!r} v{record.version} does not match its hash")
        return data
