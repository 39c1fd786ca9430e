// One group's messages as the page shows them: each seq once, in seq order,
// then our own sends that wait for their ack. Everything the server sends is
// put on the page as text nodes or elements made here, never parsed as HTML
// (message_view.js and markdown.js render a message's parts).

import { el } from "./dom.js";
import { actions, badges, messageBody } from "./message_view.js";

/**
 * Should `incoming` replace `current` (same seq)? The state with the higher
 * `rev` is the later one. Messages stored before revisions existed carry rev 0
 * until the server has given them one: then tombstones are final and later edits win.
 */
function supersedes(incoming, current) {
  if (incoming.rev > 0 && current.rev > 0) return incoming.rev > current.rev;
  if (current.deleted) return false;
  if (incoming.deleted) return true;
  return (incoming.edited_at || "") > (current.edited_at || "");
}

export { el };

function formatTime(iso) {
  const date = new Date(iso);
  const today = new Date().toDateString() === date.toDateString();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return today ? time : `${date.toLocaleDateString()} ${time}`;
}

/** A message's item and its buttons in the tab order, or out of it (still clickable). */
function setTabbable(node, on) {
  node.tabIndex = on ? 0 : -1;
  for (const button of node.querySelectorAll("button")) button.tabIndex = on ? 0 : -1;
}

/** A message was drawn anew while `focused` (in `old`) had the focus: give it to the same control. */
function refocus(focused, old, node) {
  let target = node;
  if (focused !== old && focused.dataset.action) {
    const emoji = focused.dataset.emoji ? `[data-emoji="${CSS.escape(focused.dataset.emoji)}"]` : "";
    target = node.querySelector(`[data-action="${focused.dataset.action}"]${emoji}`) ?? node;
  }
  target.focus({ preventScroll: true });
}

export class Timeline {
  /** `me` is the signed-in user's id: their messages get edit and delete buttons. */
  constructor(groupId, me) {
    this.groupId = groupId;
    this.me = me;
    // A list for screen readers (list-style: none alone drops that in some of them).
    this.list = el("ol", { class: "messages", role: "list", "data-group-id": groupId });
    this.bySeq = new Map(); // seq -> message
    this.byId = new Map(); // id -> message
    this.accepted = new Map(); // answer id -> the id of the question that accepted it
    this.nodes = new Map(); // seq -> <li>
    this.seqs = []; // sorted
    this.pending = new Map(); // client_msg_id -> <li>
    this.top = 0; // every seq from the oldest held up to `top` is held
    // Revisions: every change to the group up to `rev` is applied here. A change
    // with rev R shows as a message whose `rev` is R; the ones seen above `rev`
    // wait in `revsAbove` until the revisions between have been seen too.
    this.rev = 0;
    this.revsAbove = new Set();
    this.revKnown = 0; // the highest rev seen
    this.hasOlder = false;
    this.loadingOlder = false;
    this.filling = null; // the running gap fill, if any
    this.catchingUp = false; // a rejoin after a reconnect is paging in what was missed
    this.lastMarked = 0; // the seq of our last mark_read
    // The keyboard's way in: one message of the list is in the tab order (the one
    // last focused, else the newest), with its buttons; arrow keys move between them.
    this.active = null; // seq
    this.tabStop = null; // the <li> in the tab order
  }

  get oldest() {
    return this.seqs.length ? this.seqs[0] : null;
  }

  get newest() {
    return this.seqs.length ? this.seqs[this.seqs.length - 1] : 0;
  }

  /** True when a change above `rev` is known to exist: fetch `get_changes {after_rev: rev}`. */
  get hasGap() {
    return this.revKnown > this.rev;
  }

  /** Every change up to `rev` is applied (a join or a page of changes said so). */
  applyUpTo(rev) {
    if (rev > this.rev) this.rev = rev;
    for (const seen of this.revsAbove) if (seen <= this.rev) this.revsAbove.delete(seen);
    this._advanceRev();
  }

  _noteRev(rev) {
    if (!(rev > this.rev)) return; // 0 (not revised yet) or already counted
    this.revsAbove.add(rev);
    this.revKnown = Math.max(this.revKnown, rev);
  }

  _advanceRev() {
    while (this.revsAbove.delete(this.rev + 1)) this.rev += 1;
    this.revKnown = Math.max(this.revKnown, this.rev);
  }

  /**
   * Add or update messages; returns how many were new. Order of arrival does not
   * matter. With `onlyHeld`, a message older than the oldest one held is left
   * out (a change caught up on: loading older history fetches its current state).
   */
  merge(messages, { onlyHeld = false } = {}) {
    let added = 0;
    for (const message of messages) {
      if (message.group_id !== this.groupId) continue;
      this._noteRev(message.rev); // the state a change produced: that change is applied
      const current = this.bySeq.get(message.seq);
      if (!current && onlyHeld && message.seq < this.oldest) continue;
      if (current && !supersedes(message, current)) continue;
      if (!current) added += 1;
      this.bySeq.set(message.seq, message);
      this.byId.set(message.id, message);
      this._place(message);
      if (message.kind === "question") this._questionChanged(current, message);
      if (message.sender_id === this.me && message.client_msg_id) this.removePending(message.client_msg_id);
    }
    if (added) this._advanceTop();
    this._advanceRev();
    return added;
  }

  /** A question arrived or changed: its answers and replies show it (accept buttons, marks). */
  _questionChanged(before, question) {
    if (before?.answer_id && this.accepted.get(before.answer_id) === question.id) this.accepted.delete(before.answer_id);
    if (question.answer_id && !question.deleted) this.accepted.set(question.answer_id, question.id);
    for (const message of this.bySeq.values()) {
      const related = message.reply_to?.id === question.id
        || message.id === question.answer_id || message.id === before?.answer_id;
      if (related && message.id !== question.id) this._place(message);
    }
  }

  /** The held question with this id, or null. */
  question(id) {
    const message = this.byId.get(id);
    return message && message.kind === "question" ? message : null;
  }

  isAccepted(id) {
    return this.accepted.has(id);
  }

  _advanceTop() {
    if (this.top < this.oldest - 1) this.top = this.oldest - 1;
    while (this.bySeq.has(this.top + 1)) this.top += 1;
  }

  _place(message) {
    const node = this._render(message);
    const old = this.nodes.get(message.seq);
    this.nodes.set(message.seq, node);
    if (old) {
      const focused = old.contains(document.activeElement) ? document.activeElement : null;
      if (this.tabStop === old) this.tabStop = null;
      old.replaceWith(node);
      this._updateTabStop();
      if (focused) refocus(focused, old, node);
      return;
    }
    // Binary search for the position among the held seqs.
    let lo = 0;
    let hi = this.seqs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.seqs[mid] < message.seq) lo = mid + 1;
      else hi = mid;
    }
    this.seqs.splice(lo, 0, message.seq);
    const next = lo + 1 < this.seqs.length ? this.nodes.get(this.seqs[lo + 1]) : null;
    // The newest stored message goes before our unacked sends (or at the end).
    this.list.insertBefore(node, next || this.list.querySelector('[data-pending="true"], [data-failed="true"]'));
    this._updateTabStop();
  }

  /** The message the keyboard is on (focused, or the last one focused). */
  setActive(seq) {
    this.active = seq;
    this._updateTabStop();
  }

  /** The held message `step` places from `seq` (-1: the one before), or null at either end. */
  neighbour(seq, step) {
    const at = this.seqs.indexOf(seq);
    const next = at < 0 ? -1 : at + step;
    return next >= 0 && next < this.seqs.length ? this.seqs[next] : null;
  }

  _updateTabStop() {
    const node = this.nodes.get(this.nodes.has(this.active) ? this.active : this.newest) ?? null;
    if (node === this.tabStop) return;
    if (this.tabStop) setTabbable(this.tabStop, false);
    if (node) setTabbable(node, true);
    this.tabStop = node;
  }

  _render(message) {
    if (message.kind === "system") return this._renderSystem(message);
    const own = message.sender_id === this.me;
    const mentionsMe = !message.deleted && (message.mentions || []).includes(this.me);
    const node = el("li", {
      class: "message" + (own ? " own" : "") + (message.deleted ? " deleted" : "")
        + (message.kind === "question" ? " question" : "") + (mentionsMe ? " mentions-me" : ""),
      "data-kind": message.kind || "message",
      "data-mentions-me": String(mentionsMe),
      "data-testid": "message",
      "data-seq": String(message.seq),
      "data-rev": String(message.rev ?? 0),
      "data-id": message.id,
      "data-sender-id": message.sender_id ?? "",
      "data-pending": "false",
      tabindex: "-1",
    });
    const sender = message.sender_name || message.sender || message.sender_id || "unknown";
    const meta = el("div", { class: "meta" });
    meta.append(
      el("span", { class: "sender", "data-testid": "message-sender" }, sender),
      this._time(message),
    );
    if (message.edited_at && !message.deleted) {
      const title = `edited ${new Date(message.edited_at).toLocaleString()}`;
      meta.append(el("span", { class: "edited", "data-testid": "message-edited", title }, "(edited)"));
    }
    meta.append(...badges(message, this), actions(message, this.me, this));
    node.append(meta, ...messageBody(message, this.me, this));
    return node;
  }

  /** A message of the platform's (an announcement): no person's name or styling, no actions. */
  _renderSystem(message) {
    const from = message.sender_name || message.sender || "the platform";
    const node = el("li", {
      class: "message system" + (message.deleted ? " deleted" : ""),
      "data-testid": "message",
      "data-kind": "system",
      "data-seq": String(message.seq),
      "data-id": message.id,
      "data-sender-id": "",
      "data-pending": "false",
      tabindex: "-1",
    });
    const meta = el("div", { class: "meta" });
    meta.append(el("span", { class: "announcement", "data-testid": "message-sender" }, `Announcement from ${from}`),
      this._time(message));
    const text = message.deleted ? "message deleted" : message.content;
    node.append(meta, el("p", { class: "content", "data-testid": "message-content" }, text));
    return node;
  }

  _time(message) {
    return el("time", {
      "data-testid": "message-time",
      datetime: message.timestamp,
      title: new Date(message.timestamp).toLocaleString(),
    }, formatTime(message.timestamp));
  }

  /** One of our sends, shown until its ack (or its `message` event) arrives. */
  addPending(entry, myName) {
    if (this.pending.has(entry.id)) return;
    const node = el("li", {
      class: "message own",
      "data-testid": "message",
      "data-pending": "true",
      "data-client-msg-id": entry.id,
    });
    const meta = el("div", { class: "meta" });
    meta.append(el("span", { class: "sender", "data-testid": "message-sender" }, myName));
    meta.append(el("span", { class: "status" }, "sending…"));
    const files = entry.extra?.attachments?.length;
    const text = files ? `${entry.content}${entry.content.trim() ? " " : ""}(${files} ${files === 1 ? "file" : "files"})` : entry.content;
    node.append(meta, el("p", { class: "content", "data-testid": "message-content" }, text));
    this.pending.set(entry.id, node);
    this.list.append(node);
    if (entry.error) this.markFailed(entry.id, entry.error.describe());
    else if (entry.attempt > 1) this.markRetrying(entry.id, entry.attempt);
  }

  markRetrying(id, attempt) {
    const node = this.pending.get(id);
    if (node) node.querySelector(".status").textContent = `sending… (try ${attempt})`;
  }

  markFailed(id, reason) {
    const node = this.pending.get(id);
    if (!node) return;
    node.dataset.pending = "false";
    node.dataset.failed = "true";
    node.classList.add("failed");
    node.querySelector(".status").textContent = `not sent: ${reason}`;
    const actions = el("span", { class: "actions" });
    actions.append(el("button", { type: "button", "data-action": "dismiss", "data-testid": "message-dismiss" }, "Dismiss"));
    node.querySelector(".meta").append(actions);
  }

  removePending(id) {
    const node = this.pending.get(id);
    if (node) node.remove();
    this.pending.delete(id);
  }

  /** The message shown in `node` (an element inside this timeline's list). */
  messageOf(node) {
    const item = node.closest("li.message");
    return item && item.dataset.seq ? this.bySeq.get(Number(item.dataset.seq)) : null;
  }
}
