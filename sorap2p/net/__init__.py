"""L3: the network, the only importer of libp2p (py-libp2p 0.8.1, kept behind this package).

Public API (import from the modules; importing this package does not import libp2p):

* `host.open_host(identity, listen, config=HostConfig()) -> Host`: TCP + Noise + Yamux
  (`muxer`: py-libp2p's Yamux with flow control that never invites a frame it refuses).
* `gossip.open_gossip(host, ValidatorRegistry, GossipConfig) -> Gossip`: topics, one sync
  validator per kind (ACCEPT/REJECT/IGNORE), penalties, `publish`, `subscribe`.
* `discovery.open_discovery(host, DiscoveryConfig) -> Discovery`: private DHT, subnet
  membership (`join`, `find_members`) and signed subnet records.
* `bootstrap.connect_any(host, addrs)`, `bootstrap.PeerCache(path)`.
* `framing.open_request_response(host, protocol_id, handler) -> RequestResponse`.
* `exchange.serve_car(host, store)`, `exchange.fetch_dag(host, store, root, providers)`.
* `bitswap.serve_bitswap(host, store)`, `bitswap.bitswap_fetch(host, store, root, providers)`:
  Bitswap 1.2/1.1 for IPFS peers (Helia); replies on an outbound stream.
* `network.open_network(identity, NetworkConfig, store, validators) -> Network`: all of the
  above in the right order, with bootstrapping (the node layer's entry point).

Specs: protocols/discovery.md, gossip.md, exchange.md, framing.md.
"""
