// Sends that are not acked yet. Each keeps its client_msg_id for life, so a
// resend after a timeout or a reconnect is answered with the stored message
// (`duplicate: true`) instead of creating a second one. Sends to one group go
// one at a time, in the order they were made: the next leaves only once the one
// before it is stored (or refused for good), so the server numbers them in order.

import { ChatError, RETRYABLE_CODES } from "./errors.js";
import { Emitter } from "./emitter.js";
import { backoff } from "./connection.js";

/** A client_msg_id: random, printable, well under the 64-character limit. */
export function newClientMsgId() {
  const bytes = new Uint8Array(12);
  globalThis.crypto.getRandomValues(bytes); // works outside secure contexts too
  return "c-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Events: "acked" (message, entry), "retrying" (entry), "failed" (entry, ChatError), and
 * "changed" () whenever a send is added, settled, refused for good or dismissed: the moment
 * to save `snapshot()` where a reload finds it.
 */
export class Outbox extends Emitter {
  constructor(connection) {
    super();
    this.connection = connection;
    this.entries = new Map(); // client_msg_id -> entry, in creation order
  }

  /**
   * Queue a send; it leaves when the group's earlier sends are stored and the
   * connection is up. `extra`: send_message's other fields (reply_to, kind,
   * mentions, attachments), sent with every try. `entry.stored` resolves with
   * the stored message, or rejects with the ChatError that refused it for good.
   */
  add(groupId, content, extra = {}) {
    groupId = String(groupId).toLowerCase(); // the server answers in lowercase
    const entry = this._entry(newClientMsgId(), groupId, content, extra);
    this.entries.set(entry.id, entry);
    this.emit("changed");
    this._pump(groupId);
    return entry;
  }

  /**
   * The sends not stored yet (failed ones included), oldest first, as plain data that
   * survives JSON: what `restore` takes back, in this session or after a reload.
   */
  snapshot() {
    return [...this.entries.values()].map((e) => ({
      id: e.id, groupId: e.groupId, content: e.content, extra: e.extra,
      error: e.error && { code: e.error.code, message: e.error.message, details: e.error.details ?? null },
    }));
  }

  /**
   * Take back sends from a `snapshot()` (of an earlier page, say), each with its own
   * client_msg_id: one already stored is answered with the stored message, not stored
   * twice. They go ahead of sends added since; what is not a snapshot's item is skipped.
   * Returns the entries taken back.
   */
  restore(items) {
    const taken = [];
    for (const item of Array.isArray(items) ? items : []) {
      if (!item || typeof item.id !== "string" || typeof item.groupId !== "string"
          || typeof item.content !== "string" || this.entries.has(item.id)) continue;
      const entry = this._entry(item.id, item.groupId.toLowerCase(), item.content,
        item.extra && typeof item.extra === "object" ? item.extra : {});
      if (item.error) {
        entry.error = new ChatError({ code: String(item.error.code), message: String(item.error.message ?? ""),
          details: item.error.details ?? undefined });
        entry._reject(entry.error);
      }
      taken.push(entry);
    }
    if (!taken.length) return taken;
    const later = [...this.entries.values()];
    this.entries = new Map([...taken, ...later].map((e) => [e.id, e]));
    this.emit("changed");
    this.flush();
    return taken;
  }

  /** The group's sends not stored yet, oldest first (failed ones included until dismissed). */
  forGroup(groupId) {
    groupId = String(groupId).toLowerCase();
    return [...this.entries.values()].filter((e) => e.groupId === groupId);
  }

  /** Sends that still wait to be stored (not failed), oldest first. */
  get waiting() {
    return [...this.entries.values()].filter((e) => !e.error);
  }

  /** After a (re)connect: send every group's oldest waiting send (the rest follow in order). */
  flush() {
    for (const groupId of new Set([...this.entries.values()].map((e) => e.groupId))) this._pump(groupId);
  }

  /**
   * A stored message arrived (an ack, or a broadcast, whichever came first): if it is
   * one of our waiting sends, it is done, and the group's next send goes.
   */
  settle(message) {
    const entry = message && this.entries.get(message.client_msg_id);
    if (!entry || entry.groupId !== message.group_id) return false;
    this._done(entry, message);
    return true;
  }

  _done(entry, message) {
    clearTimeout(entry.timer);
    this.entries.delete(entry.id);
    entry._resolve(message);
    this.emit("acked", message, entry);
    this.emit("changed");
    this._pump(entry.groupId);
  }

  /** Forget a send (a failed one the person dismissed, say); one in flight is answered first. */
  dismiss(id) {
    const entry = this.entries.get(id);
    if (!entry) return;
    clearTimeout(entry.timer);
    this.entries.delete(id);
    if (!entry.error) entry._reject(new ChatError({ code: "cancelled", message: "The send was cancelled." }));
    this.emit("changed");
    if (!entry.inFlight) this._pump(entry.groupId); // else the group goes on once its answer is in
  }

  /** Forget every send, sending nothing more (closing the session). */
  clear() {
    const entries = [...this.entries.values()];
    this.entries.clear();
    for (const entry of entries) {
      clearTimeout(entry.timer);
      if (!entry.error) entry._reject(new ChatError({ code: "cancelled", message: "The send was cancelled." }));
    }
    if (entries.length) this.emit("changed");
  }

  _entry(id, groupId, content, extra) {
    const entry = {
      id, groupId, content, extra, attempt: 0, error: null,
      inFlight: false, timer: null, stored: null, _resolve: null, _reject: null,
    };
    entry.stored = new Promise((resolve, reject) => {
      entry._resolve = resolve;
      entry._reject = reject;
    });
    entry.stored.catch(() => {}); // a refusal is also reported as "failed"; awaiting is optional
    return entry;
  }

  _head(groupId) {
    for (const entry of this.entries.values()) if (entry.groupId === groupId && !entry.error) return entry;
    return null;
  }

  _pump(groupId) {
    const entry = this._head(groupId);
    if (!entry || !this.connection.connected) return;
    // One send of a group at a time: none leaves while another of the group is in flight or
    // waits to be tried again (restored sends go ahead of those, and wait their turn).
    for (const other of this.entries.values()) {
      if (other.groupId === groupId && (other.inFlight || other.timer)) return;
    }
    this._send(entry);
  }

  async _send(entry) {
    entry.inFlight = true;
    const attempt = ++entry.attempt;
    if (attempt > 1) this.emit("retrying", entry);
    const payload = { ...entry.extra, group_id: entry.groupId, content: entry.content, client_msg_id: entry.id };
    let delay = null;
    try {
      const ack = await this.connection.request("send_message", payload);
      entry.inFlight = false;
      // This very entry (not one found by the answer's fields): it is stored.
      if (this.entries.get(entry.id) === entry) this._done(entry, ack.message);
      return;
    } catch (err) {
      if (this.entries.get(entry.id) !== entry) return; // settled by its broadcast, or dismissed
      // Not connected, or the session's token ran out (refused until the reconnect with a
      // fresh one): sent again after the next connection's catch-up (flush()).
      if (err.code === "disconnected" || err.code === "unauthorized") return;
      if (RETRYABLE_CODES.has(err.code)) {
        // After a timeout the waiting is done: resend at once. Otherwise wait as told.
        delay = err.code === "timeout" ? 0 : err.retryAfterMs ?? backoff(Math.min(attempt - 1, 4), 1000);
      } else {
        entry.error = err; // kept until dismissed: nothing is silently lost
        entry._reject(err);
        this.emit("failed", entry, err);
        this.emit("changed");
      }
    } finally {
      entry.inFlight = false;
      // Settled or dismissed meanwhile (or refused for good): the group's next send goes.
      if (this.entries.get(entry.id) !== entry || entry.error) this._pump(entry.groupId);
    }
    if (delay === null) return;
    entry.timer = setTimeout(() => {
      entry.timer = null;
      this._pump(entry.groupId);
    }, delay);
  }
}
