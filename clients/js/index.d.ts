// Types of the wsgate client (wsnode/static/wsgate.js; the wire protocol is CONTRACT section 4).

/** Connection states reported to `onState`. */
export type WsGateState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** `{"type":"message",...}`: a push from a backend. `id` is opaque: compare it for equality only. */
export interface WsGateMessage<T = unknown> {
  type: "message";
  id: string;
  module: string;
  event?: string | null;
  data: T;
  ts: number;
}

/** `{"type":"welcome",...}`: the first frame of every connection. */
export interface WsGateWelcome {
  type: "welcome";
  session: string;
  user: string;
  node: string;
  unread: Record<string, number>;
  /** Present when the client asked for `since`: whether everything since then could be sent. */
  recovered?: boolean;
}

/** `{"type":"error",...}`: the server refused a frame; the connection stays open. */
export interface WsGateErrorFrame {
  type: "error";
  code: string;
  reason: string;
}

/** What `onState` gets with each state change. */
export interface WsGateStateInfo {
  attempt?: number;
  delayMs?: number;
  code?: number;
  reason?: string;
  wasClean?: boolean;
  node?: string | null;
  session?: string | null;
  recovered?: boolean | null;
}

/** A WebSocket constructor (the browser's, or `ws` in Node). */
export type WebSocketConstructor = new (url: string) => {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  onclose: ((event: { code: number; reason: string; wasClean: boolean }) => void) | null;
};

export interface WsGateOptions {
  /** ws://, wss://, http://, https:// or a page-relative URL of the node's /websocket (through the gateway). */
  url: string;
  /** A fixed token; or give `getToken`, asked again before every connection attempt. */
  token?: string;
  getToken?: () => string | Promise<string>;
  /** The last message id already seen (kept from an earlier page); sent as `since`. */
  since?: string;
  onState?: (state: WsGateState, info: WsGateStateInfo) => void;
  onWelcome?: (frame: WsGateWelcome) => void;
  onMessage?: (message: WsGateMessage) => void;
  onUnread?: (unread: Record<string, number>) => void;
  onError?: (frame: WsGateErrorFrame) => void;
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  pingIntervalMs?: number;
  pongTimeoutMs?: number;
  connectTimeoutMs?: number;
  publishTimeoutMs?: number;
  /** How many recent message ids are remembered to drop duplicates (default 2000). */
  dedupSize?: number;
  /** Connect in the constructor (default true). */
  autoConnect?: boolean;
  /** The WebSocket implementation, when there is no global one (Node 20: the `ws` package). */
  WebSocket?: WebSocketConstructor;
}

export declare class WsGate {
  constructor(options: WsGateOptions);
  static readonly STATES: Readonly<{
    IDLE: "idle";
    CONNECTING: "connecting";
    OPEN: "open";
    RECONNECTING: "reconnecting";
    CLOSED: "closed";
  }>;
  static readonly version: string;
  /** The delay before reconnect attempt `attempt` (0-based): full jitter over a capped exponential. */
  static backoffDelayMs(attempt: number, baseMs: number, maxMs: number, random?: () => number): number;

  readonly url: URL;
  state: WsGateState;
  node: string | null;
  session: string | null;
  user: string | null;
  unread: Record<string, number>;
  lastId: string | null;
  recovered: boolean | null;
  attempt: number;
  stats: { connects: number; welcomes: number; messages: number; duplicates: number; reconnects: number };

  /** Handle messages of `module` ("*": every module); returns a function that removes the handler. */
  on<T = unknown>(module: string, handler: (message: WsGateMessage<T>) => void): () => void;
  off(module: string, handler: (message: WsGateMessage<any>) => void): void;
  connect(): void;
  /** Close for good (no reconnect); pending publishes are rejected. */
  close(): void;
  /** Mark a message read (sent now, or after the next welcome). */
  ack(id: string): void;
  /** Hand `data` to the backends on `module`; resolves with the ref once the node accepted it. */
  publish(module: string, data?: unknown): Promise<string>;
}

export declare const STATES: typeof WsGate.STATES;
export default WsGate;
