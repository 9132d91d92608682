"""Errors of the block store layer, all below `SoraError`."""

from __future__ import annotations

from sorap2p.core.cid import Cid
from sorap2p.core.errors import (
    IntegrityError,
    LocalProtocolError,
    RemoteProtocolError,
    SoraError,
)


class BlockNotFound(SoraError):  # noqa: N818 - the name other layers were promised
    """The block store holds no block for this CID."""

    def __init__(self, cid: Cid) -> None:
        super().__init__(f"block not found: {cid}")
        self.cid = cid


class CorruptBlock(IntegrityError):  # noqa: N818 - the name other layers were promised
    """A stored block does not hash to its CID (corrupt or truncated file).

    The file has already been moved aside when this is raised; ``quarantined`` names where.
    """

    def __init__(self, cid: Cid, detail: str, quarantined: str | None = None) -> None:
        super().__init__(f"corrupt block {cid}: {detail}")
        self.cid = cid
        self.quarantined = quarantined


class CodecError(RemoteProtocolError):
    """Bytes that should be DAG-CBOR, dag-pb, UnixFS or CAR are malformed."""


class StoreFullError(LocalProtocolError):
    """A write failed because the file system is full (ENOSPC), over quota (EDQUOT) or the
    file too large (EFBIG). Nothing partial is left: the temporary file is removed and the
    block is either absent or complete. ``cid`` is the block being written (None for store
    metadata such as pins), ``path`` the store root; the `OSError` is the ``__cause__``."""

    def __init__(self, cid: Cid | None, path: str, error: OSError) -> None:
        what = f"block {cid}" if cid is not None else "store metadata"
        super().__init__(f"block store {path} is full: cannot write {what} ({error.strerror})")
        self.cid = cid
        self.path = path
        self.errno = error.errno
