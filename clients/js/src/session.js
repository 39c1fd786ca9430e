// A signed-in session: one connection, the outbox, and the timelines of the
// groups it has joined, kept exact across reconnects, server restarts and
// missed broadcasts.

import { ChatConnection } from "./connection.js";
import { Outbox } from "./outbox.js";
import { GroupTimeline } from "./timeline.js";
import { Emitter, sleep } from "./emitter.js";
import { ChatError } from "./errors.js";
import { backoff } from "./connection.js";

/** Messages per page when joining and loading older history. */
export const PAGE_SIZE = 50;
/** Changes per page when catching up: the protocol's largest `limit`. */
export const CATCH_UP_PAGE = 100;
const MESSAGE_EVENTS = new Set(["message", "message_updated", "message_deleted"]);
const PASSED_ON = ["state", "refused", "expiring", "refreshed", "refresh_failed", "ended"];
const OTHER_SERVER_EVENTS = ["typing", "presence", "membership_revoked", "group_added"];
/** A rejoin after a reconnect that fails (not for membership) is tried this many times. */
const CATCH_UP_ATTEMPTS = 5;
/** Refusals of a rejoin that mean the group is no longer ours: its timeline closes. */
const GONE = new Set(["not_member", "group_not_found"]);
const lower = (groupId) => String(groupId ?? "").trim().toLowerCase();

/**
 * Events (see index.d.ts): "connected" (a connection is up; catch-up follows), "messages"
 * ({timeline, messages, added}), "event" (name, payload, {timeline, added}), "rejoined"
 * (timeline, ack), "reset" (timeline), "caught_up" (timeline), "error" (ChatError, context),
 * "left" (timeline, reason), the connection's "state", "refused", "expiring", "refreshed",
 * "refresh_failed", "ended", and the outbox's "acked", "retrying", "failed".
 */
export class ChatSession extends Emitter {
  constructor({ createTimeline = (groupId) => new GroupTimeline(groupId), connection, ...options } = {}) {
    super();
    this.connection = connection ?? new ChatConnection(options);
    this.outbox = new Outbox(this.connection);
    this.createTimeline = createTimeline;
    this.timelines = new Map(); // group id -> joined timeline
    this.joining = new Map(); // group id -> {timeline, early, done}: a join whose ack is awaited
    const conn = this.connection;
    for (const event of PASSED_ON) conn.on(event, (...args) => this.emit(event, ...args));
    for (const event of ["acked", "retrying", "failed", "changed"]) this.outbox.on(event, (...args) => this.emit(event, ...args));
    conn.on("connect", () => this._onConnect());
    for (const event of MESSAGE_EVENTS) conn.on(event, (payload) => this._onMessageEvent(event, payload));
    for (const event of OTHER_SERVER_EVENTS) conn.on(event, (payload) => this._onOtherEvent(event, payload));
  }

  get connected() {
    return this.connection.connected;
  }

  connect() {
    return this.connection.connect();
  }

  /** Disconnect and forget what waits (nothing more is sent). */
  close() {
    this.connection.close();
    this.outbox.clear();
  }

  /** A request answered by its ack (rejects with ChatError). */
  request(event, payload, options) {
    return this.connection.request(event, payload, options);
  }

  /** The timeline of a joined group (or one being joined), or undefined. */
  timeline(groupId) {
    groupId = lower(groupId);
    return this.timelines.get(groupId) ?? this.joining.get(groupId)?.timeline;
  }

  /**
   * Join a group: its latest page of messages. Events that arrive before the
   * join's ack are applied after its page. Resolves with the timeline and the
   * ack (`null` when the group was joined already); a second call while the
   * join is under way gets the same answer. A join left (`leave`) before its
   * ack rejects with `cancelled` and leaves the room again.
   */
  open(groupId, { limit = PAGE_SIZE } = {}) {
    groupId = lower(groupId); // answers and events carry lowercase ids
    const joined = this.timelines.get(groupId);
    if (joined) return Promise.resolve({ timeline: joined, ack: null });
    const under = this.joining.get(groupId);
    if (under) return under.done;
    const join = { timeline: this.createTimeline(groupId), early: [], done: null };
    this.joining.set(groupId, join);
    join.done = this._join(groupId, join, limit);
    return join.done;
  }

  async _join(groupId, join, limit) {
    let ack;
    try {
      ack = await this.connection.requestRetrying("join_group", { group_id: groupId, limit });
    } catch (err) {
      if (this.joining.get(groupId) === join) this.joining.delete(groupId);
      throw err;
    }
    if (this.joining.get(groupId) !== join) {
      if (this.connected && !this.timelines.has(groupId)) this.connection.notify("leave_group", { group_id: groupId });
      throw new ChatError({ code: "cancelled", message: "The join was cancelled." });
    }
    this.joining.delete(groupId);
    const { timeline } = join;
    this.timelines.set(groupId, timeline);
    this._applyLatestPage(timeline, ack);
    // What came meanwhile: only changes to what the page holds (or newer) are kept, so the
    // history held stays one run of seqs that older pages extend.
    if (join.early.length) this.merge(timeline, join.early, { onlyHeld: true });
    return { timeline, ack };
  }

  /** A join's answer without `since_seq`/`since_rev`: the latest page. */
  _applyLatestPage(timeline, ack) {
    timeline.hasOlder = ack.has_more; // without since_seq, has_more means older messages exist
    timeline.applyUpTo(ack.latest_rev); // read before the page: every change up to it is in the page
    this.merge(timeline, ack.messages);
  }

  /** Leave a group's room and drop its timeline (its waiting sends stay in the outbox). */
  leave(groupId) {
    groupId = lower(groupId);
    const timeline = this.timelines.get(groupId);
    const joining = this.joining.get(groupId);
    this.timelines.delete(groupId);
    this.joining.delete(groupId);
    if ((timeline || joining) && this.connected) this.connection.notify("leave_group", { group_id: groupId });
    return timeline ?? joining?.timeline;
  }

  /** Load the page before the oldest held message; resolves with the ack. */
  async loadOlder(timeline, { limit = PAGE_SIZE, signal } = {}) {
    const payload = { group_id: timeline.groupId, limit };
    if (timeline.oldest !== null) payload.before_seq = timeline.oldest;
    const ack = await this.connection.requestRetrying("get_history", payload, { signal });
    timeline.hasOlder = ack.has_more;
    this.merge(timeline, ack.messages);
    return ack;
  }

  /** Queue a send (see Outbox.add): it is stored once, in order, whatever the network does. */
  send(groupId, content, extra = {}) {
    return this.outbox.add(lower(groupId), content, extra);
  }

  /**
   * Messages from acks, events, history or changes into a timeline, whatever
   * their order or overlap; returns how many were new to it. A gap in `rev`
   * that they reveal is filled.
   */
  merge(timeline, messages, options = {}) {
    for (const message of messages) if (message.client_msg_id) this.outbox.settle(message);
    const added = timeline.merge(messages, options);
    this.emit("messages", { timeline, messages, added });
    if (this.timelines.get(timeline.groupId) === timeline) this.fillGap(timeline);
    return added;
  }

  async _onConnect() {
    this.emit("connected");
    const id = this.connection.id;
    await Promise.all([...this.timelines.values()].map((timeline) => this._rejoin(timeline, id)));
    this.outbox.flush(); // after the catch-up: resends find their first store in place
  }

  /** Catch a timeline up after a reconnect, trying again while the same connection lasts. */
  async _rejoin(timeline, connectionId) {
    for (let attempt = 0; ; attempt += 1) {
      try {
        await this.catchUp(timeline);
        return;
      } catch (err) {
        const current = this.timelines.get(timeline.groupId) === timeline;
        if (current && GONE.has(err.code)) {
          // Removed (or deleted) while we were away: no membership_revoked comes for that.
          this.timelines.delete(timeline.groupId);
          this.emit("left", timeline, err.code);
          return;
        }
        if (current && err.code !== "disconnected") this.emit("error", err, { timeline, during: "catch-up" });
        if (!current || attempt + 1 >= CATCH_UP_ATTEMPTS) return;
        await sleep(backoff(attempt, 1000));
        if (!this.connected || this.connection.id !== connectionId) return; // the next connection rejoins
      }
    }
  }

  /**
   * Rejoin a group after a reconnect and apply every change made while away:
   * new messages, edits, deletes, reactions alike. `join_group {since_rev}` and
   * `get_changes` return the current state of each message changed after it.
   */
  async catchUp(timeline) {
    const groupId = timeline.groupId;
    timeline.catchingUp = true; // fillGap() stands aside: this loop fetches the same pages
    try {
      const ack = await this.connection.requestRetrying(
        "join_group", { group_id: groupId, since_rev: timeline.rev, limit: CATCH_UP_PAGE });
      if (this.timelines.get(groupId) !== timeline) return;
      if (ack.latest_rev < timeline.rev || ack.latest_seq < timeline.top) {
        // Not the history this copy came from (a server with a fresh store): start over.
        timeline.reset();
        timeline.catchingUp = true; // reset() cleared it: this loop goes on fetching
        this.emit("reset", timeline);
        const fresh = await this.connection.requestRetrying("join_group", { group_id: groupId, limit: PAGE_SIZE });
        this.emit("rejoined", timeline, fresh);
        this._applyLatestPage(timeline, fresh);
      } else {
        this.emit("rejoined", timeline, ack);
        await this._applyChanges(timeline, ack);
      }
    } finally {
      timeline.catchingUp = false;
    }
    this.emit("caught_up", timeline);
    this.fillGap(timeline); // events that arrived meanwhile may have left a gap
  }

  /** Apply a `changes` answer, then page on with `get_changes` until nothing more is missing. */
  async _applyChanges(timeline, ack) {
    while (this.timelines.get(timeline.groupId) === timeline) {
      this.merge(timeline, ack.changes, { onlyHeld: true });
      const lastRev = ack.changes.length ? ack.changes[ack.changes.length - 1].rev : timeline.rev;
      // A full page may end before `latest_rev`; the last page reaches it.
      timeline.applyUpTo(ack.has_more ? lastRev : Math.max(lastRev, ack.latest_rev));
      if (!ack.has_more) break;
      ack = await this.connection.requestRetrying(
        "get_changes", { group_id: timeline.groupId, after_rev: timeline.rev, limit: CATCH_UP_PAGE });
    }
  }

  /** A rev more than one above the last applied one was seen: fetch the changes in between. */
  fillGap(timeline) {
    if (timeline.filling || timeline.catchingUp || !timeline.hasGap || !this.connected) return;
    timeline.filling = (async () => {
      try {
        while (timeline.hasGap && this.connected && this.timelines.get(timeline.groupId) === timeline) {
          const before = timeline.rev;
          const ack = await this.connection.requestRetrying(
            "get_changes", { group_id: timeline.groupId, after_rev: timeline.rev, limit: CATCH_UP_PAGE });
          await this._applyChanges(timeline, ack);
          if (timeline.rev === before) break; // nothing more to be had now
        }
      } catch (err) {
        if (err.code !== "disconnected") this.emit("error", err, { timeline, during: "gap fill" });
      } finally {
        timeline.filling = null;
      }
    })();
  }

  _onMessageEvent(event, payload) {
    if (payload?.client_msg_id) this.outbox.settle(payload);
    const groupId = lower(payload?.group_id);
    const joining = this.joining.get(groupId);
    if (joining) joining.early.push(payload); // applied after the join's page
    const timeline = this.timelines.get(groupId);
    // A change to a message older than the oldest held is left to older pages: the
    // history held stays one run of seqs.
    const added = timeline ? this.merge(timeline, [payload], { onlyHeld: true }) : 0;
    this.emit("event", event, payload, { timeline: timeline ?? joining?.timeline ?? null, added });
  }

  _onOtherEvent(event, payload) {
    if (event === "membership_revoked") {
      // The server took this connection out of the room: the timeline is closed.
      const groupId = lower(payload?.group_id);
      const timeline = this.timeline(groupId);
      this.timelines.delete(groupId);
      this.joining.delete(groupId);
      if (timeline) this.emit("left", timeline, "membership_revoked");
    }
    this.emit("event", event, payload, { timeline: this.timeline(payload?.group_id) ?? null, added: 0 });
  }
}
