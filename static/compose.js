// What goes with the next message besides its text: the message it replies
// to, whether it is a question, and whom it mentions (picked from an @
// autocomplete of the people seen in the group).

import { el } from "./dom.js";
import { excerpt } from "./message_view.js";

const MAX_SUGGESTIONS = 6;

export class Compose {
  /**
   * `input` is the composer's textarea; `candidates()` lists `{id, name}` of the
   * people who may be mentioned (the open group's members the page knows).
   */
  constructor({ input, replyBanner, replyText, replyCancel, questionToggle, suggestions, candidates }) {
    Object.assign(this, { input, replyBanner, replyText, replyCancel, questionToggle, suggestions, candidates });
    this.replyTo = null; // the message replied to
    this.mentioned = new Map(); // display name -> user id, picked from the suggestions
    this.options = []; // the suggestions shown: {id, name}
    this.active = -1;
    replyCancel.addEventListener("click", () => {
      this.setReply(null);
      input.focus();
    });
    questionToggle.addEventListener("click", () => this.setQuestion(questionToggle.getAttribute("aria-pressed") !== "true"));
    input.addEventListener("input", () => this.suggest());
    // Closed a moment after the box loses the focus (a click on a suggestion lands first),
    // unless the focus came back meanwhile: typing then must not lose its suggestions.
    this.blurTimer = null;
    input.addEventListener("blur", () => {
      this.blurTimer = setTimeout(() => this.closeSuggestions(), 150);
    });
    input.addEventListener("focus", () => clearTimeout(this.blurTimer));
    suggestions.addEventListener("mousedown", (event) => event.preventDefault()); // keep the focus in the input
    suggestions.addEventListener("click", (event) => {
      const option = event.target.closest("[data-index]");
      if (option) this.pick(Number(option.dataset.index));
    });
  }

  // -- reply --

  setReply(message) {
    this.replyTo = message;
    this.replyBanner.hidden = !message;
    this.replyText.textContent = message ? `${message.sender_name}: ${excerpt(message.content, 60)}` : "";
  }

  // -- question --

  setQuestion(on) {
    this.questionToggle.setAttribute("aria-pressed", String(on));
  }

  get isQuestion() {
    return this.questionToggle.getAttribute("aria-pressed") === "true";
  }

  // -- mentions --

  /** The word being typed before the caret, when it starts with "@". */
  _token() {
    const upto = this.input.value.slice(0, this.input.selectionStart);
    const match = /(^|\s)@([^\s@]{0,40})$/u.exec(upto);
    return match ? { query: match[2], start: upto.length - match[2].length - 1 } : null;
  }

  suggest() {
    const token = this._token();
    if (!token) {
      this.closeSuggestions();
      return;
    }
    const query = token.query.toLocaleLowerCase();
    this.options = this.candidates()
      .filter(({ name }) => name.toLocaleLowerCase().split(/\s+/).some((part) => part.startsWith(query))
        || name.toLocaleLowerCase().startsWith(query))
      .slice(0, MAX_SUGGESTIONS);
    if (!this.options.length) {
      this.closeSuggestions();
      return;
    }
    this.active = 0;
    this._render();
  }

  _render() {
    this.suggestions.replaceChildren(...this.options.map(({ name }, i) => el("li", {
      id: `mention-option-${i}`, role: "option", "data-index": String(i), "data-testid": "mention-suggestion",
      "aria-selected": String(i === this.active),
    }, name)));
    this.suggestions.hidden = false;
    this.input.setAttribute("aria-activedescendant", `mention-option-${this.active}`);
  }

  closeSuggestions() {
    this.options = [];
    this.suggestions.hidden = true;
    this.suggestions.replaceChildren();
    this.input.removeAttribute("aria-activedescendant");
  }

  /** Keys for the suggestions; true when the key was theirs. */
  onKey(event) {
    if (this.suggestions.hidden || !this.options.length) return false;
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      const step = event.key === "ArrowDown" ? 1 : -1;
      this.active = (this.active + step + this.options.length) % this.options.length;
      this._render();
    } else if (event.key === "Enter" || event.key === "Tab") {
      this.pick(this.active);
    } else if (event.key === "Escape") {
      this.closeSuggestions();
    } else {
      return false;
    }
    event.preventDefault();
    return true;
  }

  pick(index) {
    const person = this.options[index];
    const token = this._token();
    if (!person || !token) return;
    const value = this.input.value;
    const caret = this.input.selectionStart;
    const text = `@${person.name} `;
    this.input.value = value.slice(0, token.start) + text + value.slice(caret);
    const at = token.start + text.length;
    this.input.setSelectionRange(at, at);
    this.mentioned.set(person.name, person.id);
    this.closeSuggestions();
    this.input.focus();
  }

  // -- the send --

  /** `send_message`'s extra fields for `text`, then a fresh state for the next message. */
  take(text) {
    const extra = {};
    if (this.replyTo) extra.reply_to = this.replyTo.id;
    if (this.isQuestion) extra.kind = "question";
    const mentions = [...this.mentioned].filter(([name]) => text.includes(`@${name}`)).map(([, id]) => id);
    if (mentions.length) extra.mentions = [...new Set(mentions)];
    this.reset();
    return extra;
  }

  reset() {
    this.setReply(null);
    this.setQuestion(false);
    this.mentioned.clear();
    this.closeSuggestions();
  }
}
