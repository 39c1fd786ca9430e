// Who is who, who is online in the open group, and who is typing there.

import { el } from "./timeline.js";

export const TYPING_EVERY_MS = 2000; // the server forwards at most one `true` per 2 s
export const TYPING_EXPIRY_MS = 6000; // someone is shown as stopped 6 s after their last `true`

export class People {
  /** `onlineList` is a <ul>, `typingLine` the element that says who is typing. */
  constructor(onlineList, typingLine) {
    this.onlineList = onlineList;
    this.typingLine = typingLine;
    this.me = null;
    this.names = new Map(); // user id -> display name (demo users, messages, presence, typing)
    this.online = new Set();
    this.typers = new Map(); // user id -> expiry timer
    this.onMyName = () => {};
  }

  learn(userId, name) {
    if (!userId || !name || this.names.get(userId) === name) return;
    this.names.set(userId, name);
    if (userId === this.me) this.onMyName(name);
  }

  nameOf(userId) {
    return this.names.get(userId) || userId || "";
  }

  /** The `online` list of a `join_group` ack. */
  setOnline(userIds) {
    this.online = new Set(userIds);
    this._renderOnline();
  }

  /** A `presence` event of the open group. */
  presence({ user_id: userId, name, online }) {
    this.learn(userId, name);
    if (online) {
      this.online.add(userId);
    } else {
      this.online.delete(userId);
      this.typing(userId, false);
    }
    this._renderOnline();
  }

  /** Someone (not us) starts or stops typing in the open group. */
  typing(userId, isTyping) {
    clearTimeout(this.typers.get(userId));
    this.typers.delete(userId);
    if (isTyping) this.typers.set(userId, setTimeout(() => this.typing(userId, false), TYPING_EXPIRY_MS));
    const names = [...this.typers.keys()].map((id) => this.nameOf(id));
    this.typingLine.textContent =
      names.length === 0 ? "" :
      names.length === 1 ? `${names[0]} is typing…` :
      names.length === 2 ? `${names[0]} and ${names[1]} are typing…` :
      `${names.length} people are typing…`;
  }

  /** Forget the open group's presence and typing (another group, a reconnect, sign-out). */
  reset() {
    for (const id of [...this.typers.keys()]) this.typing(id, false);
    this.setOnline([]);
  }

  _renderOnline() {
    const ids = [...this.online].sort((a, b) => this.nameOf(a).localeCompare(this.nameOf(b)));
    this.onlineList.replaceChildren(
      ...ids.map((id) =>
        el("li", { "data-testid": "online-user", "data-user-id": id }, id === this.me ? `${this.nameOf(id)} (you)` : this.nameOf(id)),
      ),
    );
  }
}

/** Our side of typing: `true` at most every 2 s while the user types, `false` once when they stop. */
export class TypingAnnouncer {
  constructor(notify) {
    this.notify = notify; // (groupId, isTyping) => void
    this.groupId = null;
    this.sentAt = 0; // when we last sent `true`; 0 when we are not typing
  }

  /** The message box changed in `groupId`; `hasText` says whether anything is left in it. */
  input(groupId, hasText) {
    if (!hasText) {
      this.stop();
      return;
    }
    const now = Date.now();
    if (groupId !== this.groupId) this.stop();
    if (now - this.sentAt >= TYPING_EVERY_MS) {
      this.groupId = groupId;
      this.sentAt = now;
      this.notify(groupId, true);
    }
  }

  /** Sent, blurred, emptied or left: say so once. */
  stop() {
    if (this.sentAt && this.groupId) this.notify(this.groupId, false);
    this.sentAt = 0;
    this.groupId = null;
  }
}
