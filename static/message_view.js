// One message as the page shows it: the quote it replies to, its text
// (Markdown-lite and math), its reactions, pin and question state, and the
// buttons that act on it. Buttons carry `data-action`; app.js handles them.

import { el } from "./dom.js";
import { attachmentList } from "./files.js";
import { renderText } from "./markdown.js";

// The reaction picker's choices, with their names for screen readers.
export const PICKER_EMOJI = [
  ["👍", "thumbs up"], ["❤️", "heart"], ["😂", "laughing"], ["🎉", "party"],
  ["🤔", "thinking"], ["🙏", "thank you"], ["✅", "done"], ["👀", "looking"],
];
const EXCERPT = 80; // code points of a quote or a list entry

export function excerpt(text, length = EXCERPT) {
  const chars = [...(text || "")];
  return chars.length > length ? chars.slice(0, length).join("") + "…" : chars.join("");
}

/**
 * The parts of a message's item below its header. `view` answers questions
 * about other messages of the group (`question(id)`: the held question with
 * that id; `isAccepted(id)`: some held question accepted it).
 */
export function messageBody(message, me, view) {
  const parts = [];
  if (message.reply_to) parts.push(replyQuote(message.reply_to));
  const content = el("div", { class: "content", "data-testid": "message-content" });
  if (message.deleted) content.textContent = "message deleted";
  else content.append(renderText(message.content));
  parts.push(content);
  if (!message.deleted && message.attachments?.length) parts.push(attachmentList(message.attachments));
  if (!message.deleted && message.reactions?.length) parts.push(reactions(message, me));
  return parts;
}

function replyQuote(reply) {
  const text = reply.deleted ? "message deleted" : excerpt(reply.excerpt);
  const quote = el("button", {
    type: "button", class: "reply-quote", "data-action": "jump", "data-testid": "reply-quote",
    "data-jump-seq": String(reply.seq), title: "Show that message",
  });
  // Its name is what it shows, with "Replying to" before it for screen readers.
  quote.append(el("span", { class: "visually-hidden" }, "Replying to "), el("span", { class: "quote-sender" }, reply.sender_name),
    el("span", { class: "visually-hidden" }, ": "), el("span", { class: "quote-text" }, text));
  return quote;
}

function reactions(message, me) {
  const bar = el("div", { class: "reactions", role: "group", "aria-label": "Reactions" });
  for (const { emoji, count, user_ids: users } of message.reactions) {
    const mine = users.includes(me);
    bar.append(el("button", {
      type: "button", class: "reaction-chip", "data-action": "toggle-reaction", "data-emoji": emoji,
      "data-testid": "reaction-chip", "aria-pressed": String(mine),
      "aria-label": `${emoji} ${count} ${count === 1 ? "reaction" : "reactions"}${mine ? ", including yours" : ""}`,
    }, `${emoji} ${count}`));
  }
  return bar;
}

/** Labels next to the sender: question state, pin, accepted answer. */
export function badges(message, view) {
  const out = [];
  if (message.deleted) return out;
  if (message.kind === "question") {
    const answered = message.answer_id !== null;
    out.push(el("span", { class: `tag ${answered ? "answered" : "open"}`, "data-testid": "question-state" },
      answered ? "Question · answered" : "Question · open"));
  }
  if (view.isAccepted(message.id)) {
    out.push(el("span", { class: "tag answered", "data-testid": "accepted-answer" }, "Accepted answer"));
  }
  if (message.pinned) out.push(el("span", { class: "tag pinned", "data-testid": "pinned-mark" }, "Pinned"));
  return out;
}

/** The buttons of a stored message. */
export function actions(message, me, view) {
  const bar = el("span", { class: "actions" });
  if (message.deleted) return bar;
  const button = (action, testid, text, extra = {}) =>
    el("button", { type: "button", "data-action": action, "data-testid": testid, ...extra }, text);
  bar.append(
    button("reply", "reply-button", "Reply"),
    button("react", "react-button", "React", { "aria-haspopup": "true" }),
    button("pin", "pin-button", message.pinned ? "Unpin" : "Pin", { "aria-pressed": String(Boolean(message.pinned)) }),
  );
  // The asker accepts an answer among the replies to their open (or answered) question.
  const question = message.reply_to && view.question(message.reply_to.id);
  if (question && question.sender_id === me && message.sender_id !== me && !question.deleted) {
    const accepted = question.answer_id === message.id;
    bar.append(button("accept", "accept-answer", accepted ? "Accepted" : "Accept answer",
      { "aria-pressed": String(accepted), "data-question-id": question.id }));
  }
  if (message.sender_id === me) {
    bar.append(button("edit", "message-edit", "Edit"), button("delete", "message-delete", "Delete"));
  }
  return bar;
}

/** The reaction picker, opened under a message. */
export function reactionPicker() {
  const picker = el("div", { class: "reaction-picker", role: "group", "aria-label": "Choose a reaction",
    "data-testid": "reaction-picker" });
  for (const [emoji, name] of PICKER_EMOJI) {
    picker.append(el("button", { type: "button", "data-action": "pick-reaction", "data-emoji": emoji,
      "aria-label": `React with ${name}` }, emoji));
  }
  return picker;
}
