// Starts and stops an anvil node from the npm package @foundry-rs/anvil-linux-amd64.
"use strict";

const { spawn } = require("node:child_process");
const path = require("node:path");

const ANVIL_BIN =
  process.env.ANVIL_BIN ||
  path.join(path.dirname(require.resolve("@foundry-rs/anvil-linux-amd64/package.json")), "bin", "anvil");

const running = new Set();
// Last resort: never leave an anvil behind, even if the test process exits abruptly.
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/**
 * Starts anvil on a free port (the OS picks it: --port 0) and resolves once it listens.
 * @returns {Promise<{url: string, chainId: number, stop: () => Promise<void>}>}
 */
function startAnvil({ chainId = 31337, timeoutMs = 30_000 } = {}) {
  const args = ["--port", "0", "--host", "127.0.0.1", "--chain-id", String(chainId), "--accounts", "3"];
  const child = spawn(ANVIL_BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
  running.add(child);

  const stop = () =>
    new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) {
        running.delete(child);
        return resolve();
      }
      child.once("exit", () => {
        running.delete(child);
        resolve();
      });
      child.kill("SIGKILL");
    });

  return new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => {
      stop().then(() => reject(new Error(`anvil did not start within ${timeoutMs} ms:\n${out}`)));
    }, timeoutMs);
    const onData = (buf) => {
      out += buf.toString();
      const m = out.match(/Listening on ([0-9.]+):(\d+)/);
      if (m) {
        clearTimeout(timer);
        child.stdout.off("data", onData);
        child.stdout.resume(); // keep draining so anvil never blocks on a full pipe
        resolve({ url: `http://${m[1]}:${m[2]}`, chainId, stop });
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", (buf) => {
      out += buf.toString();
    });
    child.once("error", (err) => {
      clearTimeout(timer);
      running.delete(child);
      reject(err);
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`anvil exited early (code ${code}, signal ${signal}):\n${out}`));
    });
  });
}

module.exports = { ANVIL_BIN, startAnvil };
