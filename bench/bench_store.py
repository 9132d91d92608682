"""Block store benchmarks, each against a baseline measured in the same run.

    python bench/bench_store.py [--mb 64] [--repeat 3] [--dir /tmp]

* put / get of 1 MiB blocks vs hashlib sha256 over the same bytes (goal >= 0.8x); the plain
  ``os.write`` of new files is printed too, to show what the file system itself costs;
* state_dict encode (goal >= 1.5 GB/s) and decode: full (read + verify every chunk) and the
  zero-copy step (manifest -> tensor views; goal: constant, ~1 ms, at any size);
* AEAD (ChunkCipher, 1 MiB chunks) encrypt and decrypt-into-buffer (goal >= 1 GB/s, one core),
  and the whole encrypted-update path through the store.

Prints a table and saves bench/results/bench_store.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

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


def best(fn: Callable[[], object], repeat: int, *, sync: bool = False) -> float:
    """The best of ``repeat`` timings; with ``sync``, dirty pages are flushed before each one
    (untimed), so every write-heavy run starts from the same page-cache state."""
    times = []
    for _ in range(repeat):
        if sync:
            os.sync()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mb", type=int, default=64, help="payload size in MiB (default 64)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where the temporary stores go")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = args.mb
    blocks = [os.urandom(MiB) for _ in range(n)]
    results: dict[str, float] = {}
    root = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir))
    try:
        # -- blocks ------------------------------------------------------------------
        sha = best(lambda: [hashlib.sha256(b).digest() for b in blocks], args.repeat)
        counter = [0]

        def fresh_store() -> Blockstore:
            counter[0] += 1
            return Blockstore(root / f"s{counter[0]}")

        def raw_writes() -> None:
            d = root / f"raw{counter[0]}"
            counter[0] += 1
            d.mkdir()
            for i, b in enumerate(blocks):
                fd = os.open(d / f"{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                os.write(fd, b)
                os.close(fd)

        stores: list[Blockstore] = []

        def put_all() -> None:
            s = fresh_store()
            stores.append(s)
            for b in blocks:
                s.put(b)

        # interleaved, so both see the same disk and page-cache conditions
        write = put = float("inf")
        for _ in range(args.repeat):
            write = min(write, best(raw_writes, 1, sync=True))
            put = min(put, best(put_all, 1, sync=True))
        store = stores[-1]
        cids = list(store.iter_cids())

        def get_all() -> None:
            for c in cids:
                store.get(c)  # each block is dropped, as a server sending it would

        get = best(get_all, args.repeat)
        results |= {
            "sha256_MBps": n / sha,
            "raw_new_file_write_MBps": n / write,
            "put_MBps": n / put,
            "get_MBps": n / get,
            "put_vs_sha256": sha / put,
            "get_vs_sha256": sha / get,
            "put_vs_sha256_plus_write": (sha + write) / put,
        }

        # -- model DAGs --------------------------------------------------------------
        sd = {f"layer{i}.weight": torch.randn(MiB // 4) for i in range(n)}
        nbytes = n * MiB
        for workers in (1, 2):
            enc = best(
                lambda w=workers: encode_state_dict(fresh_store(), sd, workers=w),
                args.repeat,
                sync=True,
            )
            results[f"encode_GBps_workers{workers}"] = nbytes / enc / 1e9
        s_again = fresh_store()
        encode_state_dict(s_again, sd)
        again = best(lambda: encode_state_dict(s_again, sd), args.repeat)
        results["encode_GBps_blocks_present"] = nbytes / again / 1e9
        results["encode_vs_sha256_workers1"] = (
            results["encode_GBps_workers1"] * 1e9 / MiB / results["sha256_MBps"]
        )
        mstore = fresh_store()
        mroot = encode_state_dict(mstore, sd)
        dec_full = best(lambda: read_flat(mstore, load_manifest(mstore, mroot)), args.repeat)
        results["decode_full_GBps"] = nbytes / dec_full / 1e9
        for label, size_sd in (("small", {"w": torch.randn(1000)}), ("large", sd)):
            s = fresh_store()
            r = encode_state_dict(s, size_sd)
            flat = read_flat(s, load_manifest(s, r))
            t = best(lambda s=s, r=r, flat=flat: tensors_from_buffer(load_manifest(s, r), flat), 20)
            results[f"decode_zero_copy_ms_{label}"] = t * 1e3

        # -- AEAD ------------------------------------------------------------------------
        cipher = ChunkCipher(ChunkCipher.new_key(), b"bench")
        sealed = [cipher.encrypt(i, b, i == n - 1) for i, b in enumerate(blocks)]
        enc_t = best(
            lambda: [cipher.encrypt(i, b, i == n - 1) for i, b in enumerate(blocks)], args.repeat
        )
        out = bytearray(n * MiB)
        view = memoryview(out)

        def dec_into() -> None:
            for i, c in enumerate(sealed):
                cipher.decrypt_into(i, c, view[i * MiB :], i == n - 1)

        dec_t = best(dec_into, args.repeat)
        copy_t = best(lambda: bytes(out), args.repeat)
        results |= {
            "aead_encrypt_GBps": nbytes / enc_t / 1e9,
            "aead_decrypt_into_GBps": nbytes / dec_t / 1e9,
            "memcpy_GBps": nbytes / copy_t / 1e9,
        }
        alice = IdentityKey.generate()
        flat_t = torch.randn(n * MiB // 4)
        estore = fresh_store()
        recipients = {alice.peer_id: alice.x25519_public}
        eroot = encrypt_update(estore, flat_t, recipients, b"b")
        full_enc = best(
            lambda: encrypt_update(fresh_store(), flat_t, recipients, b"b"), args.repeat, sync=True
        )
        row = torch.empty_like(flat_t)
        full_dec = best(lambda: decrypt_update_into(estore, eroot, alice, row), args.repeat)
        assert torch.equal(row, flat_t)
        results["update_encrypt_and_store_GBps"] = nbytes / full_enc / 1e9
        results["update_read_verify_decrypt_into_row_GBps"] = nbytes / full_dec / 1e9
    finally:
        shutil.rmtree(root, ignore_errors=True)

    width = max(map(len, results))
    print(f"bench_store: {n} MiB payloads, best of {args.repeat}")
    for k, v in results.items():
        print(f"  {k:<{width}}  {v:10.3f}")
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    payload = {"mb": n, "repeat": args.repeat, "results": results, "time": time.time()}
    (out_dir / "bench_store.json").write_text(json.dumps(payload, indent=1))
    print(f"saved {out_dir / 'bench_store.json'}")


if __name__ == "__main__":
    main()
