// CAR parity helper built on @ipld/car.
//   node car-tool.mjs read FILE.car        -> JSON {roots, blocks: [{cid, size, sha256ok}]}
//   node car-tool.mjs write OUT.car ROOT CID=HEXDATA...  -> writes the blocks with @ipld/car
import './polyfill.mjs'
import { readFile, writeFile } from 'node:fs/promises'
import { CarReader, CarWriter } from '@ipld/car'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'

const [cmd, file, ...rest] = process.argv.slice(2)
if (cmd === 'read') {
  const reader = await CarReader.fromBytes(await readFile(file))
  const roots = (await reader.getRoots()).map(String)
  const blocks = []
  for await (const { cid, bytes } of reader.blocks()) {
    const digest = await sha256.digest(bytes)
    const ok = Buffer.compare(Buffer.from(digest.bytes), Buffer.from(cid.multihash.bytes)) === 0
    blocks.push({ cid: cid.toString(), size: bytes.length, sha256ok: ok })
  }
  console.log(JSON.stringify({ roots, blocks }))
} else if (cmd === 'write') {
  const [root, ...pairs] = rest
  const { writer, out } = CarWriter.create([CID.parse(root)])
  const chunks = []
  const done = (async () => { for await (const c of out) chunks.push(c) })()
  for (const pair of pairs) {
    const [cid, hex] = pair.split('=')
    await writer.put({ cid: CID.parse(cid), bytes: Buffer.from(hex, 'hex') })
  }
  await writer.close()
  await done
  await writeFile(file, Buffer.concat(chunks))
} else {
  console.error('usage: car-tool.mjs read FILE | write OUT ROOT CID=HEX...')
  process.exit(2)
}
