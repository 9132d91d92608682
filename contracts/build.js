#!/usr/bin/env node
// Compile contracts/src with npm `solc` through its JS API (its --standard-json CLI truncates
// piped output at 64 KiB) and write one artifact per deployable contract (ABI + bytecode) to
// sorap2p/chain/artifacts/<Name>.json, where the Python package finds them.
//
//   node contracts/build.js           write the artifacts
//   node contracts/build.js --check   rebuild in memory; exit 1 if any artifact differs
"use strict";

const fs = require("fs");
const path = require("path");
const solc = require("solc");

const HERE = __dirname;
const SRC = path.join(HERE, "src");
const OUT = path.join(HERE, "..", "sorap2p", "chain", "artifacts");
const DEPLOYABLE = ["SubnetRegistry", "RoundLedger", "TestToken"];

function listSources(dir, prefix) {
  const out = [];
  for (const name of fs.readdirSync(dir).sort()) {
    const full = path.join(dir, name);
    const rel = prefix ? `${prefix}/${name}` : name;
    if (fs.statSync(full).isDirectory()) out.push(...listSources(full, rel));
    else if (name.endsWith(".sol")) out.push(rel);
  }
  return out;
}

function findImport(importPath) {
  const candidates = [
    path.join(HERE, "node_modules", importPath),
    path.join(SRC, importPath),
  ];
  for (const c of candidates) {
    if (fs.existsSync(c)) return { contents: fs.readFileSync(c, "utf8") };
  }
  return { error: `not found: ${importPath}` };
}

function compile() {
  const sources = {};
  for (const rel of listSources(SRC, "")) {
    sources[`src/${rel}`] = { content: fs.readFileSync(path.join(SRC, rel), "utf8") };
  }
  const input = {
    language: "Solidity",
    sources,
    settings: {
      optimizer: { enabled: true, runs: 10000 },
      evmVersion: "cancun",
      viaIR: true,
      metadata: { bytecodeHash: "none" },
      outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  for (const e of output.errors || []) process.stderr.write(e.formattedMessage + "\n");
  if (errors.length) process.exit(2);
  const artifacts = {};
  for (const [file, contracts] of Object.entries(output.contracts)) {
    for (const [name, c] of Object.entries(contracts)) {
      if (!DEPLOYABLE.includes(name)) continue;
      const artifact = {
        contractName: name,
        sourceName: file,
        compiler: `solc ${solc.version()}`,
        settings: input.settings,
        abi: c.abi,
        bytecode: "0x" + c.evm.bytecode.object,
      };
      artifacts[name] = JSON.stringify(artifact, null, 2) + "\n";
    }
  }
  for (const name of DEPLOYABLE) {
    if (!(name in artifacts)) {
      process.stderr.write(`missing contract ${name}\n`);
      process.exit(2);
    }
  }
  return artifacts;
}

function main() {
  const check = process.argv.includes("--check");
  const artifacts = compile();
  let differs = 0;
  if (!check) fs.mkdirSync(OUT, { recursive: true });
  for (const [name, text] of Object.entries(artifacts)) {
    const file = path.join(OUT, `${name}.json`);
    const old = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : null;
    if (check) {
      if (old !== text) {
        process.stderr.write(`artifact differs from a fresh build: ${file}\n`);
        differs += 1;
      }
    } else if (old !== text) {
      fs.writeFileSync(file, text);
      process.stdout.write(`wrote ${path.relative(process.cwd(), file)}\n`);
    }
  }
  if (check && differs) process.exit(1);
  if (check) process.stdout.write(`artifacts up to date (${Object.keys(artifacts).length})\n`);
}

main();
