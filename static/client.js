// The protocol side of the page: one Socket.IO connection, acks as promises,
// and the outbox that makes every send arrive exactly once.
//
// `io` is the global from /static/vendor/socket.io.min.js (socket.io-client 4).

/** How long an ack may take before the request counts as lost (per connection: `ackTimeoutMs`). */
export const ACK_TIMEOUT_MS = 8000;
/** Pause before resending after `storage_unavailable` (`rate_limited` says how long itself). */
const RESEND_DELAY_MS = 1000;
/** Answers that mean "maybe not stored": resending with the same client_msg_id is safe. */
const RETRYABLE = new Set(["timeout", "storage_unavailable", "rate_limited"]);

/** A refused or unanswered request: `code` is the protocol's error code, or "timeout" / "disconnected". */
export class RequestError extends Error {
  constructor({ code, message, details, retry_after_ms: retryAfterMs }) {
    super(message || code);
    this.code = code;
    this.details = details;
    this.retryAfterMs = retryAfterMs;
  }

  /** Readable text: the server's message, plus which field was wrong for `invalid_payload`. */
  describe() {
    const fields = Object.entries(this.details || {}).map(
      ([field, problems]) => `${field}: ${[].concat(problems).join(" ")}`,
    );
    return fields.length ? `${this.message} (${fields.join("; ")})` : this.message;
  }
}

/** A Socket.IO connection signed in with a token; `handlers` receive its events. */
export class Connection {
  constructor(token, handlers) {
    this.token = token;
    this.ackTimeoutMs = ACK_TIMEOUT_MS;
    // The auth callback runs at every (re)connection, so a refreshed token is used.
    this.socket = io({ auth: (send) => send({ token: this.token }) });
    const socket = this.socket;
    socket.on("connect", () => {
      handlers.state("connected");
      handlers.connected();
    });
    socket.on("disconnect", (reason) => {
      // The client reconnects by itself unless we, or the server, closed the connection.
      handlers.state(socket.active ? "reconnecting" : "disconnected", reason);
      // The server ends a session when its token expires (a Socket.IO disconnect,
      // so the client does not retry with the dead token).
      if (reason === "io server disconnect") handlers.ended();
    });
    // The token runs out soon (`expires_at`, ISO 8601): refresh it, or the session ends then.
    socket.on("session_expiring", (payload) => handlers.expiring(Date.parse(payload.expires_at)));
    socket.on("connect_error", (err) => {
      if (socket.active) {
        handlers.state("reconnecting", err.message);
      } else {
        // The server refused the handshake: err.data is {code, message}.
        handlers.state("disconnected", err.message);
        handlers.refused(new RequestError(err.data || { code: "unauthorized", message: err.message }));
      }
    });
    for (const event of ["message", "message_updated", "message_deleted", "typing", "presence",
      "membership_revoked", "group_added"]) {
      socket.on(event, (payload) => handlers.event(event, payload));
    }
  }

  get connected() {
    return this.socket.connected;
  }

  /** Emit `event` and resolve with its `{ok: true}` ack; reject with a RequestError otherwise. */
  request(event, payload = {}, timeoutMs = this.ackTimeoutMs) {
    return new Promise((resolve, reject) => {
      if (!this.socket.connected) {
        // Socket.IO would buffer the emit until the next connection; the callers
        // (and the outbox) decide themselves what to redo after a reconnect.
        reject(new RequestError({ code: "disconnected", message: "Not connected to the server." }));
        return;
      }
      this.socket.timeout(timeoutMs).emit(event, payload, (err, ack) => {
        if (err) {
          const code = this.socket.connected ? "timeout" : "disconnected";
          reject(new RequestError({ code, message: `No answer from the server to ${event}.` }));
        } else if (ack && ack.ok === true) {
          resolve(ack);
        } else {
          reject(new RequestError((ack && ack.error) || { code: "internal", message: "Malformed answer." }));
        }
      });
    });
  }

  /** Move this session's end to a new token's `exp` (same user); reconnects use it too. */
  async refresh(token) {
    const ack = await this.request("refresh_token", { token });
    this.token = token;
    return Date.parse(ack.expires_at);
  }

  /** Fire and forget (typing, leave_group): errors are not worth showing. */
  notify(event, payload) {
    this.request(event, payload).catch(() => {});
  }

  connect() {
    this.socket.connect();
  }

  close() {
    this.socket.disconnect();
  }
}

/** A client_msg_id: random, printable, well under the 64-character limit. */
export function newClientMsgId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12)); // works outside secure contexts too
  return "c-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Sends that are not acked yet. Each keeps its client_msg_id for life, so a
 * resend after a timeout or a reconnect is answered with the stored message
 * (`duplicate: true`) instead of creating a second one.
 */
export class Outbox {
  constructor(connection, { acked, failed, retrying }) {
    this.connection = connection;
    this.callbacks = { acked, failed, retrying };
    this.entries = new Map(); // client_msg_id -> entry, in creation order
  }

  /** `extra`: send_message's other fields (reply_to, kind, mentions), sent with every try. */
  add(groupId, content, extra = {}) {
    const entry = { id: newClientMsgId(), groupId, content, extra, attempt: 0, timer: null, error: null };
    this.entries.set(entry.id, entry);
    return entry;
  }

  forGroup(groupId) {
    return [...this.entries.values()].filter((e) => e.groupId === groupId);
  }

  send(entry) {
    clearTimeout(entry.timer);
    if (!this.connection.connected || entry.error) return; // flush() sends it on reconnect
    const attempt = ++entry.attempt;
    if (attempt > 1) this.callbacks.retrying(entry);
    const payload = { ...entry.extra, group_id: entry.groupId, content: entry.content, client_msg_id: entry.id };
    this.connection.request("send_message", payload).then(
      (ack) => {
        this.settle(ack.message);
        this.callbacks.acked(ack.message);
      },
      (err) => {
        if (this.entries.get(entry.id) !== entry || entry.attempt !== attempt) return;
        if (err.code === "disconnected") return; // flush() resends after the reconnect
        if (RETRYABLE.has(err.code)) {
          // After a timeout the waiting is done: resend at once.
          const delay = err.code === "timeout" ? 0 : err.retryAfterMs ?? RESEND_DELAY_MS;
          entry.timer = setTimeout(() => this.send(entry), delay);
        } else {
          entry.error = err; // kept and shown until dismissed: nothing is silently lost
          this.callbacks.failed(entry, err);
        }
      },
    );
  }

  /** One of our sends is stored (its ack, or its `message` event, arrived): stop resending it. */
  settle(message) {
    const entry = this.entries.get(message.client_msg_id);
    if (entry && entry.groupId === message.group_id) {
      clearTimeout(entry.timer);
      this.entries.delete(entry.id);
    }
  }

  /** After a (re)connect: resend everything still waiting, oldest first. */
  flush() {
    for (const entry of this.entries.values()) this.send(entry);
  }

  dismiss(id) {
    const entry = this.entries.get(id);
    if (entry) clearTimeout(entry.timer);
    this.entries.delete(id);
  }

  clear() {
    for (const entry of this.entries.values()) clearTimeout(entry.timer);
    this.entries.clear();
  }
}
