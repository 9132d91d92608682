"""The local sorap2p testnet: anvil + contracts + node processes on 127.0.0.1."""
