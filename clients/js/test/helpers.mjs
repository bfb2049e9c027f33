// A real wsnode process for the package's tests: Python from $WSGATE_PYTHON (default python3, run at the repository
// root), Redis at $REDIS_URL (default 127.0.0.1:6379) under $WSGATE_REDIS_PREFIX (default a fresh one).
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const PYTHON = process.env.WSGATE_PYTHON || "python3";
const REDIS = process.env.REDIS_URL || "redis://127.0.0.1:6379/0";
const PREFIX = process.env.WSGATE_REDIS_PREFIX || `wsgate-test-js-${randomBytes(5).toString("hex")}:`;
export const SECRET = "js-package-test-secret-0123456789";
export const API_KEY = "js-package-test-key";

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** An HS256 JWT for `user`, valid for an hour. */
export function token(user) {
  const part = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const head = part({ alg: "HS256", typ: "JWT" });
  const body = part({ sub: user, exp: Math.floor(Date.now() / 1000) + 3600 });
  const sig = createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** Poll `check` (async, truthy when done) until a deadline. */
export async function until(check, what, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`${what}: not within ${timeoutMs} ms (last: ${last})`);
}

/** Start a node on `port` and wait until its /health answers 200. */
export async function startNode(port, name = `js-${port}`) {
  const child = spawn(
    PYTHON,
    ["-m", "wsnode", "--host", "127.0.0.1", "--port", String(port), "--node-id", name, "--redis", REDIS,
     "--redis-prefix", PREFIX, "--jwt-secret", SECRET, "--api-key", API_KEY, "--session-ttl", "2",
     "--session-refresh", "0.5", "--drain-delay", "0.1"],
    { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] }
  );
  let log = "";
  child.stdout.on("data", (d) => (log += d));
  child.stderr.on("data", (d) => (log += d));
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const node = { child, port, url: `http://127.0.0.1:${port}`, log: () => log, exited };
  await until(async () => {
    if (child.exitCode !== null) throw new Error(`node exited ${child.exitCode}: ${log}`);
    const res = await fetch(`${node.url}/health`);
    return res.status === 200;
  }, `node on ${port} healthy`);
  return node;
}

export async function stopNode(node, signal = "SIGTERM") {
  if (node.child.exitCode === null && node.child.signalCode === null) node.child.kill(signal);
  await node.exited;
}

/** POST /api/v1/push; the JSON answer. */
export async function push(node, body) {
  const res = await fetch(`${node.url}/api/v1/push`, {
    method: "POST",
    headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (res.status !== 202) throw new Error(`push answered ${res.status}: ${await res.text()}`);
  return res.json();
}
