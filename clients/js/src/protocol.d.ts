// The study chat wire contract (protocol v2) as TypeScript types: every event,
// payload, ack and error code. `ClientToServerEvents` and `ServerToClientEvents`
// have the shape socket.io-client's `Socket<ServerToClientEvents, ClientToServerEvents>`
// expects, so a plain socket.io-client socket can be typed with them too.

/** A 24-hex ObjectId string; answers always carry it in lowercase. */
export type Id = string;
/** ISO 8601, UTC, millisecond precision, `Z` suffix. */
export type Timestamp = string;

export type ErrorCode =
  | "invalid_payload"
  | "unauthorized"
  | "forbidden"
  | "not_member"
  | "group_not_found"
  | "message_not_found"
  | "attachment_not_found"
  | "rate_limited"
  | "storage_unavailable"
  | "internal";

/** Codes of a refused handshake (`connect_error`'s `data.code`). */
export type ConnectErrorCode = "unauthorized" | "too_many_connections";

export interface ErrorBody {
  code: ErrorCode;
  message: string;
  /** `invalid_payload`: field name → the problems found with it. */
  details?: Record<string, string[] | string>;
  /** `rate_limited`: wait this long before trying again. */
  retry_after_ms?: number;
}

export interface ErrorAck {
  ok: false;
  error: ErrorBody;
}

/** `connect_error`'s `data` when the server refuses the handshake. */
export interface ConnectErrorData {
  code: ConnectErrorCode;
  message: string;
}

/** What the handshake sends: `io(url, {auth: {token}})`. */
export interface HandshakeAuth {
  token: string;
}

export type MessageKind = "message" | "question" | "system";

export interface ReplyQuote {
  id: Id;
  seq: number;
  sender_id: Id | null;
  sender_name: string;
  /** The first 140 code points of the replied message when the reply was sent; "" when deleted. */
  excerpt: string;
  deleted: boolean;
}

export interface Reaction {
  emoji: string;
  count: number;
  /** The first 20 who reacted. */
  user_ids: Id[];
}

export interface Pin {
  by: Id;
  at: Timestamp;
}

export interface Attachment {
  id: Id;
  name: string;
  size: number;
  content_type: string;
  width?: number;
  height?: number;
}

export interface Message {
  type: "message";
  kind: MessageKind;
  id: Id;
  /** Per group, from 1, contiguous. */
  seq: number;
  /** The group's revision of this message's latest change (0: not revised since before revisions). */
  rev: number;
  group_id: Id;
  /** null for the platform's messages (kind "system") and for migrated ones with no usable id. */
  sender_id: Id | null;
  sender: string;
  sender_name: string;
  content: string;
  timestamp: Timestamp;
  client_msg_id: string | null;
  edited_at: Timestamp | null;
  deleted: boolean;
  deleted_by: Id | null;
  mentions: Id[];
  reply_to: ReplyQuote | null;
  reactions: Reaction[];
  pinned: Pin | null;
  answer_id: Id | null;
  attachments: Attachment[];
}

export interface GroupSummary {
  id: Id;
  name: string;
  latest_seq: number;
  latest_rev: number;
  unread_count: number;
  mention_count: number;
  open_questions: number;
}

// ---------------------------------------------------------------- payloads

/** `list_groups` takes `{}`, `null` or nothing. */
export type NoPayload = Record<string, never> | null | undefined;

export interface JoinGroupPayload {
  group_id: Id;
  /** Messages after this seq, oldest first (page on with get_history {after_seq}). */
  since_seq?: number | null;
  /** Changes after this revision (the way to catch up; not with since_seq). */
  since_rev?: number | null;
  /** 1..100, default 50. */
  limit?: number | null;
}

export interface GroupPayload {
  group_id: Id;
}

export interface SendMessagePayload {
  group_id: Id;
  /** Not blank unless attachments are given; at most 4,000 code points. */
  content: string;
  /** 1..64 printable characters; the same id again is answered `duplicate: true`. */
  client_msg_id?: string | null;
  /** Older clients sent their own id; it must be the caller's. */
  sender_id?: Id | null;
  reply_to?: Id | null;
  /** Up to 50 distinct members of the group. */
  mentions?: Id[] | null;
  kind?: "message" | "question" | null;
  /** Up to 10 ids of the caller's unattached uploads to this group. */
  attachments?: Id[] | null;
}

export type HistoryFilter = "questions" | "unanswered" | "pinned" | "mentions";

export interface GetHistoryPayload {
  group_id: Id;
  before_seq?: number | null;
  after_seq?: number | null;
  limit?: number | null;
  filter?: HistoryFilter | null;
}

export interface GetChangesPayload {
  group_id: Id;
  after_rev: number;
  limit?: number | null;
}

export interface SearchPayload {
  /** 1..200 code points, 1..10 words; the last word matches as a prefix. */
  query: string;
  group_id?: Id | null;
  limit?: number | null;
  before_seq?: number | null;
}

export interface TypingPayload {
  group_id: Id;
  is_typing: boolean;
}

export interface MarkReadPayload {
  group_id: Id;
  seq: number;
}

export interface EditMessagePayload {
  group_id: Id;
  message_id: Id;
  content: string;
}

export interface MessageRefPayload {
  group_id: Id;
  message_id: Id;
}

export interface ReactPayload {
  group_id: Id;
  message_id: Id;
  /** One RGI emoji grapheme cluster. */
  emoji: string;
  on: boolean;
}

export interface PinPayload {
  group_id: Id;
  message_id: Id;
  pinned: boolean;
}

export interface AcceptAnswerPayload {
  group_id: Id;
  question_id: Id;
  /** null takes an acceptance back. */
  answer_id: Id | null;
}

export interface RefreshTokenPayload {
  token: string;
}

// ---------------------------------------------------------------- acks

export interface ListGroupsOk {
  ok: true;
  groups: GroupSummary[];
}

interface JoinCommon {
  ok: true;
  group: { id: Id; name: string };
  has_more: boolean;
  latest_seq: number;
  latest_rev: number;
  last_read_seq: number;
  unread_count: number;
  mention_count: number;
  open_questions: number;
  /** User ids with a connection in the room, on any node. */
  online: Id[];
}

/** `join_group` without `since_rev`. */
export interface JoinOk extends JoinCommon {
  messages: Message[];
}

/** `join_group` with `since_rev`. */
export interface JoinChangesOk extends JoinCommon {
  changes: Message[];
}

export interface OkOnly {
  ok: true;
}

export interface SendOk {
  ok: true;
  message: Message;
  /** The same client_msg_id was stored before: this is that message, nothing was broadcast. */
  duplicate: boolean;
}

export interface HistoryOk {
  ok: true;
  messages: Message[];
  has_more: boolean;
}

export interface ChangesOk {
  ok: true;
  changes: Message[];
  has_more: boolean;
  latest_rev: number;
}

export interface SearchOk {
  ok: true;
  /** Newest first. */
  results: Message[];
  has_more: boolean;
}

export interface MarkReadOk {
  ok: true;
  last_read_seq: number;
  unread_count: number;
  mention_count: number;
}

export interface MessageOk {
  ok: true;
  message: Message;
}

export interface RefreshOk {
  ok: true;
  expires_at: Timestamp;
}

export type Ack<T> = T | ErrorAck;

/** Each client → server event: its payload and its success ack. */
export interface Requests {
  list_groups: [NoPayload, ListGroupsOk];
  join_group: [JoinGroupPayload, JoinOk | JoinChangesOk];
  leave_group: [GroupPayload, OkOnly];
  send_message: [SendMessagePayload, SendOk];
  get_history: [GetHistoryPayload, HistoryOk];
  get_changes: [GetChangesPayload, ChangesOk];
  search_messages: [SearchPayload, SearchOk];
  typing: [TypingPayload, OkOnly];
  mark_read: [MarkReadPayload, MarkReadOk];
  edit_message: [EditMessagePayload, MessageOk];
  delete_message: [MessageRefPayload, MessageOk];
  react: [ReactPayload, MessageOk];
  pin_message: [PinPayload, MessageOk];
  accept_answer: [AcceptAnswerPayload, MessageOk];
  refresh_token: [RefreshTokenPayload, RefreshOk];
}

export type RequestName = keyof Requests;
export type PayloadOf<E extends RequestName> = Requests[E][0];
/** The success ack; for `join_group` it depends on whether `since_rev` was given. */
export type AckOf<E extends RequestName, P = PayloadOf<E>> = E extends "join_group"
  ? P extends { since_rev: number } ? JoinChangesOk : JoinOk
  : Requests[E][1];

/** Client → server, in the shape socket.io-client's typed `emit` expects. */
export type ClientToServerEvents = {
  [E in RequestName]: (payload: PayloadOf<E>, ack: (answer: Ack<Requests[E][1]>) => void) => void;
};

export interface TypingEvent {
  group_id: Id;
  user_id: Id;
  name: string;
  is_typing: boolean;
}

export interface PresenceEvent {
  group_id: Id;
  user_id: Id;
  name: string;
  online: boolean;
}

export interface SessionExpiringEvent {
  expires_at: Timestamp;
}

export interface MembershipRevokedEvent {
  group_id: Id;
}

export interface GroupAddedEvent {
  group: GroupSummary;
}

/** Server → client. */
export interface ServerToClientEvents {
  message: (message: Message) => void;
  message_updated: (message: Message) => void;
  message_deleted: (message: Message) => void;
  typing: (event: TypingEvent) => void;
  presence: (event: PresenceEvent) => void;
  session_expiring: (event: SessionExpiringEvent) => void;
  membership_revoked: (event: MembershipRevokedEvent) => void;
  group_added: (event: GroupAddedEvent) => void;
}

export type ServerEventName = keyof ServerToClientEvents;
export type ServerEventPayload<E extends ServerEventName> = Parameters<ServerToClientEvents[E]>[0];
