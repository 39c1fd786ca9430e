// The API of studychat-client. Wire types: ./protocol.d.ts.

import type { ManagerOptions, Socket, SocketOptions } from "socket.io-client";
import type {
  AckOf, ClientToServerEvents, ErrorBody, ErrorCode, GroupAddedEvent, JoinChangesOk, JoinOk, MembershipRevokedEvent,
  Message, PayloadOf, PresenceEvent, RequestName, SendMessagePayload, ServerEventName, ServerToClientEvents,
  TypingEvent,
} from "./protocol.js";

export type * from "./protocol.js";

/** The protocol's error codes, and the client's own: no ack in time, not connected, a send dismissed. */
export type ClientErrorCode = ErrorCode | "too_many_connections" | "timeout" | "disconnected" | "cancelled";

export declare const RETRYABLE_CODES: ReadonlySet<ClientErrorCode>;
export declare const ACK_TIMEOUT_MS: number;
export declare const PAGE_SIZE: number;
export declare const CATCH_UP_PAGE: number;
export declare const SERVER_EVENTS: readonly ServerEventName[];

/** A refused or unanswered request. */
export declare class ChatError extends Error {
  constructor(body?: Partial<Omit<ErrorBody, "code">> & { code?: ClientErrorCode });
  readonly code: ClientErrorCode;
  /** `invalid_payload`: field name → problems. */
  readonly details: Record<string, string[] | string> | undefined;
  /** `rate_limited`: how long to wait before the same request may succeed. */
  readonly retryAfterMs: number | undefined;
  /** The same request may simply be made again (timeout, disconnected, storage_unavailable, rate_limited). */
  readonly retryable: boolean;
  /** The message, plus the fields an `invalid_payload` names. */
  describe(): string;
  static fromAck(ack: unknown): ChatError;
}

type Listener<A extends unknown[]> = (...args: A) => void;

export declare class Emitter<Events extends { [K in keyof Events]: unknown[] }> {
  /** Returns a function that removes the listener. */
  on<K extends keyof Events & string>(event: K, listener: Listener<Events[K]>): () => void;
  off<K extends keyof Events & string>(event: K, listener: Listener<Events[K]>): void;
  /** The next `event`'s first argument (rejects after `timeoutMs` when given). */
  once<K extends keyof Events & string>(event: K, timeoutMs?: number): Promise<Events[K][0]>;
  emit<K extends keyof Events & string>(event: K, ...args: Events[K]): void;
}

export type ConnectionState = "connected" | "reconnecting" | "disconnected";
/** Gives a fresh token: at the first connect without one, before the current one runs out, and after a refusal. */
export type TokenProvider = () => Promise<string> | string;

export interface ConnectionOptions {
  /** The server's origin; leave it out in a page served by the server itself. */
  url?: string;
  token?: string | null;
  tokenProvider?: TokenProvider | null;
  /** Default ACK_TIMEOUT_MS (8 s). */
  ackTimeoutMs?: number;
  /** Passed to socket.io-client's `io()` (transports, reconnection delays, extraHeaders, ...). */
  socketOptions?: Partial<ManagerOptions & SocketOptions>;
}

export type ConnectionEvents = {
  state: [state: ConnectionState, reason: string];
  connect: [];
  /** The handshake was refused for good (no token provider, or it failed). */
  refused: [error: ChatError];
  /** The server will end the session at this time (ms since the epoch) unless the token is refreshed. */
  expiring: [expiresAt: number];
  /** A refreshed token moved the session's end here (ms). */
  refreshed: [expiresAt: number];
  /** A try to refresh failed (the provider or refresh_token); it is tried again until `expiresAt`. */
  refresh_failed: [error: ChatError, expiresAt: number];
  /** The server ended the session (its token ran out); with a token provider it reconnects. */
  ended: [info: { reconnecting: boolean }];
  /** close() was called. */
  closed: [];
} & { [E in Exclude<ServerEventName, "session_expiring">]: Parameters<ServerToClientEvents[E]> };

export interface RequestOptions {
  timeoutMs?: number;
  /** Stop waiting when it aborts: the promise rejects with a `cancelled` ChatError (a request
   * already sent may still take effect on the server). */
  signal?: AbortSignal;
}

export declare class ChatConnection extends Emitter<ConnectionEvents> {
  constructor(options?: ConnectionOptions);
  /** The underlying socket.io-client socket, typed with the protocol's events. */
  readonly socket: Socket<ServerToClientEvents, ClientToServerEvents>;
  token: string | null;
  tokenProvider: TokenProvider | null;
  ackTimeoutMs: number;
  readonly expiresAt: number | null;
  readonly connected: boolean;
  readonly id: string | undefined;
  /** Resolves once connected; rejects with the ChatError of a refusal for good (`cancelled` when closed first). */
  connect(): Promise<void>;
  close(): void;
  /** Resolves with the success ack; rejects with ChatError. */
  request<E extends RequestName, P extends PayloadOf<E>>(event: E, payload?: P, options?: RequestOptions): Promise<AckOf<E, P>>;
  /** `request`, repeated after rate_limited (honouring retry_after_ms), storage_unavailable and timeout. */
  requestRetrying<E extends RequestName, P extends PayloadOf<E>>(
    event: E, payload?: P, options?: RequestOptions & { attempts?: number }): Promise<AckOf<E, P>>;
  /** Fire and forget. */
  notify<E extends RequestName>(event: E, payload: PayloadOf<E>): void;
  /** `refresh_token`: the session now ends at the new token's exp (ms returned). */
  refresh(token: string): Promise<number>;
}

/** Everything of send_message but group_id, content and client_msg_id. */
export type SendExtra = Omit<SendMessagePayload, "group_id" | "content" | "client_msg_id">;

export interface OutboxEntry {
  /** The client_msg_id, kept for every try. */
  readonly id: string;
  readonly groupId: string;
  readonly content: string;
  readonly extra: SendExtra;
  /** Tries so far. */
  readonly attempt: number;
  /** Set when the server refused the send for good; kept until dismissed. */
  readonly error: ChatError | null;
  /** The stored message; rejects with the ChatError that refused it. */
  readonly stored: Promise<Message>;
}

export type OutboxEvents = {
  acked: [message: Message, entry: OutboxEntry];
  retrying: [entry: OutboxEntry];
  failed: [entry: OutboxEntry, error: ChatError];
  /** A send was added, settled, refused for good or dismissed: save `snapshot()` now. */
  changed: [];
};

/** One send of `Outbox.snapshot()`: plain data, JSON and back. */
export interface OutboxItem {
  id: string;
  groupId: string;
  content: string;
  extra: SendExtra;
  error: { code: string; message: string; details: unknown } | null;
}

/** Sends stored exactly once each, one group's in the order they were made. */
export declare class Outbox extends Emitter<OutboxEvents> {
  constructor(connection: ChatConnection);
  add(groupId: string, content: string, extra?: SendExtra): OutboxEntry;
  forGroup(groupId: string): OutboxEntry[];
  readonly waiting: OutboxEntry[];
  flush(): void;
  /** A stored message of ours arrived: true when it settled a waiting send. */
  settle(message: Message): boolean;
  dismiss(id: string): void;
  clear(): void;
  /** The sends not stored yet (failed ones included), oldest first. */
  snapshot(): OutboxItem[];
  /** Take back a snapshot's sends (their client_msg_ids kept) ahead of newer ones; returns them. */
  restore(items: readonly OutboxItem[] | unknown): OutboxEntry[];
}

export declare function newClientMsgId(): string;
export declare function supersedes(incoming: Message, current: Message): boolean;
export declare function backoff(attempt: number, baseMs?: number, maxMs?: number): number;

/** One group's messages, exact by seq and rev. Subclass it and override `changed` to render. */
export declare class GroupTimeline {
  constructor(groupId: string);
  readonly groupId: string;
  readonly bySeq: Map<number, Message>;
  readonly byId: Map<string, Message>;
  /** Held seqs, ascending. */
  readonly seqs: number[];
  /** Every seq from the oldest held up to this one is held. */
  readonly top: number;
  /** Every change up to this revision is applied. */
  readonly rev: number;
  /** The highest revision seen. */
  readonly revKnown: number;
  readonly hasGap: boolean;
  hasOlder: boolean;
  catchingUp: boolean;
  readonly oldest: number | null;
  readonly newest: number;
  messages(): Message[];
  /** Where `seq` is, or would go, in `seqs`. */
  position(seq: number): number;
  applyUpTo(rev: number): void;
  merge(messages: readonly Message[], options?: { onlyHeld?: boolean }): number;
  /** Called for each message added (previous null) or replaced by a later state. */
  changed(message: Message, previous: Message | null): void;
  reset(): void;
}

export interface SessionOptions<T extends GroupTimeline = GroupTimeline> extends ConnectionOptions {
  /** An existing connection instead of the options above. */
  connection?: ChatConnection;
  /** Makes the timeline of a group being joined (a subclass that renders, say). */
  createTimeline?: (groupId: string) => T;
}

export interface EventContext<T extends GroupTimeline> {
  timeline: T | null;
  /** Messages new to the timeline. */
  added: number;
}

export type SessionEvents<T extends GroupTimeline> = {
  /** A connection is up (again); the joined groups' catch-up follows. */
  connected: [];
  messages: [batch: { timeline: T; messages: readonly Message[]; added: number }];
  event: { [E in Exclude<ServerEventName, "session_expiring">]: [name: E, payload: Parameters<ServerToClientEvents[E]>[0], context: EventContext<T>] }[Exclude<ServerEventName, "session_expiring">];
  /** A joined group was joined again after a reconnect (`online` and counts are fresh). */
  rejoined: [timeline: T, ack: JoinOk | JoinChangesOk];
  /** The server's history is not the one held (a fresh store): the timeline starts over. */
  reset: [timeline: T];
  caught_up: [timeline: T];
  /** A timeline closed: `membership_revoked` came, or a rejoin after a reconnect was refused. */
  left: [timeline: T, reason: "membership_revoked" | "not_member" | "group_not_found"];
  error: [error: ChatError, context: { timeline: T; during: "catch-up" | "gap fill" }];
  state: ConnectionEvents["state"];
  refused: ConnectionEvents["refused"];
  expiring: ConnectionEvents["expiring"];
  refreshed: ConnectionEvents["refreshed"];
  refresh_failed: ConnectionEvents["refresh_failed"];
  ended: ConnectionEvents["ended"];
} & OutboxEvents;

export type { GroupAddedEvent, MembershipRevokedEvent, PresenceEvent, TypingEvent };

/** A signed-in session: connection, outbox, and exact timelines of the joined groups. */
export declare class ChatSession<T extends GroupTimeline = GroupTimeline> extends Emitter<SessionEvents<T>> {
  constructor(options?: SessionOptions<T>);
  readonly connection: ChatConnection;
  readonly outbox: Outbox;
  readonly timelines: Map<string, T>;
  readonly connected: boolean;
  connect(): Promise<void>;
  close(): void;
  request<E extends RequestName, P extends PayloadOf<E>>(event: E, payload?: P, options?: RequestOptions): Promise<AckOf<E, P>>;
  timeline(groupId: string): T | undefined;

  /** Join a group: its latest page (ack null when it was joined already; a second call during the
   * join gets the same answer; rejects with `cancelled` when left first). */
  open(groupId: string, options?: { limit?: number }): Promise<{ timeline: T; ack: JoinOk | null }>;
  leave(groupId: string): T | undefined;
  loadOlder(timeline: T, options?: { limit?: number; signal?: AbortSignal }): Promise<AckOf<"get_history">>;
  send(groupId: string, content: string, extra?: SendExtra): OutboxEntry;
  merge(timeline: T, messages: readonly Message[], options?: { onlyHeld?: boolean }): number;
  catchUp(timeline: T): Promise<void>;
  fillGap(timeline: T): void;
}
