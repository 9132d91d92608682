"""Gas of RoundLedger.submitRound (n validators, quorum k, 10 reputation deltas), of every
registry operation, and submit-to-confirmed time on anvil.

    python bench/bench_gas.py [--rounds 4] [--deltas 10] [--timed 20]

Prints each figure with its ratio to a baseline measured in the same run (a plain 21k-gas
ETH transfer for gas; one eth_blockNumber round trip for time) and writes
bench/results/bench_gas.json. Needs anvil (`npm ci --ignore-scripts --prefix contracts`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

from sorap2p.chain.client import GAS, ChainClient, ChainConfig, SubnetParams, submit_round_gas
from sorap2p.chain.deploy import deploy
from sorap2p.chain.devchain import Devchain
from sorap2p.chain.proof import (
    ChainKey,
    RoundProof,
    RoundRecord,
    Verdict,
    sign_round,
    sign_verdict,
)
from sorap2p.core.crypto import IdentityKey
from sorap2p.core.ids import PeerId, Role, SubnetId

GOAL_N7 = 200_000
SETTINGS = [(4, 3), (7, 5), (16, 11)]


def peer(i: int) -> PeerId:
    return IdentityKey(hashlib.sha256(b"bench%d" % i).digest()).peer_id


def record(subnet: bytes, rnd: int, parent: bytes, deltas: int) -> RoundRecord:
    return RoundRecord(
        subnet=subnet,
        round=rnd,
        validator_set_version=1,
        parent_cid=parent,
        model_cid=b"\x01\x55\x12\x20" + hashlib.sha256(b"model%d" % rnd).digest(),
        updates_root=hashlib.sha256(b"root%d" % rnd).digest(),
        metadata_hash=hashlib.sha256(b"meta%d" % rnd).digest(),
        aggregator=peer(999).hashed,
        trainers=tuple(peer(i).hashed for i in range(deltas)),
        deltas=tuple(((i * 7919 + rnd) % 2001 - 1000) * 100 for i in range(deltas)),
    )


def sorted_keys(keys: list[ChainKey]) -> list[ChainKey]:
    return sorted(keys, key=lambda k: int(k.address, 16))


def gas(rc: Any) -> int:
    assert rc is not None
    return int(rc.gas_used)


def bench_submit(
    client: ChainClient, owner: ChainKey, validators: list[ChainKey], args: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n, k in SETTINGS:
        subnet = SubnetId(f"gas-n{n}").key
        vals = sorted_keys(validators[:n])
        client.create_subnet(owner, subnet, SubnetParams(), [v.address for v in vals], k)
        parent = b"\x01genesis"
        used = []
        for rnd in range(1, args.rounds + 1):
            rec = record(subnet, rnd, parent, args.deltas)
            sigs = [sign_round(v, client.domain, rec) for v in vals[:k]]
            rc = client.submit_round(owner, RoundProof.assemble(client.domain, rec, sigs))
            used.append(gas(rc))
            parent = rec.model_cid
        out[f"n={n},k={k}"] = {
            "first_round": used[0],
            "steady_state": used[-1],
            "limit": submit_round_gas(k, args.deltas),
        }
    return out


def bench_registry(client: ChainClient, keys: list[ChainKey]) -> dict[str, int]:
    owner, trainer, challenger = keys[0], keys[10], keys[11]
    vals = sorted_keys(keys[1:8])
    subnet = SubnetId("gas-registry").key
    params = SubnetParams(challenge_window=600, unbonding_delay=60, dispute_bond=10**16)
    g: dict[str, int] = {}
    g["createSubnet(7 validators)"] = gas(
        client.create_subnet(owner, subnet, params, [v.address for v in vals], 5)
    )
    g["updateValidatorSet(7)"] = gas(
        client.update_validator_set(owner, subnet, [v.address for v in vals], 5)
    )
    g["join"] = gas(client.join(trainer, subnet, peer(1), Role.TRAINER, 10**18))
    g["join(second member)"] = gas(client.join(challenger, subnet, peer(2), Role.VALIDATOR, 10**18))
    g["addStake"] = gas(client.add_stake(trainer, subnet, 10**17))
    g["fundRewards"] = gas(client.fund_rewards(owner, subnet, 10**18))
    rec = dataclasses.replace(record(subnet, 1, b"\x01genesis", 0), validator_set_version=2)
    sigs = [sign_round(v, client.domain, rec) for v in vals[:5]]
    client.submit_round(owner, RoundProof.assemble(client.domain, rec, sigs))
    g["creditRound(2 recipients)"] = gas(
        client.credit_round(
            owner, subnet, 1, [(trainer.address, 10**16), (challenger.address, 10**16)]
        )
    )
    g["claim"] = gas(client.claim(trainer, subnet))
    g["openDispute"] = gas(
        client.transact(
            challenger, client.ledger, "openDispute", [subnet, 1, b"\x01" * 32], value=10**16
        )
    )
    dispute_id = int(client.ledger.functions.disputeCount().call())
    verdict = Verdict(dispute_id, subnet, 1, 2, True, trainer.address, 10**17)
    vsigs = [sign_verdict(v, client.domain, verdict) for v in vals[:5]]
    g["resolveDispute(upheld, k=5)"] = gas(client.resolve_dispute(owner, verdict, vsigs))
    g["withdrawBond"] = gas(client.withdraw_bond(challenger))
    g["leave"] = gas(client.leave(trainer, subnet))
    client.rpc_request("evm_increaseTime", [61])
    client.rpc_request("evm_mine")
    g["withdraw(stake)"] = gas(client.withdraw_stake(trainer, subnet))
    return g


def bench_latency(
    client: ChainClient, owner: ChainKey, validators: list[ChainKey], timed: int
) -> dict[str, float]:
    subnet = SubnetId("latency").key
    vals = sorted_keys(validators[:7])
    client.create_subnet(owner, subnet, SubnetParams(), [v.address for v in vals], 5)
    parent = b"\x01genesis"
    submit, rtt, sign = [], [], []
    for rnd in range(1, timed + 1):
        t0 = time.perf_counter()
        client.block_number()
        rtt.append(time.perf_counter() - t0)
        rec = record(subnet, rnd, parent, 10)
        t0 = time.perf_counter()
        sigs = [sign_round(v, client.domain, rec) for v in vals[:5]]
        proof = RoundProof.assemble(client.domain, rec, sigs)
        sign.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        client.submit_round(owner, proof)
        submit.append(time.perf_counter() - t0)
        parent = rec.model_cid
    return {
        "rpc_round_trip_ms": statistics.median(rtt) * 1e3,
        "sign_and_assemble_k5_ms": statistics.median(sign) * 1e3,
        "submit_to_confirmed_ms": statistics.median(submit) * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--rounds", type=int, default=4, help="rounds per setting (last = steady state)"
    )
    ap.add_argument("--deltas", type=int, default=10)
    ap.add_argument("--timed", type=int, default=20, help="rounds timed for submit-to-confirmed")
    args = ap.parse_args()
    with Devchain(accounts=20) as dc:
        client = ChainClient.connect(
            dc.url, None, ChainConfig(confirmations=1, poll_interval=0.002)
        )
        keys = list(dc.keys)
        deploy(client, keys[0])
        baseline_gas = gas(
            client.wait(
                client.send(keys[0], keys[19].address, b"", gas=21_000, value=1, preflight=False)
            )
        )
        submit = bench_submit(client, keys[0], keys[1:17], args)
        registry = bench_registry(client, keys)
        latency = bench_latency(client, keys[0], keys[1:17], args.timed)

    print(f"baseline: ETH transfer = {baseline_gas} gas")
    print(f"submitRound, {args.deltas} reputation deltas:")
    for name, row in submit.items():
        print(
            f"  {name:10s} first {row['first_round']:>8,}  steady {row['steady_state']:>8,}"
            f"  ({row['steady_state'] / baseline_gas:.1f}x transfer; limit {row['limit']:,})"
        )
    n7 = submit["n=7,k=5"]["steady_state"]
    verdict = "meets" if n7 <= GOAL_N7 else "misses"
    print(f"  n=7,k=5 steady state {n7:,} {verdict} the {GOAL_N7:,} goal ({n7 / GOAL_N7:.2f}x)")
    print("registry and dispute operations:")
    for name, used in registry.items():
        print(f"  {name:28s} {used:>8,}  ({used / baseline_gas:.1f}x transfer)")
    for name, limit_key in [("join", "join"), ("claim", "claim"), ("leave", "leave")]:
        if registry[name] > GAS[limit_key]:
            print(f"  WARNING: {name} used more than its gas limit {GAS[limit_key]}")
    rtt = latency["rpc_round_trip_ms"]
    print("anvil (automine), median:")
    for name, ms in latency.items():
        print(f"  {name:28s} {ms:8.2f} ms  ({ms / rtt:.1f}x one RPC round trip)")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "bench_gas.json").write_text(
        json.dumps(
            {
                "baseline_gas": baseline_gas,
                "submitRound": submit,
                "registry": registry,
                "latency": latency,
            },
            indent=2,
        )
    )
    print(f"wrote {out / 'bench_gas.json'}")


if __name__ == "__main__":
    main()
