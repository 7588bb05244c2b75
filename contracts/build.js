#!/usr/bin/env node
// Compiles contracts/src/*.sol with solcjs (the pinned npm `solc`, no native compiler, no
// download) through the standard-JSON interface and writes one artifact per contract to
// contracts/artifacts/<Name>.json.
//
// The output is deterministic: same sources + same solc => byte-identical artifacts (object keys
// sorted, no timestamps, no absolute paths; source unit names are relative, e.g. "src/TestUSDC.sol").
//
//   node build.js          compile and (re)write the artifacts
//   node build.js --check  compile and fail if the committed artifacts differ (writes nothing)
"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const path = require("node:path");
const solc = require("solc");

const ROOT = __dirname;
const EXPECTED_SOLC = require("./package.json").devDependencies.solc;

// One entry per artifact: the source file and the contract it holds.
const CONTRACTS = [
  { source: "src/TestPermitToken.sol", name: "TestPermitToken" },
  { source: "src/TestUSDC.sol", name: "TestUSDC" },
  { source: "src/TestWallet.sol", name: "TestWallet" },
];

const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  // Supported by anvil's default (latest) hardfork and by every L2 the project targets.
  evmVersion: "cancun",
  outputSelection: {
    "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] },
  },
};

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === "object") {
    const out = {};
    for (const k of Object.keys(value).sort()) out[k] = sortKeys(value[k]);
    return out;
  }
  return value;
}

function sha256Hex(text) {
  return crypto.createHash("sha256").update(text, "utf8").digest("hex");
}

function compile() {
  const fullVersion = solc.version(); // e.g. "0.8.30+commit.73712a01.Emscripten.clang"
  if (!fullVersion.startsWith(`${EXPECTED_SOLC}+`)) {
    throw new Error(`solc ${fullVersion} is loaded but package.json pins ${EXPECTED_SOLC}; run npm ci`);
  }

  const sources = {};
  for (const file of [...new Set(CONTRACTS.map((c) => c.source))].sort()) {
    sources[file] = { content: fs.readFileSync(path.join(ROOT, file), "utf8") };
  }
  const input = { language: "Solidity", sources, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));

  const problems = output.errors || [];
  for (const p of problems) process.stderr.write(`${p.formattedMessage || p.message}\n`);
  if (problems.some((p) => p.severity === "error")) throw new Error("compilation failed");

  const artifacts = {};
  for (const { source, name } of CONTRACTS) {
    const c = output.contracts?.[source]?.[name];
    if (!c) throw new Error(`${name} not found in ${source}`);
    const artifact = sortKeys({
      contractName: name,
      sourceName: source,
      sourceSha256: sha256Hex(sources[source].content),
      compiler: {
        name: "solc",
        package: `solc@${EXPECTED_SOLC} (solcjs)`,
        version: fullVersion,
        settings: { evmVersion: SETTINGS.evmVersion, optimizer: SETTINGS.optimizer },
      },
      abi: c.abi,
      bytecode: `0x${c.evm.bytecode.object}`,
      deployedBytecode: `0x${c.evm.deployedBytecode.object}`,
    });
    artifacts[`${name}.json`] = `${JSON.stringify(artifact, null, 2)}\n`;
  }
  return artifacts;
}

function main() {
  const check = process.argv.includes("--check");
  const artifacts = compile();
  const dir = path.join(ROOT, "artifacts");
  let stale = 0;
  for (const [file, text] of Object.entries(artifacts)) {
    const target = path.join(dir, file);
    const current = fs.existsSync(target) ? fs.readFileSync(target, "utf8") : null;
    if (check) {
      if (current !== text) {
        process.stderr.write(`artifacts/${file} is stale: run \`node build.js\` and commit it\n`);
        stale++;
      } else {
        process.stdout.write(`artifacts/${file} is up to date\n`);
      }
    } else {
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(target, text);
      process.stdout.write(`wrote artifacts/${file}\n`);
    }
  }
  if (stale) process.exit(1);
}

main();
