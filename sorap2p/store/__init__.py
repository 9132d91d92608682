"""L2: the on-disk IPFS-compatible block store (kubo flatfs layout), UnixFS, CAR, model DAGs,
encrypted updates and the round-indexed parameter store. Specified in protocols/blockstore.md.

Heavy parts (torch) live in `sorap2p.store.model`, `sorap2p.store.encrypted` and
`sorap2p.store.params`; import them from there.
"""

from sorap2p.store.blockstore import Blockstore, BlockstoreStats, Pin, block_key
from sorap2p.store.car import (
    END,
    NEED_DATA,
    CarBlock,
    CarHeader,
    CarReader,
    CarWriter,
    export_car,
    import_car,
    iter_car,
    write_car,
)
from sorap2p.store.dag import (
    GcResult,
    VerifyReport,
    collect_garbage,
    iter_dag,
    iter_dag_blocks,
    links_of,
    verify_store,
)
from sorap2p.store.errors import BlockNotFound, CodecError, CorruptBlock, StoreFullError
from sorap2p.store.unixfs import PROFILES, V0_2015, V1_2025, Profile, cat, import_bytes, import_file

__all__ = [
    "END",
    "NEED_DATA",
    "PROFILES",
    "V0_2015",
    "V1_2025",
    "BlockNotFound",
    "Blockstore",
    "BlockstoreStats",
    "CarBlock",
    "CarHeader",
    "CarReader",
    "CarWriter",
    "CodecError",
    "CorruptBlock",
    "GcResult",
    "Pin",
    "Profile",
    "StoreFullError",
    "VerifyReport",
    "block_key",
    "cat",
    "collect_garbage",
    "export_car",
    "import_bytes",
    "import_car",
    "import_file",
    "iter_car",
    "iter_dag",
    "iter_dag_blocks",
    "links_of",
    "verify_store",
    "write_car",
]
