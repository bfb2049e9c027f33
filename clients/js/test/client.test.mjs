// The package against a real node (started by test/helpers.mjs), with the `ws` package as Node 20's WebSocket.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { after, before, test } from "node:test";
import WebSocket from "ws";

import WsGateDefault, { STATES, WsGate } from "wsgate-client";
import { ROOT, freePort, push, startNode, stopNode, token, until } from "./helpers.mjs";

let node;
const clients = [];

before(async () => {
  node = await startNode(await freePort());
});

after(async () => {
  for (const client of clients) client.close();
  await stopNode(node);
});

function open(user, extra = {}) {
  const client = new WsGate({
    url: `${node.url}/websocket`,
    getToken: () => token(user),
    WebSocket,
    backoffBaseMs: 50,
    backoffMaxMs: 300,
    ...extra,
  });
  clients.push(client);
  return client;
}

test("the package exports one client class as ES module, CommonJS and default, without a global", () => {
  assert.equal(globalThis.WsGate, undefined, "the ES module must not define a global");
  const require = createRequire(import.meta.url);
  const cjs = require("wsgate-client"); // the classic script's copy: it does define the global, as in a page
  assert.equal(WsGateDefault, WsGate);
  assert.equal(typeof cjs, "function");
  assert.equal(cjs.WsGate, cjs);
  assert.equal(STATES.OPEN, "open");
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
  assert.deepEqual(pkg.dependencies ?? {}, {}, "no runtime dependencies");
});

test("the node serves the file the package is built from", async () => {
  const served = await (await fetch(`${node.url}/static/wsgate.js`)).text();
  const source = readFileSync(join(ROOT, "wsnode", "static", "wsgate.js"), "utf8");
  assert.equal(served, source);
  const built = readFileSync(new URL("../dist/wsgate.cjs", import.meta.url), "utf8");
  assert.ok(built.endsWith(source), "dist/wsgate.cjs is the served source");
});

test("a push reaches the module's handler once, unread counts follow acks on every tab", async () => {
  const unreadSeen = [];
  const tab1 = open("js-ann", { onUnread: (u) => unreadSeen.push(u) });
  const tab2 = open("js-ann");
  await until(() => tab1.state === "open" && tab2.state === "open", "both tabs open");
  const orders = [];
  const everything = [];
  tab1.on("orders", (m) => orders.push(m));
  tab1.on("*", (m) => everything.push(m));
  const answer = await push(node, { to: { users: ["js-ann"] }, module: "orders", event: "paid", data: { n: 1 } });
  assert.equal(answer.online_sessions, 2);
  await push(node, { to: { users: ["js-ann"] }, module: "chat", data: "hi" });
  await until(() => everything.length === 2, "two messages");
  assert.equal(orders.length, 1);
  assert.deepEqual(orders[0].data, { n: 1 });
  assert.equal(orders[0].event, "paid");
  assert.equal(tab1.lastId, everything[1].id);
  await until(() => tab2.unread.orders === 1 && tab2.unread.chat === 1, "unread on the other tab");
  tab1.ack(orders[0].id);
  await until(() => !tab2.unread.orders && tab2.unread.chat === 1, "the ack seen by the other tab");
  assert.ok(unreadSeen.length >= 3);
});

test("publish resolves when the node accepts it", async () => {
  const client = open("js-bo");
  await until(() => client.state === "open", "open");
  const ref = await client.publish("feedback", { text: "hello" });
  assert.match(ref, /^r1-/);
});

test("after its node restarts the client reconnects with since and gets what it missed, once", async () => {
  const states = [];
  const client = open("js-cy", { onState: (s) => states.push(s) });
  const got = [];
  client.on("news", (m) => got.push(m.data));
  await until(() => client.state === "open", "open");
  await push(node, { to: { users: ["js-cy"] }, module: "news", data: 1 });
  await until(() => got.length === 1, "first message");
  const firstNode = client.node;
  await stopNode(node); // drain: the node closes the session with 1001
  await until(() => client.state === "reconnecting", "reconnecting");
  node = await startNode(node.port, "js-restarted");
  await push(node, { to: { users: ["js-cy"] }, module: "news", data: 2 });
  await until(() => got.length === 2 && client.state === "open", "the missed message after the reconnect");
  assert.deepEqual(got, [1, 2]);
  assert.notEqual(client.node, firstNode);
  assert.equal(client.recovered, true);
  assert.ok(states.includes(STATES.RECONNECTING));
});
