// What a screen reader hears without looking: the open group's new messages,
// who starts typing, who comes and goes. Everything goes through one polite
// live region, in batches: a burst of messages is one announcement, not one
// per message, and at most one announcement is made per `BATCH_MS`.

import { excerpt } from "./message_view.js";

export const BATCH_MS = 1500;
const TYPING_AGAIN_MS = 30_000; // the same person's typing is announced at most this often
const SAID = 140; // code points of a message's text read out

export class Announcer {
  /** `region` is an element with `aria-live="polite"`, in the page from its start. */
  constructor(region) {
    this.region = region;
    this.messages = []; // {sender, text, mentionsMe}
    this.notes = []; // short sentences: typing, presence
    this.timer = null;
    this.lastAt = 0;
    this.typingSaid = new Map(); // user id -> when their typing was last announced
    this.comings = new Map(); // name -> online, for this batch
  }

  /** A new message from someone else in the open group. */
  message(sender, text, mentionsMe = false) {
    this.messages.push({ sender, text, mentionsMe });
    this._schedule();
  }

  /** Someone started typing (not every keystroke: once per person per half minute). */
  typing(userId, name) {
    const now = Date.now();
    if (now - (this.typingSaid.get(userId) ?? -Infinity) < TYPING_AGAIN_MS) return;
    this.typingSaid.set(userId, now);
    this._note(`${name} is typing.`);
  }

  presence(name, online) {
    this.comings.set(name, online); // the latest change of each person in this batch
    this._schedule();
  }

  /** Forget what was not said yet (another group opened, signed out). */
  reset() {
    clearTimeout(this.timer);
    this.timer = null;
    this.messages = [];
    this.notes = [];
    this.comings.clear();
    this.typingSaid.clear();
    this.region.textContent = "";
  }

  _note(text) {
    if (!this.notes.includes(text)) this.notes.push(text);
    this._schedule();
  }

  _schedule() {
    if (this.timer) return;
    const wait = Math.max(BATCH_MS, this.lastAt + BATCH_MS - Date.now());
    this.timer = setTimeout(() => this._flush(), wait);
  }

  _flush() {
    this.timer = null;
    const text = [this._messagesSentence(), ...this.notes.slice(0, 3), this._comingsSentence()].filter(Boolean).join(" ");
    this.messages = [];
    this.notes = [];
    this.comings.clear();
    if (!text) return;
    this.lastAt = Date.now();
    // A new text node each time: screen readers announce an addition, even of the same words.
    this.region.replaceChildren(document.createTextNode(text));
  }

  _messagesSentence() {
    const messages = this.messages;
    if (messages.length === 0) return "";
    const last = messages[messages.length - 1];
    const said = `${last.sender}${last.mentionsMe ? " mentioned you" : ""}: ${excerpt(last.text, SAID)}`;
    if (messages.length === 1) return said;
    const senders = [...new Set(messages.map((m) => m.sender))];
    const from = senders.length <= 3 ? listOf(senders) : `${senders.length} people`;
    const mentions = messages.filter((m) => m.mentionsMe).length;
    return `${messages.length} new messages from ${from}${mentions ? `, ${mentions} mentioning you` : ""}. Latest, ${said}`;
  }

  /** Who came online or went offline: by name for a few, as counts in a busy group. */
  _comingsSentence() {
    const online = [...this.comings].filter(([, on]) => on).map(([name]) => name);
    const offline = [...this.comings].filter(([, on]) => !on).map(([name]) => name);
    const say = (names, one, many, verb) =>
      names.length === 0 ? "" : names.length <= 3 ? `${listOf(names)} ${names.length === 1 ? one : many}.` : `${names.length} people ${verb}.`;
    return [say(online, "is online", "are online", "came online"), say(offline, "went offline", "went offline", "went offline")]
      .filter(Boolean).join(" ");
  }
}

function listOf(names) {
  return names.length <= 1 ? names.join("") : `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}`;
}
