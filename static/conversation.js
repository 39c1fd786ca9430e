// The open group's pinned messages, and the lists that lead into a group's
// history: search results and the unanswered questions. Choosing an entry
// opens its message in context (app.js's `jump`).

import { el } from "./dom.js";
import { excerpt } from "./message_view.js";

const PINNED_PAGE = 50; // the protocol's limit of pinned messages per group
const LIST_PAGE = 50;

export class Conversation {
  /**
   * `request(event, payload)` asks the server; `groupName(id)` names a group;
   * `jump(groupId, seq)` opens a message in its group.
   */
  constructor({ pinnedBar, pinnedList, panel, panelTitle, panelList, panelClose, searchForm, searchInput,
    unanswered, request, groupName, jump, error }) {
    Object.assign(this, { pinnedBar, pinnedList, panel, panelTitle, panelList, panelClose, searchForm,
      searchInput, unanswered, request, groupName, jump, error });
    this.view = null;
    searchForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const query = searchInput.value.trim();
      if (query) this.search(query);
    });
    unanswered.addEventListener("click", () => {
      if (unanswered.getAttribute("aria-pressed") === "true") this.closePanel();
      else this.showUnanswered();
    });
    panelClose.addEventListener("click", () => this.closePanel());
    panel.addEventListener("keydown", (event) => {
      if (event.key === "Escape") this.closePanel();
    });
    const onJump = (event) => {
      const entry = event.target.closest("[data-jump-group]");
      if (entry) this.jump(entry.dataset.jumpGroup, Number(entry.dataset.jumpSeq));
    };
    pinnedList.addEventListener("click", onJump);
    panelList.addEventListener("click", onJump);
  }

  // -- pins --

  /** A group was opened: its pinned messages, which may be older than any page held. */
  async open(view) {
    this.view = view;
    if (view) view.pinned = new Map();
    this.renderPinned();
    if (this.unanswered.getAttribute("aria-pressed") === "true") this.closePanel();
    if (!view) return;
    try {
      const ack = await this.request("get_history", { group_id: view.groupId, filter: "pinned", limit: PINNED_PAGE });
      this.note(view, ack.messages);
    } catch (err) {
      this.error(err);
    }
  }

  /** Messages of `view` arrived or changed: keep its pinned ones. */
  note(view, messages) {
    if (!view?.pinned) return;
    let changed = false;
    for (const m of messages) {
      const held = view.pinned.get(m.id);
      if (m.pinned && !m.deleted) {
        if (!held || held.rev < m.rev) {
          view.pinned.set(m.id, m);
          changed = true;
        }
      } else if (held && held.rev <= m.rev) {
        view.pinned.delete(m.id);
        changed = true;
      }
    }
    if (changed && view === this.view) this.renderPinned();
  }

  renderPinned() {
    const pinned = this.view ? [...this.view.pinned.values()].sort((a, b) => a.seq - b.seq) : [];
    this.pinnedBar.hidden = pinned.length === 0;
    this.pinnedList.replaceChildren(...pinned.map((m) => {
      const item = el("li");
      item.append(entry(m, `${m.sender_name}: ${excerpt(m.content, 50)}`, "pinned-message"));
      return item;
    }));
  }

  // -- lists --

  async search(query) {
    try {
      const ack = await this.request("search_messages", { query, limit: LIST_PAGE });
      this.showList(`Results for “${query}”`, ack.results, "search-result", "No message matches.");
    } catch (err) {
      this.error(err);
    }
  }

  async showUnanswered() {
    const view = this.view;
    if (!view) return;
    try {
      const ack = await this.request("get_history", { group_id: view.groupId, filter: "unanswered", limit: LIST_PAGE });
      this.showList("Unanswered questions", [...ack.messages].reverse(), "unanswered-question", "Every question has an answer.");
      this.unanswered.setAttribute("aria-pressed", "true");
    } catch (err) {
      this.error(err);
    }
  }

  showList(title, messages, testid, empty) {
    this.panelTitle.textContent = title;
    this.panelList.replaceChildren(...(messages.length ? messages.map((m) => {
      const item = el("li");
      const where = this.groupName(m.group_id);
      item.append(entry(m, `${where ? `${where} · ` : ""}${m.sender_name}: ${excerpt(m.content)}`, testid));
      return item;
    }) : [el("li", { class: "muted" }, empty)]));
    if (this.panel.hidden) this.opener = document.activeElement; // where Close and Escape go back to
    this.panel.hidden = false;
    this.unanswered.setAttribute("aria-pressed", "false");
    this.panelTitle.focus();
  }

  closePanel() {
    const hadFocus = this.panel.contains(document.activeElement);
    this.panel.hidden = true;
    this.panelList.replaceChildren();
    this.unanswered.setAttribute("aria-pressed", "false");
    if (hadFocus) {
      const back = this.opener?.isConnected && !this.opener.disabled ? this.opener : this.searchInput;
      back.focus();
    }
    this.opener = null;
  }
}

/** A button that opens message `m` in its group. */
function entry(m, text, testid) {
  return el("button", {
    type: "button", class: "entry", "data-testid": testid, "data-jump-group": m.group_id,
    "data-jump-seq": String(m.seq), "data-id": m.id,
  }, text);
}
