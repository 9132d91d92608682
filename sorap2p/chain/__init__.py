"""The chain adapter: quorum proofs (pure), a typed web3 client, deployment, local chains.

Layer L2: imports sorap2p.core only. Blocking calls live in `ChainClient`; trio code uses
`AsyncChain`. Spec: protocols/quorum-proof.md.
"""

from sorap2p.chain.client import (
    ChainClient,
    ChainConfig,
    Member,
    Receipt,
    RetryPolicy,
    RoundInfo,
    SubnetParams,
    TransactionRevertedError,
)
from sorap2p.chain.deployment import Deployment
from sorap2p.chain.nonces import NonceManager
from sorap2p.chain.proof import (
    ChainKey,
    Domain,
    MerkleTree,
    RoundProof,
    RoundRecord,
    UpdateLeaf,
    Verdict,
    next_reputation,
    recover_signer,
    round_digest,
    sign_round,
    sign_verdict,
    verdict_digest,
)

__all__ = [
    "ChainClient",
    "ChainConfig",
    "ChainKey",
    "Deployment",
    "Domain",
    "Member",
    "MerkleTree",
    "NonceManager",
    "Receipt",
    "RetryPolicy",
    "RoundInfo",
    "RoundProof",
    "RoundRecord",
    "SubnetParams",
    "TransactionRevertedError",
    "UpdateLeaf",
    "Verdict",
    "next_reputation",
    "recover_signer",
    "round_digest",
    "sign_round",
    "sign_verdict",
    "verdict_digest",
]
