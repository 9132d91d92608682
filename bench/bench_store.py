"""Block store benchmarks, each against a baseline measured in the same run.

    python bench/bench_store.py [--mb 64] [--repeat 7] [--dir /tmp] [--quick]

Every measurement runs once per round, ``--repeat`` rounds, interleaved (so load from other
programs hits all of them alike); a ratio is taken within each round against that round's
baseline, and the median over rounds is printed (min..max beside it). Payload: ``--mb``
random 1 MiB blocks (or a state_dict of ``--mb`` 1 MiB float32 tensors). ``--quick`` runs
only the goal measurements of put, get and encode (for short quiet windows on a shared box).

The goals compare with ONE core hashing: put/get >= 0.8x sha256, encode >= 1.5 GB/s. The
default paths reach them by overlapping the hash (a helper thread; hashlib releases the GIL)
with the file I/O, which needs a second core that is free: ``sha256_2threads`` says whether
it was. ``*_1thread`` lines show the same work without the helper; ``cpu_*`` the total work.

What each line measures (MB = MiB of payload per second of wall time):

* ``sha256``: hashlib.sha256(block).digest() for every block, one thread. THE BASELINE.
* ``sha256_2threads``: the same spread over 2 threads: tells whether a second core was free
  during the run (~1.8x when it was, ~1x when other programs held it).
* ``raw_write``: os.open/os.write/os.close of one new file per block: the file system's cost.
* ``put``: Blockstore.put(block) per block into a fresh store (default: one helper thread
  hashes while the calling thread writes the temporary file, then renames it into place).
* ``put_1thread``: the same with Blockstore(helper_threads=0): hash, then write, in one thread.
* ``put_many``: one Blockstore.put_many(blocks) call (hashing runs ahead in the helper thread
  while the calling thread writes the blocks whose CID is known).
* ``put_block``: Blockstore.put_block(cid, block) per block (verify + write, as Bitswap does).
* ``get`` / ``get_into``: Blockstore.get / get_into per block (verified read; as new bytes,
  dropped at once / into one reused 1 MiB buffer), one thread.
* ``get_many``: one Blockstore.get_many(cids) generator (reads run ahead in the calling thread
  while the helper thread verifies; blocks dropped as they come).
* ``cpu_*``: process CPU seconds (all threads) over sha256's CPU seconds: the work done
  (> 1: the helper thread does not make the work smaller, it runs it alongside).
* ``encode``: encode_state_dict into a fresh store (workers=1: pipelined as put_many),
  ``encode_1thread`` with workers=0 into a Blockstore(helper_threads=0): one thread;
  ``encode_present`` when every chunk is already stored;
  ``decode_full``: read_flat (read + verify every chunk into one buffer);
  ``decode_zero_copy_ms``: manifest + buffer -> tensor views, small and large model.
* ``aead_*``: ChunkCipher encrypt / decrypt_into a preallocated buffer (one thread),
  ``memcpy``: bytes(buffer) of the whole payload into new memory (page faults included),
  ``update_*``: encrypt_update into a fresh store / decrypt_update_into a row tensor
  (reads ahead with get_many).

Writes start from the same page-cache state: os.sync() (untimed) before each write run.
Prints a table and the goals, saves bench/results/bench_store.json (_quick.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from sorap2p.core.cid import Cid
from sorap2p.core.crypto import ChunkCipher, IdentityKey
from sorap2p.store import Blockstore
from sorap2p.store.encrypted import decrypt_update_into, encrypt_update
from sorap2p.store.model import (
    encode_state_dict,
    load_manifest,
    read_flat,
    tensors_from_buffer,
)

MiB = 1 << 20
# (result key, goal, what it is compared with)
GOALS = [
    ("put_vs_sha256", 0.8, "put of 1 MiB blocks vs sha256 (ratio)"),
    ("put_many_vs_sha256", 0.8, "put_many of 1 MiB blocks vs sha256 (ratio)"),
    ("get_vs_sha256", 0.8, "get of 1 MiB blocks vs sha256 (ratio)"),
    ("encode_GBps", 1.5, "state_dict encode (GB/s)"),
    ("aead_encrypt_GBps", 1.0, "AEAD encrypt (GB/s)"),
    ("aead_decrypt_into_GBps", 1.0, "AEAD decrypt into a buffer (GB/s)"),
]


QUICK = {"sha256", "sha256_2threads", "put", "put_1thread", "put_many", "get", "get_many"}
QUICK |= {"encode", "encode_1thread"}


class Rounds:
    """Wall and CPU seconds of named measurements, one sample per round."""

    def __init__(self, only: set[str] | None = None) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}
        self.only = only

    def run(self, name: str, fn: Callable[[], object], *, sync: bool = False) -> None:
        if self.only is not None and name not in self.only:
            return
        if sync:
            os.sync()
        c, t = time.process_time(), time.perf_counter()
        fn()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        self.wall.setdefault(name, []).append(wall)
        self.cpu.setdefault(name, []).append(cpu)

    def median(self, name: str) -> float:
        return statistics.median(self.wall[name])

    def ratio(self, name: str, base: str, *, cpu: bool = False) -> tuple[float, float, float]:
        """Median, min and max over rounds of base-time / name-time (>1: name is faster);
        with ``cpu``, name's CPU time over base's (>1: name does more work)."""
        if cpu:
            r = [a / b for a, b in zip(self.cpu[name], self.cpu[base], strict=True)]
        else:
            r = [b / a for a, b in zip(self.wall[name], self.wall[base], strict=True)]
        return statistics.median(r), min(r), max(r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mb", type=int, default=64, help="payload size in MiB (default 64)")
    ap.add_argument("--repeat", type=int, default=7, help="rounds (default 7)")
    ap.add_argument("--dir", type=Path, default=None, help="where the temporary stores go")
    ap.add_argument(
        "--quick", action="store_true", help="only the goal measurements of put, get and encode"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = args.mb
    nbytes = n * MiB
    blocks = [os.urandom(MiB) for _ in range(n)]
    root = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir))
    counter = [0]
    results: dict[str, float] = {}
    spread: dict[str, tuple[float, float]] = {}
    r = Rounds(QUICK if args.quick else None)

    def fresh_store(helper_threads: int = 1) -> Blockstore:
        counter[0] += 1
        return Blockstore(root / f"s{counter[0]}", helper_threads=helper_threads)

    def on_fresh_store(
        name: str, fn: Callable[[Blockstore], object], helper_threads: int = 1
    ) -> None:
        """Time ``fn`` on a new empty store (created and closed untimed)."""
        s = fresh_store(helper_threads)
        r.run(name, lambda: fn(s), sync=True)
        s.close()
        shutil.rmtree(s.root)

    try:
        pool2 = ThreadPoolExecutor(2)
        sd = {f"layer{i}.weight": torch.randn(MiB // 4) for i in range(n)}
        small_sd = {"w": torch.randn(1000)}
        store = fresh_store()
        cids = store.put_many(blocks)
        mstore = fresh_store()
        mroot = encode_state_dict(mstore, sd)
        present = fresh_store()
        encode_state_dict(present, sd)
        sroot = encode_state_dict(mstore, small_sd)
        flat_large = read_flat(mstore, load_manifest(mstore, mroot))
        flat_small = read_flat(mstore, load_manifest(mstore, sroot))
        cipher = ChunkCipher(ChunkCipher.new_key(), b"bench")
        sealed = [cipher.encrypt(i, b, i == n - 1) for i, b in enumerate(blocks)]
        out = bytearray(nbytes)
        view = memoryview(out)
        one = bytearray(MiB)
        alice = IdentityKey.generate()
        recipients = {alice.peer_id: alice.x25519_public}
        flat_t = torch.randn(nbytes // 4)
        estore = fresh_store()
        eroot = encrypt_update(estore, flat_t, recipients, b"b")
        row = torch.empty_like(flat_t)

        def raw_writes() -> None:
            counter[0] += 1
            d = root / f"raw{counter[0]}"
            d.mkdir()
            for i, b in enumerate(blocks):
                fd = os.open(d / f"{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                os.write(fd, b)
                os.close(fd)

        def dec_into() -> None:
            for i, c in enumerate(sealed):
                cipher.decrypt_into(i, c, view[i * MiB :], i == n - 1)

        def get_each() -> None:
            for c in cids:
                store.get(c)  # each block is dropped, as a server sending it would

        def put_blocks(s: Blockstore, items: Iterable[tuple[Cid, bytes]]) -> None:
            for c, b in items:
                s.put_block(c, b)

        zc_large: list[float] = []
        zc_small: list[float] = []
        for _ in range(args.repeat):
            r.run("sha256", lambda: [hashlib.sha256(b).digest() for b in blocks])
            r.run("sha256_2threads", lambda: list(pool2.map(lambda b: hashlib.sha256(b), blocks)))
            r.run("raw_write", raw_writes, sync=True)
            on_fresh_store("put", lambda s: [s.put(b) for b in blocks])
            on_fresh_store("put_1thread", lambda s: [s.put(b) for b in blocks], 0)
            on_fresh_store("put_many", lambda s: s.put_many(blocks))
            on_fresh_store("put_block", lambda s: put_blocks(s, zip(cids, blocks, strict=True)))
            r.run("get", get_each)
            r.run("get_many", lambda: deque(store.get_many(cids), maxlen=0))
            r.run("get_into", lambda: [store.get_into(c, one) for c in cids])
            on_fresh_store("encode", lambda s: encode_state_dict(s, sd))
            on_fresh_store("encode_1thread", lambda s: encode_state_dict(s, sd, workers=0), 0)
            r.run("encode_present", lambda: encode_state_dict(present, sd))
            r.run("decode_full", lambda: read_flat(mstore, load_manifest(mstore, mroot)))
            r.run(
                "aead_encrypt",
                lambda: [cipher.encrypt(i, b, i == n - 1) for i, b in enumerate(blocks)],
            )
            r.run("aead_decrypt_into", dec_into)
            r.run("memcpy", lambda: bytes(out))
            on_fresh_store(
                "update_encrypt_and_store", lambda s: encrypt_update(s, flat_t, recipients, b"b")
            )
            r.run(
                "update_read_verify_decrypt_into_row",
                lambda: decrypt_update_into(estore, eroot, alice, row),
            )
            for flat, rt, acc in (
                ()
                if args.quick
                else (
                    (flat_large, mroot, zc_large),
                    (flat_small, sroot, zc_small),
                )
            ):
                t = time.perf_counter()
                tensors_from_buffer(load_manifest(mstore, rt), flat)
                acc.append((time.perf_counter() - t) * 1e3)
            # drop this round's stores (untimed): the disk stays as we found it
            keep = {x.root.name for x in (store, mstore, present, estore)}
            for p in root.iterdir():
                if p.name not in keep:
                    shutil.rmtree(p)
        pool2.shutdown()
        assert args.quick or torch.equal(row, flat_t)

        block_ops = (
            "sha256",
            "sha256_2threads",
            "raw_write",
            "put",
            "put_1thread",
            "put_many",
            "put_block",
            "get",
            "get_many",
            "get_into",
        )
        for name in block_ops:
            if name in r.wall:
                results[f"{name}_MBps"] = n / r.median(name)
        for name in block_ops[1:]:  # each against the sha256 baseline
            if name in r.wall:
                med, lo, hi = r.ratio(name, "sha256")
                results[f"{name}_vs_sha256"] = med
                spread[f"{name}_vs_sha256"] = (lo, hi)
        for name in ("put", "put_1thread", "put_many", "get", "get_many"):
            med, lo, hi = r.ratio(name, "sha256", cpu=True)
            results[f"cpu_{name}_over_sha256"] = med
            spread[f"cpu_{name}_over_sha256"] = (lo, hi)
        for name in (
            "encode",
            "encode_1thread",
            "encode_present",
            "decode_full",
            "aead_encrypt",
            "aead_decrypt_into",
            "memcpy",
            "update_encrypt_and_store",
            "update_read_verify_decrypt_into_row",
        ):
            if name not in r.wall:
                continue
            samples = [nbytes / w / 1e9 for w in r.wall[name]]
            results[f"{name}_GBps"] = statistics.median(samples)
            spread[f"{name}_GBps"] = (min(samples), max(samples))
        for name in ("encode", "encode_1thread"):
            med, lo, hi = r.ratio(name, "sha256")
            results[f"{name}_vs_sha256"] = med
            spread[f"{name}_vs_sha256"] = (lo, hi)
        if zc_small:
            results["decode_zero_copy_ms_small"] = statistics.median(zc_small)
            results["decode_zero_copy_ms_large"] = statistics.median(zc_large)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    width = max(map(len, results))
    print(f"bench_store: {n} x 1 MiB, median of {args.repeat} interleaved rounds (min..max)")
    for k, v in results.items():
        lo_hi = f"  ({spread[k][0]:.3f}..{spread[k][1]:.3f})" if k in spread else ""
        print(f"  {k:<{width}}  {v:10.3f}{lo_hi}")
    print("goals:")
    verdicts = {}
    for key, goal, what in GOALS:
        if key not in results:
            continue
        ok = results[key] >= goal
        verdicts[key] = ok
        print(f"  {'MET ' if ok else 'MISS'}  {what:<45} {results[key]:7.3f}  (goal >= {goal})")
    if results["sha256_2threads_vs_sha256"] < 1.4:
        print(
            "  note: a second core was mostly busy during this run (sha256 in 2 threads gained"
            f" only {results['sha256_2threads_vs_sha256']:.2f}x); the helper-thread paths"
            " cannot overlap then"
        )
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    payload = {
        "mb": n,
        "repeat": args.repeat,
        "statistic": "median over interleaved rounds; ratios taken within each round",
        "results": results,
        "spread_min_max": spread,
        "goals_met": verdicts,
        "time": time.time(),
    }
    name = "bench_store_quick.json" if args.quick else "bench_store.json"
    (out_dir / name).write_text(json.dumps(payload, indent=1))
    print(f"saved {out_dir / name}")


if __name__ == "__main__":
    main()
