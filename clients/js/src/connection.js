// One Socket.IO connection, signed in with a token: acks as promises, typed
// errors, and the token's life (refresh before it runs out, a fresh token when
// the server refuses an old one at a reconnect).

import { io } from "socket.io-client";
import { ChatError, RETRYABLE_CODES } from "./errors.js";
import { Emitter, sleep } from "./emitter.js";

/** How long an ack may take before the request counts as lost. */
export const ACK_TIMEOUT_MS = 8000;
/** Events the server sends (v2). */
export const SERVER_EVENTS = Object.freeze([
  "message", "message_updated", "message_deleted", "typing", "presence",
  "session_expiring", "membership_revoked", "group_added",
]);
/** How long before a token's end the server warns (`session_expiring`). */
const WARNING_MS = 60_000;
/** Refused handshakes in a row after which a token provider is not asked again. */
const MAX_TOKEN_RENEWALS = 5;

/** The error of a wait given up through an AbortSignal. */
function cancelled(event) {
  return new ChatError({ code: "cancelled", message: `Stopped waiting for ${event}.` });
}

/** `sleep(ms)`, cut short by `signal` (then rejecting with a cancelled ChatError). */
function pause(ms, signal, event) {
  if (!signal) return sleep(ms);
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(cancelled(event));
      return;
    }
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", abort);
      resolve();
    }, ms);
    const abort = () => {
      clearTimeout(timer);
      reject(cancelled(event));
    };
    signal.addEventListener("abort", abort, { once: true });
  });
}

/** Waits between tries: 0.5 s doubling to 30 s, with jitter so a fleet does not retry in step. */
export function backoff(attempt, baseMs = 500, maxMs = 30_000) {
  const ms = Math.min(maxMs, baseMs * 2 ** attempt);
  return ms / 2 + Math.random() * (ms / 2);
}

/**
 * Events (see index.d.ts): "state" (`"connected" | "reconnecting" | "disconnected"`, reason),
 * "connect", "refused" (ChatError), "expiring" (ms), "refreshed" (ms), "refresh_failed" (ChatError, ms),
 * "ended" ({reconnecting}),
 * and every server event by its name.
 */
export class ChatConnection extends Emitter {
  constructor({
    url, token = null, tokenProvider = null, ackTimeoutMs = ACK_TIMEOUT_MS, socketOptions = {},
  } = {}) {
    super();
    this.token = token;
    this.tokenProvider = tokenProvider;
    this.ackTimeoutMs = ackTimeoutMs;
    this.expiresAt = null; // when the server ends this session, from session_expiring (ms)
    this.closed = true;
    this._renewals = 0; // handshakes refused in a row
    this._refreshTimer = null;
    const options = {
      ...socketOptions,
      autoConnect: false,
      // Runs at every (re)connection, so a refreshed token is the one used.
      auth: (send) => send({ token: this.token }),
    };
    this.socket = url === undefined ? io(options) : io(url, options);
    this._wire();
  }

  _wire() {
    const socket = this.socket;
    socket.on("connect", () => {
      this._renewals = 0;
      this.expiresAt = null;
      this.emit("state", "connected", "");
      this.emit("connect");
    });
    socket.on("disconnect", (reason) => {
      if (this.closed) {
        this.emit("state", "disconnected", reason);
        return;
      }
      if (reason === "io server disconnect") {
        // The server ended the session (its token ran out): Socket.IO does not
        // retry by itself. With a token provider, go on with a fresh token.
        const reconnecting = Boolean(this.tokenProvider);
        this.emit("state", reconnecting ? "reconnecting" : "disconnected", reason);
        this.emit("ended", { reconnecting });
        if (reconnecting) this._reconnectWithFreshToken(reason);
        return;
      }
      this.emit("state", socket.active ? "reconnecting" : "disconnected", reason);
    });
    socket.on("connect_error", (err) => {
      if (socket.active) {
        this.emit("state", "reconnecting", err.message);
        return;
      }
      // The server refused the handshake: err.data is {code, message}.
      const error = new ChatError(err.data && typeof err.data === "object" ? err.data
        : { code: "unauthorized", message: err.message });
      if (error.code === "unauthorized" && this.tokenProvider && this._renewals < MAX_TOKEN_RENEWALS && !this.closed) {
        this._renewals += 1;
        this._reconnectWithFreshToken(error.message);
        return;
      }
      this.emit("state", "disconnected", error.message);
      this.emit("refused", error);
    });
    socket.on("session_expiring", (payload) => {
      const expiresAt = Date.parse(payload?.expires_at);
      if (Number.isNaN(expiresAt)) return;
      this.expiresAt = expiresAt;
      this.emit("expiring", expiresAt);
      if (this.tokenProvider) this._refreshBefore(expiresAt);
    });
    for (const event of SERVER_EVENTS) {
      if (event !== "session_expiring") socket.on(event, (payload) => this.emit(event, payload));
    }
  }

  get connected() {
    return this.socket.connected;
  }

  /** The Socket.IO session id, while connected. */
  get id() {
    return this.socket.id;
  }

  /**
   * Connect (again); without a token yet, the token provider gives one first.
   * Resolves once connected; rejects with the ChatError of a refusal for good
   * (also reported as "refused"), or `cancelled` when closed meanwhile.
   */
  connect() {
    this.closed = false;
    const connected = new Promise((resolve, reject) => {
      if (this.socket.connected) {
        resolve();
        return;
      }
      const stops = [
        this.on("connect", () => finish(resolve)),
        this.on("refused", (err) => finish(() => reject(err))),
        this.on("closed", () => finish(() => reject(new ChatError({ code: "cancelled", message: "Closed." })))),
      ];
      const finish = (then) => {
        for (const stop of stops) stop();
        then();
      };
    });
    (async () => {
      if (!this.token && this.tokenProvider) {
        try {
          this.token = await this.tokenProvider();
        } catch (err) {
          this.emit("refused", new ChatError({ code: "unauthorized", message: `No token: ${err?.message ?? err}` }));
          return;
        }
      }
      if (!this.closed) this.socket.connect();
    })();
    return connected;
  }

  close() {
    this.closed = true;
    clearTimeout(this._refreshTimer);
    this.socket.disconnect();
    this.emit("closed");
  }

  /** A new token from the provider, then a new handshake; the provider is asked again with pauses. */
  async _reconnectWithFreshToken(reason) {
    this.emit("state", "reconnecting", reason);
    let lastError = null;
    for (let attempt = 0; attempt < MAX_TOKEN_RENEWALS; attempt += 1) {
      // The first renewal after a refusal goes at once; later ones back off.
      const renewal = this._renewals + attempt;
      await sleep(renewal > 1 ? backoff(renewal - 2, 1000) : 0);
      if (this.closed || this.socket.connected) return;
      try {
        this.token = await this.tokenProvider();
      } catch (err) {
        lastError = err;
        continue;
      }
      if (!this.closed && !this.socket.connected) this.socket.connect();
      return;
    }
    this.emit("state", "disconnected", reason);
    this.emit("refused", new ChatError({ code: "unauthorized", message: `No fresh token: ${lastError?.message ?? lastError}` }));
  }

  /**
   * Refresh the token halfway to the session's end (30 s before it for the
   * server's usual 60 s warning; a short token is not refreshed in a tight
   * loop), trying again with pauses until it is done or too late. The time left
   * is taken from the warning's arrival, not from this device's clock against
   * the server's (which may differ), and counts at most the warning's 60 s.
   * A newer warning replaces it.
   */
  _refreshBefore(expiresAt) {
    clearTimeout(this._refreshTimer);
    const left = Math.min(Math.max(0, expiresAt - Date.now()), WARNING_MS);
    const deadline = Date.now() + left;
    const run = async () => {
      for (let attempt = 0; this.connected && this.expiresAt === expiresAt && Date.now() < deadline; attempt += 1) {
        try {
          const token = await this.tokenProvider();
          const until = await this._exchange(token);
          if (!(until > expiresAt)) {
            // A provider that gave the same token again (a cache): the session would end anyway.
            throw new ChatError({ code: "unauthorized", message: "The new token does not last longer than the old one." });
          }
          this._refreshed(token, until);
          return;
        } catch (err) {
          this.emit("refresh_failed", err instanceof ChatError ? err
            : new ChatError({ code: "unauthorized", message: String(err?.message ?? err) }), expiresAt);
          await sleep(Math.min(backoff(attempt, 1000), Math.max(0, deadline - Date.now() - 250)));
        }
      }
    };
    this._refreshTimer = setTimeout(run, left / 2);
  }

  /**
   * Emit `event` and resolve with its `{ok: true}` ack; reject with a ChatError
   * (`timeout` when no ack came in time, `disconnected` when not connected).
   * Socket.IO would buffer an emit made while disconnected until the next
   * connection; this client refuses it instead, and the callers (the outbox,
   * the catch-up) decide what to redo after a reconnect.
   */
  request(event, payload = {}, { timeoutMs = this.ackTimeoutMs, signal } = {}) {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(cancelled(event));
        return;
      }
      if (!this.socket.connected) {
        reject(new ChatError({ code: "disconnected", message: "Not connected to the server." }));
        return;
      }
      // Aborting stops the wait, not the server: a request already sent may still take effect.
      let waiting = true;
      const abort = () => {
        waiting = false;
        reject(cancelled(event));
      };
      signal?.addEventListener("abort", abort, { once: true });
      this.socket.timeout(timeoutMs).emit(event, payload, (err, ack) => {
        signal?.removeEventListener("abort", abort);
        if (!waiting) return;
        if (err) {
          const code = this.socket.connected ? "timeout" : "disconnected";
          reject(new ChatError({ code, message: `No answer from the server to ${event}.` }));
        } else if (ack && ack.ok === true) {
          resolve(ack);
        } else {
          reject(ChatError.fromAck(ack));
        }
      });
    });
  }

  /**
   * `request`, made again after `rate_limited` (waiting `retry_after_ms`),
   * `storage_unavailable` and `timeout` (waiting with backoff), at most
   * `attempts` times. Only for requests that are safe to repeat.
   */
  async requestRetrying(event, payload = {}, { attempts = 5, timeoutMs, signal } = {}) {
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await this.request(event, payload, { timeoutMs, signal });
      } catch (err) {
        if (!RETRYABLE_CODES.has(err.code) || attempt + 1 >= attempts) throw err;
        await pause(err.code === "rate_limited" && err.retryAfterMs != null ? err.retryAfterMs : backoff(attempt),
          signal, event);
      }
    }
  }

  /** Fire and forget (typing, leave_group): failures are not worth reporting. */
  notify(event, payload) {
    this.request(event, payload).catch(() => {});
  }

  /** Move this session's end to a new token's `exp` (same user); reconnects use it too. */
  async refresh(token) {
    return this._refreshed(token, await this._exchange(token));
  }

  /** `refresh_token`: when the session ends with `token` (ms). */
  async _exchange(token) {
    const ack = await this.request("refresh_token", { token });
    return Date.parse(ack.expires_at);
  }

  _refreshed(token, until) {
    this.token = token;
    this.expiresAt = until;
    this.emit("refreshed", until);
    return until;
  }
}
