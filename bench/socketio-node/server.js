// Node.js socket.io 4.8 with @socket.io/redis-adapter: the third system of `python -m bench.fanout` (issue 19).
//
//   node server.js --port P --redis URL --key K --jwt-secret S --api-key A
//
// A client connects with auth {"token": JWT}; the token is checked (HS256, expiry) as wsnode checks its own, and the
// socket joins the room named after the token's subject, the usual way to address a user with socket.io.
// POST /push (Authorization: Bearer A) with {"room": U | null, "event": E, "data": D} calls io.to(U).emit(E, D), or
// io.emit(E, D) when room is null; the Redis adapter carries it to the other servers. Nothing is stored.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");
const jwt = require("jsonwebtoken");

function parseArgs(argv) {
  const args = { port: 0, redis: "redis://127.0.0.1:6379/0", key: "socket.io", jwtSecret: "", apiKey: "" };
  const names = { "--port": "port", "--redis": "redis", "--key": "key", "--jwt-secret": "jwtSecret",
    "--api-key": "apiKey" };
  for (let i = 2; i < argv.length; i += 2) {
    const name = names[argv[i]];
    if (name === undefined || i + 1 >= argv.length) {
      throw new Error(`unknown or incomplete option ${argv[i]}`);
    }
    args[name] = name === "port" ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!args.port || !args.jwtSecret || !args.apiKey) {
    throw new Error("--port, --jwt-secret and --api-key are required");
  }
  return args;
}

function answer(res, status, body) {
  const payload = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(payload) });
  res.end(payload);
}

async function main() {
  const args = parseArgs(process.argv);
  const pubClient = createClient({ url: args.redis });
  const subClient = pubClient.duplicate();
  await Promise.all([pubClient.connect(), subClient.connect()]);

  const expectedAuth = `Bearer ${args.apiKey}`;
  let io = null;
  const server = http.createServer((req, res) => {
    // socket.io answers its own path (/socket.io/) before this handler sees the request.
    if (req.method === "GET" && req.url === "/health") {
      answer(res, 200, { status: "UP" });
      return;
    }
    if (req.method !== "POST" || req.url !== "/push") {
      answer(res, 404, { error: "not found" });
      return;
    }
    if (req.headers.authorization !== expectedAuth) {
      answer(res, 401, { error: "bad api key" });
      return;
    }
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => {
      let push;
      try {
        push = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch (err) {
        answer(res, 400, { error: `bad JSON: ${err.message}` });
        return;
      }
      if (typeof push.event !== "string") {
        answer(res, 422, { error: "event must be a string" });
        return;
      }
      if (push.room === null || push.room === undefined) {
        io.emit(push.event, push.data);
      } else {
        io.to(String(push.room)).emit(push.event, push.data);
      }
      answer(res, 202, { accepted: true });
    });
  });

  io = new Server(server, { adapter: createAdapter(pubClient, subClient, { key: args.key }), cors: { origin: "*" } });
  io.use((socket, next) => {
    const token = socket.handshake.auth && socket.handshake.auth.token;
    try {
      const claims = jwt.verify(String(token || ""), args.jwtSecret, { algorithms: ["HS256"] });
      if (typeof claims.sub !== "string" || !claims.sub) {
        throw new Error("no subject");
      }
      socket.data.user = claims.sub;
      next();
    } catch (err) {
      next(new Error(`unauthorized: ${err.message}`));
    }
  });
  io.on("connection", (socket) => {
    socket.join(socket.data.user);
  });

  server.listen(args.port, "127.0.0.1");
  const stop = () => {
    io.close();
    Promise.allSettled([pubClient.quit(), subClient.quit()]).then(() => process.exit(0));
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
