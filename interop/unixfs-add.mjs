// Print the root CID that Helia's UnixFS importer (ipfs-unixfs-importer, what @helia/unixfs
// calls) gives each file named on the command line.
// usage: node unixfs-add.mjs PROFILE FILE...
//   PROFILE: unixfs-v1-2025 | unixfs-v0-2015 | custom:CHUNK_SIZE:MAX_LINKS:RAW_LEAVES(0|1):CID_VERSION
import './polyfill.mjs'
import { readFile } from 'node:fs/promises'
import { MemoryBlockstore } from 'blockstore-core/memory'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'

const [profile, ...files] = process.argv.slice(2)
let options
if (profile.startsWith('custom:')) {
  const [chunkSize, maxChildrenPerNode, rawLeaves, cidVersion] = profile.split(':').slice(1).map(Number)
  options = {
    chunker: fixedSize({ chunkSize }),
    layout: balanced({ maxChildrenPerNode }),
    rawLeaves: rawLeaves === 1,
    cidVersion
  }
} else {
  options = { profile }
}
const blockstore = new MemoryBlockstore()
for (const file of files) {
  const content = await readFile(file)
  let root
  for await (const entry of importer([{ content }], blockstore, options)) root = entry
  console.log(root.cid.toString())
}
