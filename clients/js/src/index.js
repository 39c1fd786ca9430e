// studychat-client: the study chat protocol (v2) over socket.io-client.
// Types: index.d.ts (API) and protocol.d.ts (events, payloads, acks, errors).

export { ChatError, RETRYABLE_CODES } from "./errors.js";
export { Emitter } from "./emitter.js";
export { ACK_TIMEOUT_MS, ChatConnection, SERVER_EVENTS, backoff } from "./connection.js";
export { Outbox, newClientMsgId } from "./outbox.js";
export { GroupTimeline, supersedes } from "./timeline.js";
export { CATCH_UP_PAGE, ChatSession, PAGE_SIZE } from "./session.js";
