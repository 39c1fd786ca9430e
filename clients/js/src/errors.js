// Errors of the protocol, as the client sees them.

/** Codes after which resending the same request is safe and may succeed. */
export const RETRYABLE_CODES = new Set(["timeout", "storage_unavailable", "rate_limited"]);

/**
 * A refused or unanswered request. `code` is one of the protocol's error codes
 * (`invalid_payload`, `not_member`, `rate_limited`, ...) or one of the client's
 * own: `timeout` (no ack in time), `disconnected` (not connected, or the
 * connection dropped before the ack) and `cancelled` (the caller stopped
 * waiting: an AbortSignal, a dismissed send, a join left before its answer).
 */
export class ChatError extends Error {
  constructor({ code, message, details, retry_after_ms: retryAfterMs } = {}) {
    super(message || code || "internal");
    this.name = "ChatError";
    this.code = code || "internal";
    this.details = details;
    this.retryAfterMs = retryAfterMs;
  }

  /** True when the same request (a send with the same client_msg_id) may simply be made again. */
  get retryable() {
    return RETRYABLE_CODES.has(this.code) || this.code === "disconnected";
  }

  /** Readable text: the server's message, plus which field was wrong for `invalid_payload`. */
  describe() {
    const fields = Object.entries(this.details || {}).map(
      ([field, problems]) => `${field}: ${[].concat(problems).join(" ")}`,
    );
    return fields.length ? `${this.message} (${fields.join("; ")})` : this.message;
  }

  /** The error of an ack (`{ok: false, error}`), or of an answer that is not an ack at all. */
  static fromAck(ack) {
    if (ack && typeof ack === "object" && ack.error && typeof ack.error === "object") return new ChatError(ack.error);
    return new ChatError({ code: "internal", message: "Malformed answer from the server." });
  }
}
