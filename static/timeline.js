// One group's messages as the page shows them: each seq once, in seq order,
// then our own sends that wait for their ack. Which messages, in which state,
// is the client package's GroupTimeline (exact by seq and rev); this draws them.
// Everything the server sends is put on the page as text nodes or elements made
// here, never parsed as HTML (message_view.js and markdown.js render a message's parts).

import { GroupTimeline } from "/static/client/index.js";
import { el } from "./dom.js";
import { actions, badges, messageBody } from "./message_view.js";

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

export class Timeline extends GroupTimeline {
  /**
   * `me` is the signed-in user's id: their messages get edit and delete buttons.
   * `hooks.merging(view, messages)` runs before messages are drawn and returns what
   * `hooks.merged(view, messages, added, before)` gets after (the page keeps its scroll).
   */
  constructor(groupId, me, hooks = {}) {
    super(groupId);
    this.me = me;
    this.hooks = hooks;
    // A list for screen readers (list-style: none alone drops that in some of them).
    this.list = el("ol", { class: "messages", role: "list", "data-group-id": groupId });
    this.nodes = new Map(); // seq -> <li>
    this.accepted = new Map(); // answer id -> the id of the question that accepted it
    this.pending = new Map(); // client_msg_id -> <li>
    this.loadingOlder = false;
    this.lastMarked = 0; // the seq of our last mark_read
    // The keyboard's way in: one message of the list is in the tab order (the one
    // last focused, else the newest), with its buttons; arrow keys move between them.
    this.active = null; // seq
    this.tabStop = null; // the <li> in the tab order
  }

  /** The server's history is not the one shown (a server with a fresh store): start over. */
  reset() {
    super.reset();
    if (!this.nodes) return; // called by the constructor, before anything is drawn
    for (const node of this.nodes.values()) node.remove();
    this.nodes.clear();
    this.accepted.clear();
    this.active = null;
    this.tabStop = null;
    this.lastMarked = 0;
  }

  merge(messages, options) {
    const before = this.hooks.merging?.(this, messages);
    const added = super.merge(messages, options);
    this.hooks.merged?.(this, messages, added, before);
    return added;
  }

  /** A message arrived or changed (GroupTimeline decided it is newer than what is shown). */
  changed(message, previous) {
    this._place(message);
    if (message.kind === "question") this._questionChanged(previous, message);
    if (message.sender_id === this.me && message.client_msg_id) this.removePending(message.client_msg_id);
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
    // GroupTimeline has put its seq in place among the held ones.
    const at = this.position(message.seq);
    const next = at + 1 < this.seqs.length ? this.nodes.get(this.seqs[at + 1]) : null;
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
    const at = this.position(seq);
    if (this.seqs[at] !== seq) return null;
    const next = at + step;
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
