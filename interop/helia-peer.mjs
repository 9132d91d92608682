// A Helia 7 / js-libp2p 3 peer for sorap2p's interop tests, driven over stdin/stdout.
// It listens on 127.0.0.1 only and never dials anything else: no bootstrap list, no mDNS,
// no UPnP, no autoNAT/relay, no HTTP gateways or delegated routing (createHeliaLight +
// withLibp2pLight + withBitswap, not createHelia's defaults).
//
// usage: node helia-peer.mjs
// First line printed: {"ready": true, "peer": ID, "addrs": [MULTIADDR...]}. Then one JSON
// line answers each command line (errors as {"error": TEXT}):
//   connect MULTIADDR                -> {"peer": ID}
//   getdag CID TIMEOUT_MS            -> {"blocks": N, "bytes": N, "leaves_sha256": HEX}
//                                       (fetches every block of a raw/dag-pb DAG over Bitswap;
//                                       leaves_sha256 hashes the raw leaves in DAG order)
//   add SIZE SEED CHUNK MAX_LINKS    -> {"cid": CID, "sha256": HEX} (UnixFS v1, raw leaves;
//                                       deterministic bytes from SEED)
//   subscribe TOPIC                  -> {"ok": true}; later messages: {"gossip": TOPIC, "data_hex": HEX}
//   publish TOPIC HEX                -> {"recipients": N}
//   peers                            -> {"peers": [ID...]}
//   meshpeers TOPIC                  -> {"peers": [ID...]} (known subscribers of TOPIC)
//   protocols ID                     -> {"protocols": [...]} (what identify learnt)
//   quit
import './polyfill.mjs'
import { createHash } from 'node:crypto'
import { createInterface } from 'node:readline'
import { gossipsub } from '@libp2p/gossipsub'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { withBitswap } from '@helia/bitswap'
import { withLibp2pLight } from '@helia/libp2p'
import * as dagPb from '@ipld/dag-pb'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createHeliaLight } from 'helia'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { CID } from 'multiformats/cid'

const LOOPBACK = '/ip4/127.0.0.1/'
const onlyLoopback = (ma) => !ma.toString().startsWith(LOOPBACK)

const libp2pOptions = {
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  peerDiscovery: [],
  connectionGater: {
    denyDialMultiaddr: onlyLoopback,
    denyInboundConnection: (conn) => onlyLoopback(conn.remoteAddr)
  },
  services: {
    identify: identify(),
    pubsub: gossipsub({
      globalSignaturePolicy: 'StrictSign',
      allowPublishToZeroTopicPeers: true,
      emitSelf: false,
      heartbeatInterval: 500
    })
  }
}

const helia = withBitswap(withLibp2pLight(createHeliaLight({}), libp2pOptions))
await helia.start()
const libp2p = helia.libp2p

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

libp2p.services.pubsub.addEventListener('message', (evt) => {
  const msg = evt.detail
  out({ gossip: msg.topic, data_hex: Buffer.from(msg.data).toString('hex') })
})

async function getBlock (cid, signal) {
  const chunks = []
  for await (const chunk of helia.blockstore.get(cid, { signal })) chunks.push(chunk)
  return Buffer.concat(chunks)
}

async function getDag (root, timeoutMs) {
  const signal = AbortSignal.timeout(timeoutMs)
  const leaves = createHash('sha256')
  let blocks = 0
  let bytes = 0
  const stack = [root]
  const seen = new Set()
  while (stack.length > 0) {
    const cid = stack.pop()
    if (seen.has(cid.toString())) continue
    seen.add(cid.toString())
    const data = await getBlock(cid, signal)
    blocks += 1
    bytes += data.length
    if (cid.code === 0x55) {
      leaves.update(data)
    } else if (cid.code === dagPb.code) {
      const node = dagPb.decode(data)
      for (let i = node.Links.length - 1; i >= 0; i--) stack.push(node.Links[i].Hash)
    } else {
      throw new Error(`codec 0x${cid.code.toString(16)} not walked`)
    }
  }
  return { blocks, bytes, leaves_sha256: leaves.digest('hex') }
}

function deterministicBytes (size, seed) {
  const buf = Buffer.alloc(size)
  let off = 0
  let counter = 0
  while (off < size) {
    const block = createHash('sha256').update(`${seed}:${counter++}`).digest()
    off += block.copy(buf, off)
  }
  return buf
}

async function add (size, seed, chunkSize, maxChildrenPerNode) {
  const content = deterministicBytes(size, seed)
  let root
  const options = {
    chunker: fixedSize({ chunkSize }),
    layout: balanced({ maxChildrenPerNode }),
    rawLeaves: true,
    cidVersion: 1
  }
  for await (const entry of importer([{ content }], helia.blockstore, options)) root = entry
  return { cid: root.cid.toString(), sha256: createHash('sha256').update(content).digest('hex') }
}

async function run (cmd, args) {
  switch (cmd) {
    case 'connect': {
      const ma = multiaddr(args[0])
      if (onlyLoopback(ma)) throw new Error('refusing a non-loopback address')
      const conn = await libp2p.dial(ma, { signal: AbortSignal.timeout(10000) })
      return { peer: conn.remotePeer.toString() }
    }
    case 'getdag':
      return await getDag(CID.parse(args[0]), Number(args[1] ?? 20000))
    case 'add':
      return await add(Number(args[0]), args[1], Number(args[2]), Number(args[3]))
    case 'subscribe':
      libp2p.services.pubsub.subscribe(args[0])
      return { ok: true }
    case 'publish': {
      const res = await libp2p.services.pubsub.publish(args[0], Buffer.from(args[1], 'hex'))
      return { recipients: res.recipients.length }
    }
    case 'meshpeers':
      return { peers: libp2p.services.pubsub.getSubscribers(args[0]).map(String) }
    case 'peers':
      return { peers: libp2p.getPeers().map(String) }
    case 'protocols': {
      const peer = libp2p.getPeers().find((p) => p.toString() === args[0])
      return { protocols: peer == null ? [] : (await libp2p.peerStore.get(peer)).protocols }
    }
    default:
      throw new Error(`unknown command ${cmd}`)
  }
}

out({ ready: true, peer: libp2p.peerId.toString(), addrs: libp2p.getMultiaddrs().map(String) })

const rl = createInterface({ input: process.stdin })
for await (const line of rl) {
  const [cmd, ...args] = line.trim().split(/\s+/)
  if (!cmd) continue
  if (cmd === 'quit') break
  try {
    out(await run(cmd, args))
  } catch (err) {
    out({ error: `${err.name}: ${err.message}` })
  }
}
await helia.stop()
process.exit(0)
