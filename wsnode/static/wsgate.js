/*
 * wsgate.js: a dependency-free browser client for wsgate push nodes (no build step).
 *
 * Use it as a classic script (`<script src="/ws-svc/static/wsgate.js">` defines the global `WsGate`), as an ES module
 * side-effect import (`import "/ws-svc/static/wsgate.js"; const { WsGate } = globalThis;`), or from CommonJS.
 *
 *   const client = new WsGate({ url: "wss://host/ws-svc/websocket", getToken: async () => (await login()).token,
 *                               onState: (state, info) => ..., onUnread: (unread) => ... });
 *   client.on("notices", (msg) => { show(msg); client.ack(msg.id); });
 *   await client.publish("chat", { text: "hi" });   // resolved by the server's `accepted`
 *
 * Wire protocol (JSON text frames): server -> client welcome, message, unread, error, pong, accepted, ping;
 * client -> server ack, ping, publish, pong. Message ids are opaque strings: compared for equality only, and the
 * last one seen is passed back as `since=` when reconnecting, so nothing is lost across reconnects; a bounded set of
 * recent ids drops the duplicates that at-least-once delivery may bring.
 *
 * Gaps (docs/protocol.md): a user's stored ids (all digits) grow by one from `welcome.last`, so a stored id beyond the
 * next one means messages were missed; the client does not show it and reconnects at once with `since=` the last id
 * before the gap, and the replay brings the missed ones in order (wsnode/resume.py is the same rule in Python).
 *
 * Reconnects use exponential backoff with full jitter: the n-th attempt waits a uniform random time in
 * [0, min(backoffMaxMs, backoffBaseMs * 2^n)], so that the clients of a drained node do not all come back at once.
 * The token is asked for again (getToken) before every attempt, so an expired one is replaced.
 */
(function (root, factory) {
  "use strict";
  const WsGate = factory();
  if (typeof module === "object" && module && module.exports) {
    module.exports = WsGate;
    module.exports.WsGate = WsGate;
  }
  if (root) {
    root.WsGate = WsGate;
  }
})(typeof globalThis !== "undefined" ? globalThis : typeof self !== "undefined" ? self : this, function () {
  "use strict";

  const CLOSE_NORMAL = 1000;
  const OPEN = 1; // WebSocket.OPEN, without needing the global

  /** Connection states reported to onState. */
  const STATES = Object.freeze({
    IDLE: "idle",
    CONNECTING: "connecting",
    OPEN: "open",
    RECONNECTING: "reconnecting",
    CLOSED: "closed",
  });

  const DEFAULTS = Object.freeze({
    backoffBaseMs: 500,
    backoffMaxMs: 15000,
    pingIntervalMs: 20000,
    pongTimeoutMs: 10000,
    connectTimeoutMs: 10000,
    publishTimeoutMs: 10000,
    dedupSize: 2000,
    autoConnect: true,
  });

  const noop = () => {};

  /** A set of recent ids that forgets the oldest beyond `limit` (a Map's insertion order is the LRU order). */
  class RecentIds {
    constructor(limit) {
      this.limit = Math.max(1, limit | 0);
      this.map = new Map();
    }

    has(id) {
      return this.map.has(id);
    }

    add(id) {
      this.map.delete(id);
      this.map.set(id, true);
      while (this.map.size > this.limit) {
        this.map.delete(this.map.keys().next().value);
      }
    }

    get size() {
      return this.map.size;
    }
  }

  /** The sequence number of a stored message id (all digits), or null for an ephemeral one ("<seq>-<push>"). */
  function storedSeq(id) {
    return typeof id === "string" && /^[0-9]{1,15}$/.test(id) ? Number(id) : null;
  }

  /** The point reached in the user's stored ids; `check(id)` says "deliver" or "gap" (see docs/protocol.md). */
  class GapTracker {
    constructor(since) {
      this.point = storedSeq(since);
    }

    welcome(last) {
      this.point = storedSeq(last);
    }

    check(id) {
      const seq = storedSeq(id);
      if (seq === null) return "deliver";
      if (this.point !== null && this.point > 0 && seq > this.point + 1) return "gap";
      if (this.point === null || seq > this.point) this.point = seq;
      return "deliver";
    }
  }

  /** The delay before reconnect attempt `attempt` (0-based): full jitter over a capped exponential. */
  function backoffDelayMs(attempt, baseMs, maxMs, random) {
    const cap = Math.min(maxMs, baseMs * Math.pow(2, Math.min(attempt, 30)));
    return Math.floor((random || Math.random)() * cap);
  }

  /** `url` as an absolute ws:// or wss:// URL (http(s) and page-relative URLs are converted). */
  function toWebSocketUrl(url) {
    const base = typeof location !== "undefined" ? location.href : "http://localhost/";
    const parsed = new URL(url, base);
    if (parsed.protocol === "http:") parsed.protocol = "ws:";
    else if (parsed.protocol === "https:") parsed.protocol = "wss:";
    if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
      throw new Error("WsGate: url must be ws://, wss://, http:// or https://, not " + parsed.protocol);
    }
    return parsed;
  }

  function describeError(error) {
    return error && error.message ? error.message : String(error);
  }

  /**
   * A client of one wsgate WebSocket endpoint.
   * Options: url (required), token or getToken() (string or promise of one), onState(state, info), onWelcome(frame),
   * onMessage(msg), onUnread(unread), onError(frame), since (last id seen, e.g. kept from a previous page),
   * backoffBaseMs, backoffMaxMs, pingIntervalMs, pongTimeoutMs, connectTimeoutMs, publishTimeoutMs, dedupSize,
   * autoConnect (default true), WebSocket (constructor to use instead of the global one).
   */
  class WsGate {
    constructor(options) {
      const opts = options || {};
      if (!opts.url) {
        throw new Error("WsGate: option url is required");
      }
      if (opts.token === undefined && typeof opts.getToken !== "function") {
        throw new Error("WsGate: give a token or a getToken() function");
      }
      this.options = {};
      for (const key of Object.keys(DEFAULTS)) {
        this.options[key] = opts[key] !== undefined ? opts[key] : DEFAULTS[key];
      }
      this.url = toWebSocketUrl(opts.url);
      this._token = opts.token;
      this._getToken = opts.getToken;
      this._onState = opts.onState || noop;
      this._onWelcome = opts.onWelcome || noop;
      this._onMessage = opts.onMessage || noop;
      this._onUnread = opts.onUnread || noop;
      this._onError = opts.onError || noop;
      this._WebSocket = opts.WebSocket || (typeof WebSocket !== "undefined" ? WebSocket : null);
      if (!this._WebSocket) {
        throw new Error("WsGate: no WebSocket implementation available");
      }

      /** The current connection state (one of WsGate.STATES). */
      this.state = STATES.IDLE;
      /** Node id, session id and user id from the last welcome. */
      this.node = null;
      this.session = null;
      this.user = null;
      /** Unread counts per module, as the server last reported them. */
      this.unread = {};
      /** The last message id received; sent as `since` on reconnect. */
      this.lastId = opts.since || null;
      /** Whether the last connect could resume from `since` (welcome.recovered), or null when not asked. */
      this.recovered = null;
      /** Reconnect attempts since the last welcome. */
      this.attempt = 0;
      /** Counters for diagnostics and tests. */
      this.stats = { connects: 0, welcomes: 0, messages: 0, duplicates: 0, reconnects: 0, gaps: 0 };
      this._gaps = new GapTracker(this.lastId);

      this._handlers = new Map();
      this._seen = new RecentIds(this.options.dedupSize);
      this._pendingPublishes = new Map();
      this._pendingAcks = new Set();
      this._refCounter = 0;
      this._ws = null;
      this._stopped = false;
      this._reconnectTimer = null;
      this._connectTimer = null;
      this._pingTimer = null;
      this._pongTimer = null;
      // Every socket belongs to one generation; events of an older one (replaced or dropped) are ignored.
      this._generation = 0;

      if (this.options.autoConnect) {
        this.connect();
      }
    }

    /** Register `fn(msg)` for messages of `module` ("*" for every module); returns a function that unregisters it. */
    on(module, fn) {
      if (typeof fn !== "function") {
        throw new TypeError("WsGate.on: handler must be a function");
      }
      let set = this._handlers.get(module);
      if (!set) {
        set = new Set();
        this._handlers.set(module, set);
      }
      set.add(fn);
      return () => this.off(module, fn);
    }

    /** Unregister a handler given to on(). */
    off(module, fn) {
      const set = this._handlers.get(module);
      if (set) {
        set.delete(fn);
        if (set.size === 0) this._handlers.delete(module);
      }
    }

    /** Open the connection (again, after close()). */
    connect() {
      this._stopped = false;
      if (this._ws || this._reconnectTimer) {
        return;
      }
      this._open();
    }

    /** Close for good: no reconnect; pending publishes are rejected. */
    close() {
      this._stopped = true;
      this._clearTimers();
      const ws = this._ws;
      this._ws = null;
      this._generation++;
      if (ws) {
        try {
          ws.close(CLOSE_NORMAL, "client closed");
        } catch (e) {
          /* already closing */
        }
      }
      this._failPublishes(new Error("WsGate: client closed"));
      this._setState(STATES.CLOSED, {});
    }

    /** Mark message `id` as read; sent now, or after the next welcome when offline. */
    ack(id) {
      if (typeof id !== "string" || !id) {
        throw new TypeError("WsGate.ack: id must be a non-empty string");
      }
      if (!this._send({ type: "ack", id: id })) {
        this._pendingAcks.add(id);
      }
    }

    /** Publish `data` on `module` to the backends; resolves with the ref when the node answers `accepted`. */
    publish(module, data) {
      const ref = "r" + ++this._refCounter + "-" + Date.now().toString(36);
      return new Promise((resolve, reject) => {
        if (!this._send({ type: "publish", module: module, data: data === undefined ? null : data, ref: ref })) {
          reject(new Error("WsGate: not connected"));
          return;
        }
        const timer = setTimeout(() => {
          this._pendingPublishes.delete(ref);
          reject(new Error("WsGate: publish " + ref + " not accepted within " + this.options.publishTimeoutMs + " ms"));
        }, this.options.publishTimeoutMs);
        this._pendingPublishes.set(ref, { resolve: resolve, reject: reject, timer: timer });
      });
    }

    _setState(state, info) {
      if (this.state === state && state !== STATES.RECONNECTING) {
        return;
      }
      this.state = state;
      this._call(this._onState, state, info || {});
    }

    _report(error) {
      if (typeof console !== "undefined" && console.error) {
        console.error("WsGate handler failed:", error);
      }
    }

    _tokenPromise() {
      if (typeof this._getToken === "function") {
        try {
          return Promise.resolve(this._getToken());
        } catch (e) {
          return Promise.reject(e);
        }
      }
      return Promise.resolve(this._token);
    }

    _open() {
      const generation = ++this._generation;
      this._setState(STATES.CONNECTING, { attempt: this.attempt });
      this._tokenPromise().then(
        (token) => {
          if (generation === this._generation && !this._stopped) this._dial(generation, token);
        },
        (error) => {
          if (generation === this._generation && !this._stopped) {
            this._scheduleReconnect({ reason: "token: " + describeError(error) });
          }
        }
      );
    }

    _dial(generation, token) {
      const url = new URL(this.url.href);
      if (token) url.searchParams.set("token", token);
      if (this.lastId) url.searchParams.set("since", this.lastId);
      else url.searchParams.delete("since");
      let ws;
      try {
        ws = new this._WebSocket(url.href);
      } catch (e) {
        this._scheduleReconnect({ reason: describeError(e) });
        return;
      }
      this._ws = ws;
      this.stats.connects++;
      // A handshake that hangs (a dead instance behind the gateway) counts as a failed attempt.
      this._connectTimer = setTimeout(() => {
        if (generation === this._generation && ws.readyState !== OPEN) {
          this._drop(ws, generation, { reason: "connect timeout" });
        }
      }, this.options.connectTimeoutMs);
      ws.onopen = () => {
        if (generation !== this._generation) return;
        clearTimeout(this._connectTimer);
        this._connectTimer = null;
        this._startPing(ws, generation);
      };
      ws.onmessage = (event) => {
        if (generation === this._generation) this._onFrame(event.data);
      };
      ws.onerror = noop; // a close event always follows and carries the information
      ws.onclose = (event) => {
        if (generation !== this._generation) return;
        this._ws = null;
        this._scheduleReconnect({ code: event.code, reason: event.reason, wasClean: event.wasClean });
      };
    }

    /** Give up on `ws` (dead or hung) and reconnect. */
    _drop(ws, generation, info) {
      if (generation !== this._generation) return;
      this._generation++;
      this._ws = null;
      try {
        ws.close(CLOSE_NORMAL, info.reason);
      } catch (e) {
        /* ignore */
      }
      this._scheduleReconnect(info);
    }

    _scheduleReconnect(info) {
      this._clearTimers();
      this._failPublishes(new Error("WsGate: connection lost before accepted"));
      if (this._stopped) {
        this._setState(STATES.CLOSED, info);
        return;
      }
      // A gap is resumed at once; anything else backs off.
      const delay = info.gap ? 0 : backoffDelayMs(this.attempt, this.options.backoffBaseMs, this.options.backoffMaxMs);
      this.attempt++;
      this.stats.reconnects++;
      info.delayMs = delay;
      info.attempt = this.attempt;
      this._setState(STATES.RECONNECTING, info);
      this._reconnectTimer = setTimeout(() => {
        this._reconnectTimer = null;
        if (!this._stopped) this._open();
      }, delay);
    }

    _clearTimers() {
      clearTimeout(this._reconnectTimer);
      clearTimeout(this._connectTimer);
      clearInterval(this._pingTimer);
      clearTimeout(this._pongTimer);
      this._reconnectTimer = this._connectTimer = this._pingTimer = this._pongTimer = null;
    }

    _startPing(ws, generation) {
      clearInterval(this._pingTimer);
      this._pingTimer = setInterval(() => {
        if (generation !== this._generation || this._pongTimer) return;
        if (!this._send({ type: "ping" })) return;
        this._pongTimer = setTimeout(() => {
          this._pongTimer = null;
          this._drop(ws, generation, { reason: "no pong within " + this.options.pongTimeoutMs + " ms" });
        }, this.options.pongTimeoutMs);
      }, this.options.pingIntervalMs);
    }

    _send(obj) {
      const ws = this._ws;
      if (!ws || ws.readyState !== OPEN || this.state !== STATES.OPEN) {
        return false;
      }
      ws.send(JSON.stringify(obj));
      return true;
    }

    _failPublishes(error) {
      for (const pending of this._pendingPublishes.values()) {
        clearTimeout(pending.timer);
        pending.reject(error);
      }
      this._pendingPublishes.clear();
    }

    _onFrame(raw) {
      let frame;
      try {
        frame = JSON.parse(raw);
      } catch (e) {
        this._report(new Error("WsGate: a frame that is not JSON: " + String(raw).slice(0, 100)));
        return;
      }
      if (!frame || typeof frame !== "object") return;
      switch (frame.type) {
        case "welcome":
          this._onWelcomeFrame(frame);
          break;
        case "message":
          this._onMessageFrame(frame);
          break;
        case "unread":
          this._setUnread(frame.unread);
          break;
        case "pong":
          clearTimeout(this._pongTimer);
          this._pongTimer = null;
          break;
        case "ping":
          this._send({ type: "pong" });
          break;
        case "accepted":
          this._onAccepted(frame);
          break;
        case "error":
          this._call(this._onError, frame);
          break;
        default:
        /* newer servers may send more types; ignore what we do not know */
      }
    }

    _onWelcomeFrame(frame) {
      this.node = frame.node || null;
      this.session = frame.session || null;
      this.user = frame.user || null;
      this.recovered = typeof frame.recovered === "boolean" ? frame.recovered : null;
      this._gaps.welcome(frame.last);
      this.attempt = 0;
      this.stats.welcomes++;
      this._setState(STATES.OPEN, { node: this.node, session: this.session, recovered: this.recovered });
      const acks = Array.from(this._pendingAcks);
      this._pendingAcks.clear();
      for (const id of acks) {
        this._send({ type: "ack", id: id });
      }
      this._call(this._onWelcome, frame);
      this._setUnread(frame.unread);
    }

    _onMessageFrame(frame) {
      const id = frame.id === undefined || frame.id === null ? null : String(frame.id);
      if (id !== null) {
        if (this._seen.has(id)) {
          this.stats.duplicates++;
          return;
        }
        if (this._gaps.check(id) === "gap") {
          // Not shown now: it comes again, in order, after the missed ones.
          this.stats.gaps++;
          this.lastId = String(this._gaps.point);
          const ws = this._ws;
          if (ws) this._drop(ws, this._generation, { reason: "gap before id " + id, gap: true });
          return;
        }
        this._seen.add(id);
        this.lastId = id;
      }
      this.stats.messages++;
      this._call(this._onMessage, frame);
      const handlers = [...(this._handlers.get(frame.module) || []), ...(this._handlers.get("*") || [])];
      for (const fn of handlers) {
        this._call(fn, frame);
      }
    }

    _setUnread(unread) {
      if (!unread || typeof unread !== "object") return;
      this.unread = Object.assign({}, unread);
      this._call(this._onUnread, this.unread);
    }

    _onAccepted(frame) {
      const pending = this._pendingPublishes.get(frame.ref);
      if (pending) {
        this._pendingPublishes.delete(frame.ref);
        clearTimeout(pending.timer);
        pending.resolve(frame.ref);
      }
    }

    _call(fn, ...args) {
      try {
        fn(...args);
      } catch (e) {
        this._report(e);
      }
    }
  }

  WsGate.STATES = STATES;
  WsGate.RecentIds = RecentIds;
  WsGate.GapTracker = GapTracker;
  WsGate.backoffDelayMs = backoffDelayMs;
  WsGate.version = "1.1.0";

  return WsGate;
});
