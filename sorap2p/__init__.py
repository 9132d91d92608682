"""sorap2p: a libp2p overlay for decentralized, privacy-preserving federated learning."""

__version__ = "0.1.0"
