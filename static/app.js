// The bundled test page: sign-in, the group list, the open group, the composer.
// The protocol side (connection, token refresh, ordered resends, timelines exact
// by rev, catch-up) is the client package, clients/js, served at /static/client/;
// this file is what a person sees of it. Automation drives it through the
// data-testid attributes.

import { ChatSession } from "/static/client/index.js";
import { Announcer } from "./announcer.js";
import { Compose } from "./compose.js";
import { Conversation } from "./conversation.js";
import { Tray, downloadFile, openImage, useToken } from "./files.js";
import { reactionPicker } from "./message_view.js";
import { People, TypingAnnouncer } from "./people.js";
import {
  demoToken, demoUsers, forgetSession, saveOutbox, saveSession, savedOutbox, savedSession, tokenSubject,
} from "./session.js";
import { Timeline, el } from "./timeline.js";

const PAGE_SIZE = 50;
const MAX_CONTENT = 4000; // code points

const $ = (id) => document.getElementById(id);
const ui = {
  signIn: $("sign-in"), chat: $("chat"),
  demoSection: $("demo-section"), demoUser: $("demo-user"), demoSignIn: $("demo-sign-in"),
  tokenForm: $("token-form"), tokenInput: $("token-input"),
  me: $("me"), state: $("connection-state"), reconnect: $("reconnect"), signOut: $("sign-out"),
  errorBar: $("error-bar"), error: $("error"), errorDismiss: $("error-dismiss"),
  sessionStatus: $("session-status"), sessionBar: $("session-bar"), sessionSignIn: $("session-sign-in"),
  groups: $("groups"), noGroups: $("no-groups"), joinForm: $("join-form"), joinInput: $("join-input"),
  groupName: $("group-name"), groupId: $("group-id"), placeholder: $("placeholder"),
  scroller: $("scroller"), historyTop: $("history-top"), loadOlder: $("load-older"), historyStart: $("history-start"),
  composer: $("composer"), input: $("message-input"), send: $("send"), editBanner: $("edit-banner"),
  askQuestion: $("ask-question"), searchInput: $("search-input"), searchButton: $("search-button"),
  unanswered: $("filter-unanswered"), groupsTitle: $("groups-title"),
  attach: $("attach"), fileInput: $("file-input"), room: document.querySelector(".room"), dropHint: $("drop-hint"),
  viewer: $("viewer"),
};

const state = {
  demo: false, // the server offers the demo sign-in
  demoUser: null, // signed in through the demo picker: the token can be renewed
  me: null, // our user id: the token's `sub`
  session: null, // the client package's ChatSession
  conn: null, // its connection
  outbox: null, // its outbox
  everConnected: false,
  expiresAt: 0, // when the session ends (ms), from session_expiring
  groups: [], // the list_groups answer
  view: null, // the open group's Timeline
  joining: null, // the id of the group being joined
  editing: null, // the message being edited
};
const people = new People($("online"), $("typing"));
const announcer = new Announcer($("announcer"));
useToken(() => state.conn?.token ?? "");
const tray = new Tray({
  list: $("upload-tray"), groupId: () => state.view?.groupId ?? "", error: (text) => showError(`File not attached: ${text}`),
});
people.onMyName = (name) => { ui.me.textContent = name; };
const typing = new TypingAnnouncer((groupId, isTyping) => state.conn?.notify("typing", { group_id: groupId, is_typing: isTyping }));
const compose = new Compose({
  input: ui.input, replyBanner: $("reply-banner"), replyText: $("reply-text"), replyCancel: $("reply-cancel"),
  questionToggle: ui.askQuestion, suggestions: $("mention-suggestions"), candidates: mentionCandidates,
});
const conversation = new Conversation({
  pinnedBar: $("pinned-bar"), pinnedList: $("pinned-list"), panel: $("panel"), panelTitle: $("panel-title"),
  panelList: $("panel-list"), panelClose: $("panel-close"), searchForm: $("search-form"), searchInput: ui.searchInput,
  unanswered: ui.unanswered, request: (event, payload) => state.conn.request(event, payload),
  groupName: (id) => state.groups.find((g) => g.id === id)?.name, jump: jumpTo,
  error: (err) => showError(describe(err)),
});

/** Whom the open group's messages may mention: the members seen there (online or in its messages). */
function mentionCandidates() {
  const ids = new Set(people.online);
  for (const m of state.view?.bySeq.values() ?? []) if (m.sender_id) ids.add(m.sender_id);
  ids.delete(state.me);
  return [...ids].map((id) => ({ id, name: people.nameOf(id) }))
    .filter((p) => p.name && p.name !== p.id)
    .sort((a, b) => a.name.localeCompare(b.name));
}

// -- errors and connection state --

function showError(text) {
  ui.error.textContent = text;
  ui.errorBar.hidden = false;
}

function clearError() {
  const hadFocus = ui.errorBar.contains(document.activeElement);
  ui.error.textContent = "";
  ui.errorBar.hidden = true;
  if (hadFocus) focusWhereWorkGoesOn();
}

/** The focus left a control that went away: put it where the person was working. */
function focusWhereWorkGoesOn() {
  if (!ui.chat.hidden) {
    if (!ui.input.disabled) ui.input.focus();
    else ui.groupsTitle.focus();
  } else if (!ui.demoSection.hidden) ui.demoUser.focus();
  else ui.tokenInput.focus();
}

const describe = (err) => (typeof err.describe === "function" ? err.describe() : String(err.message || err));

/** "connected", "reconnecting" (the client retries by itself) or "disconnected". */
function setConnectionState(text, reason = "") {
  ui.state.textContent = text;
  ui.state.dataset.state = text;
  ui.state.title = reason; // e.g. "transport close", "xhr poll error"
  ui.reconnect.hidden = text !== "disconnected" || !state.conn;
}

// -- sign-in --

async function offerDemoUsers() {
  const users = await demoUsers();
  if (!users) return; // not a --demo server: the token field is the way in
  for (const user of users) {
    people.learn(user.id, user.name);
    ui.demoUser.append(el("option", { value: user.id }, user.name));
  }
  state.demo = true;
  ui.demoSection.hidden = false;
}

function signIn(token, demoUser = null) {
  clearError();
  state.demoUser = demoUser;
  state.me = people.me = tokenSubject(token);
  saveSession(token, demoUser);
  ui.me.textContent = people.nameOf(state.me);
  ui.signIn.hidden = true;
  ui.chat.hidden = false;
  ui.signOut.hidden = false;
  ui.searchInput.disabled = ui.searchButton.disabled = false;
  ui.groupsTitle.focus(); // the sign-in form is gone: the next Tab reaches the groups
  // A demo user's token is renewed by the session itself (before it runs out, and when a
  // reconnect is refused); anyone else is told when the session ends.
  const session = new ChatSession({
    token,
    tokenProvider: demoUser ? () => renewedDemoToken(demoUser) : null,
    createTimeline: (groupId) => new Timeline(groupId, state.me, { merging, merged }),
  });
  Object.assign(state, { session, conn: session.connection, outbox: session.outbox });
  // Messages written but not stored when the page went away (reloaded offline, say) are
  // sent again, each with its own client_msg_id, so none is lost and none stored twice.
  const me = state.me;
  session.outbox.restore(savedOutbox(me));
  session.on("changed", () => {
    if (state.session === session) saveOutbox(me, session.outbox.snapshot());
  });
  session.on("state", setConnectionState);
  session.on("connected", onConnected);
  session.on("refused", onRefused);
  session.on("event", onServerEvent);
  session.on("expiring", onSessionExpiring);
  session.on("refreshed", () => setSessionNotice(""));
  session.on("refresh_failed", onRefreshFailed);
  session.on("ended", onSessionEnded);
  session.on("rejoined", onRejoined);
  session.on("reset", (view) => {
    if (view !== state.view) return;
    conversation.open(view);
    updateHistoryTop();
  });
  session.on("left", (view, reason) => {
    // Removed while we were away (the rejoin was refused): as if told at once.
    if (reason !== "membership_revoked") onMembership("membership_revoked", { group_id: view.groupId });
  });
  session.on("error", (err, { timeline, during }) => {
    if (timeline !== state.view || err.code === "disconnected") return;
    showError(during === "catch-up" ? `Could not rejoin ${ui.groupName.textContent}: ${describe(err)}`
      : `Could not load missing changes: ${describe(err)}`);
  });
  session.on("acked", onSendAcked);
  session.on("failed", onSendFailed);
  session.on("retrying", onSendRetrying);
  session.connect().catch(() => {}); // a refusal is told by the "refused" event
}

async function renewedDemoToken(demoUser) {
  const token = await demoToken(demoUser);
  saveSession(token, demoUser); // a reload keeps the renewed session
  return token;
}

/** The Sign out button: unsent messages would be lost, so the person is asked first. */
function chooseSignOut() {
  const unsent = state.outbox?.snapshot().length ?? 0; // failed ones too: kept until dismissed
  if (unsent && !window.confirm(`${unsent === 1 ? "1 message is" : `${unsent} messages are`} not sent yet `
      + "and will be lost. Sign out anyway?")) return;
  signOut();
}

/** Back to the sign-in form. `keepUnsent`: the session ended without the person choosing
 * to leave (a refused or expired sign-in); what was not sent yet is kept in the tab and goes
 * once the same person signs in again. */
function signOut({ keepUnsent = false } = {}) {
  setSessionNotice("");
  const session = state.session;
  state.session = null; // the outbox's clearing on close is not saved over what is kept
  session?.close();
  forgetSession({ userId: state.me, keepUnsent });
  cancelEdit();
  showGroup(null);
  Object.assign(state, {
    demoUser: null, me: null, session: null, conn: null, outbox: null, everConnected: false, groups: [],
    joining: null, expiresAt: 0,
  });
  people.me = null;
  people.reset();
  renderGroups();
  ui.chat.hidden = true;
  ui.signIn.hidden = false;
  ui.signOut.hidden = true;
  ui.searchInput.disabled = ui.searchButton.disabled = true;
  ui.me.textContent = "";
  setConnectionState("disconnected");
  focusWhereWorkGoesOn();
}

/** The server refused the handshake (`connect_error` with `{code, message}`), and a demo
 * user's fresh token (the session asks for one) did not help either. */
function onRefused(err) {
  if (!state.everConnected) signOut({ keepUnsent: true }); // back to the sign-in form
  showError(`Sign-in refused: ${describe(err)}`);
}

// -- the session's end: a connection lasts as long as its token --

const clockTime = (ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

/** The notice about the session's end ("" clears it), with a "Sign in again" button or not. */
function setSessionNotice(text, offerSignIn = false) {
  ui.sessionStatus.textContent = text;
  ui.sessionBar.dataset.active = String(text !== "");
  ui.sessionSignIn.hidden = !offerSignIn;
}

/** `session_expiring`: a demo user's token is renewed by the session (halfway to the end,
 * so a failed renewal still leaves time to say so); anyone else is asked to sign in again. */
function onSessionExpiring(expiresAt) {
  state.expiresAt = expiresAt;
  if (!state.demoUser) {
    setSessionNotice(`Your session ends at ${clockTime(expiresAt)}: sign in again to keep chatting.`, true);
  }
}

function onRefreshFailed(err, expiresAt) {
  setSessionNotice(`Could not renew your session (${describe(err)}); it ends at ${clockTime(expiresAt)}.`, true);
}

/** `refresh_token` with a fresh demo token: the same connection goes on. */
async function renewDemoSession() {
  const conn = state.conn;
  try {
    const token = await demoToken(state.demoUser);
    if (state.conn !== conn) return; // signed out meanwhile
    state.expiresAt = await conn.refresh(token);
    saveSession(token, state.demoUser);
    setSessionNotice("");
  } catch (err) {
    if (state.conn === conn) onRefreshFailed(err, state.expiresAt);
  }
}

/** The server ended the session (its token expired). A demo user's session goes on with a
 * fresh token by itself; anyone else has to sign in again. */
function onSessionEnded({ reconnecting }) {
  if (!reconnecting) {
    setSessionNotice("Your session has ended because your sign-in expired. Sign in again to keep chatting.", true);
  }
}

async function signInAgain() {
  const conn = state.conn;
  if (state.demoUser && conn) {
    // A demo user gets a fresh token without leaving the page.
    if (conn.connected) {
      await renewDemoSession();
      return;
    }
    try {
      conn.token = await demoToken(state.demoUser);
      saveSession(conn.token, state.demoUser);
      setSessionNotice("");
      conn.connect().catch(() => {});
    } catch (err) {
      setSessionNotice(`Could not sign in again: ${describe(err)}`, true);
    }
    return;
  }
  signOut({ keepUnsent: true }); // back to the sign-in form, ready for a new token
  ui.tokenInput.focus();
}

// -- (re)connection and catch-up --

/** A connection is up (again). The session rejoins the open group and applies every change
 * made while we were away (by revision), then resends what waits in the outbox. */
async function onConnected() {
  state.everConnected = true;
  setSessionNotice(""); // a new session: the server warns again if its token is short
  people.reset(); // the join ack says who is online now
  await refreshGroups();
}

/** The open group was joined again after a reconnect: who is online now. */
function onRejoined(view, ack) {
  if (view === state.view) people.setOnline(ack.online);
}

/** Before a timeline draws messages (from acks, events, history or changes): learn the
 * senders' names, and whether the reader is at the bottom (then they stay there). */
function merging(view, messages) {
  for (const m of messages) people.learn(m.sender_id, m.sender_name);
  conversation.note(view, messages);
  return view === state.view && nearBottom();
}

function merged(view, messages, added, stick) {
  if (view !== state.view) return;
  if (added && stick) scrollToBottom();
  markReadSoon();
}

/** Messages from an ack into the open group (the session settles our sends and fills gaps). */
function mergeIntoView(view, messages) {
  return state.session.merge(view, messages);
}

// -- groups --

async function refreshGroups() {
  try {
    state.groups = (await state.conn.requestRetrying("list_groups")).groups;
    renderGroups();
  } catch (err) {
    showError(`Could not list your groups: ${describe(err)}`);
  }
}

function renderGroups() {
  const focused = ui.groups.contains(document.activeElement) ? document.activeElement.dataset.groupId : null;
  ui.groups.replaceChildren(
    ...state.groups.map((group) => {
      const button = el("button", { type: "button", class: "group", "data-testid": "group", "data-group-id": group.id });
      if (state.view?.groupId === group.id) button.setAttribute("aria-current", "true");
      // What is seen (the name, count badges) is hidden from screen readers, which hear one
      // run of text instead: "Calculus I, 3 unread, 1 mention of you". One text node, because
      // browsers join separate blocks (an off-screen span is one) with a space of their own.
      button.append(el("span", { class: "group-name", "aria-hidden": "true" }, group.name));
      const said = [group.name];
      const badge = (testid, cls, shown, words) => {
        button.append(el("span", { class: cls, "data-testid": testid, "aria-hidden": "true" }, shown));
        said.push(words);
      };
      if (group.unread_count > 0) badge("unread-count", "badge", String(group.unread_count), `${group.unread_count} unread`);
      if (group.mention_count > 0) {
        badge("mention-count", "badge mention", `@${group.mention_count}`,
          `${group.mention_count} ${group.mention_count === 1 ? "mention" : "mentions"} of you`);
      }
      button.append(el("span", { class: "visually-hidden" }, said.join(", ")));
      const item = el("li");
      item.append(button);
      return item;
    }),
  );
  ui.noGroups.hidden = state.groups.length > 0 || !state.conn;
  if (focused) {
    // Counts change under a person moving through the list: the focus stays on their group.
    const again = ui.groups.querySelector(`[data-group-id="${CSS.escape(focused)}"]`);
    if (again) again.focus();
    else ui.groupsTitle.focus();
  }
}

/** Join a group (from the list or by id); only a successful join leaves the open one. */
async function openGroup(groupId) {
  clearError();
  groupId = groupId.trim().toLowerCase(); // answers and events carry lowercase ids
  if (state.joining === groupId) return;
  if (state.view?.groupId === groupId) {
    state.joining = null; // back to the open group: a join under way is not wanted any more
    return;
  }
  if (!state.conn.connected) {
    showError("Not connected to the server.");
    return;
  }
  state.joining = groupId;
  let next, ack;
  try {
    // The session collects the group's events from the moment the join is asked.
    ({ timeline: next, ack } = await state.session.open(groupId, { limit: PAGE_SIZE }));
  } catch (err) {
    if (state.joining === groupId) state.joining = null;
    if (err.code !== "cancelled") showError(describe(err)); // e.g. "You are not a member of this group."
    return;
  }
  if (state.joining !== groupId) {
    // Another group was picked meanwhile (or this one again, and that call shows it).
    if (state.view?.groupId !== groupId) state.session.leave(groupId);
    return;
  }
  state.joining = null;
  if (state.view) {
    typing.stop();
    state.session.leave(state.view.groupId);
  }
  cancelEdit();
  people.reset();
  people.setOnline(ack.online);
  showGroup(next, ack.group.name);
  conversation.open(next);
  for (const entry of state.outbox.forGroup(groupId)) next.addPending(entry, people.nameOf(state.me));
  updateHistoryTop();
  scrollToBottom();
  markReadSoon(); // the page came in before the group was shown
  loadOlderToFill();
}

/** Show a timeline, or the "pick a group" placeholder for `null`. */
function showGroup(view, name = "") {
  if (state.view !== view) announcer.reset();
  state.view = view;
  ui.scroller.querySelector("ol.messages")?.remove();
  if (view) {
    view.list.setAttribute("aria-label", `Messages in ${name}`);
    ui.scroller.append(view.list);
  }
  ui.placeholder.hidden = view !== null;
  ui.groupName.textContent = view ? name : "No group open";
  ui.groupId.textContent = view ? view.groupId : "";
  ui.input.disabled = ui.send.disabled = ui.askQuestion.disabled = ui.attach.disabled = view === null; // offline sends wait in the outbox
  tray.clear(); // files are uploaded to one group
  ui.unanswered.disabled = view === null;
  if (!view) conversation.open(null);
  compose.reset();
  renderGroups();
  updateHistoryTop();
  if (view) ui.input.focus();
}

// -- scrolling and older history --

function nearBottom() {
  const s = ui.scroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight < 60;
}

function scrollToBottom() {
  ui.scroller.scrollTop = ui.scroller.scrollHeight;
}

function updateHistoryTop() {
  const view = state.view;
  ui.historyTop.hidden = !view;
  if (!view) return;
  ui.loadOlder.hidden = !view.hasOlder;
  ui.loadOlder.disabled = view.loadingOlder;
  ui.loadOlder.textContent = view.loadingOlder ? "Loading older messages…" : "Load older messages";
  ui.historyStart.hidden = view.hasOlder;
}

async function loadOlder() {
  const view = state.view;
  if (!view || !view.hasOlder || view.loadingOlder || !state.conn.connected) return;
  view.loadingOlder = true;
  updateHistoryTop();
  try {
    const ack = await state.conn.requestRetrying("get_history", { group_id: view.groupId, before_seq: view.oldest, limit: PAGE_SIZE });
    if (state.view !== view) return;
    // Keep what the reader looks at in place while rows are added above it.
    const fromBottom = ui.scroller.scrollHeight - ui.scroller.scrollTop;
    view.hasOlder = ack.has_more;
    mergeIntoView(view, ack.messages);
    ui.scroller.scrollTop = ui.scroller.scrollHeight - fromBottom;
  } catch (err) {
    showError(`Could not load older messages: ${describe(err)}`);
  } finally {
    const hadFocus = document.activeElement === ui.loadOlder;
    view.loadingOlder = false;
    updateHistoryTop();
    if (hadFocus && ui.loadOlder.hidden && state.view === view) focusMessage(view, view.oldest);
  }
  loadOlderToFill();
}

/** Still at the top (or no scroll bar at all): keep loading. */
function loadOlderToFill() {
  const s = ui.scroller;
  if (state.view?.hasOlder && (s.scrollHeight <= s.clientHeight || s.scrollTop < 80)) loadOlder();
}

// -- read markers --

let markTimer = null;
/** At most one mark_read per 300 ms, however fast messages come in. */
function markReadSoon() {
  markTimer ??= setTimeout(() => {
    markTimer = null;
    markRead();
  }, 300);
}

async function markRead() {
  const view = state.view;
  if (!view || view.lastMarked >= view.top || document.visibilityState !== "visible" || !state.conn?.connected) return;
  view.lastMarked = view.top;
  try {
    const ack = await state.conn.request("mark_read", { group_id: view.groupId, seq: view.top });
    const group = state.groups.find((g) => g.id === view.groupId);
    if (group) Object.assign(group, { unread_count: ack.unread_count, mention_count: ack.mention_count });
    renderGroups();
  } catch {
    view.lastMarked = 0; // best effort: try again with the next message
  }
}

// -- server events --

/** A server event, after the session applied it (`timeline`: the group's, if joined). */
function onServerEvent(event, payload, { timeline: view, added }) {
  if (event === "membership_revoked" || event === "group_added") {
    onMembership(event, payload);
    return;
  }
  // Only the open group's events (and the one being joined) matter; we left
  // the rooms of the others, and list_groups counts their unread messages.
  if (event === "message" || event === "message_updated" || event === "message_deleted") {
    if (!view) return;
    if (event === "message" && view === state.view) people.typing(payload.sender_id, false);
    if (event === "message_deleted" && state.editing?.id === payload.id) cancelEdit();
    if (event === "message" && added && view === state.view && payload.sender_id !== state.me) announceMessage(payload);
  } else if (event === "typing") {
    people.learn(payload.user_id, payload.name);
    if (view && view === state.view && payload.user_id !== state.me) {
      if (payload.is_typing && !people.typers.has(payload.user_id)) announcer.typing(payload.user_id, people.nameOf(payload.user_id));
      people.typing(payload.user_id, payload.is_typing);
    }
  } else if (event === "presence") {
    if (view && view === state.view) {
      if (payload.user_id !== state.me && people.online.has(payload.user_id) !== payload.online) {
        announcer.presence(payload.name || people.nameOf(payload.user_id), payload.online);
      }
      people.presence(payload);
    }
  }
}

/** A new message in the open group, for screen readers (batched with others that come with it). */
function announceMessage(message) {
  const sender = message.kind === "system"
    ? `Announcement from ${message.sender_name || "the platform"}`
    : message.sender_name || people.nameOf(message.sender_id);
  announcer.message(sender, message.content, (message.mentions || []).includes(state.me));
}

/** The platform changed our groups: the list follows, and an open group we lost closes. */
function onMembership(event, payload) {
  if (event === "group_added") {
    const group = payload.group;
    state.groups = [...state.groups.filter((g) => g.id !== group.id), group]
      .sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
    renderGroups();
    return;
  }
  const lost = state.groups.find((g) => g.id === payload.group_id);
  state.groups = state.groups.filter((g) => g.id !== payload.group_id);
  if (state.joining === payload.group_id) state.joining = null;
  if (state.view?.groupId === payload.group_id) {
    typing.stop();
    cancelEdit();
    people.reset();
    showGroup(null);
    showError(`You are no longer a member of ${lost ? lost.name : "this group"}.`);
  }
  renderGroups();
}

// -- sending, editing, deleting --

function submit() {
  const text = ui.input.value;
  if (!state.view) return;
  if (tray.uploading) {
    showError("Wait for your files to finish uploading.");
    return;
  }
  const hasFiles = tray.items.some((item) => item.attachment);
  if (!text.trim() && !hasFiles) return;
  if ([...text].length > MAX_CONTENT) {
    showError(`A message can have at most ${MAX_CONTENT} characters.`);
    return;
  }
  clearError();
  if (state.editing) {
    saveEdit(text);
    return;
  }
  const extra = compose.take(text);
  const files = tray.take();
  if (files.length) extra.attachments = files;
  const entry = state.outbox.add(state.view.groupId, text, extra);
  state.view.addPending(entry, people.nameOf(state.me));
  ui.input.value = "";
  typing.stop();
  scrollToBottom();
  // The outbox sends it after the group's earlier sends are stored; offline, after the reconnect.
}

function onSendAcked(message) {
  const view = state.session.timeline(message.group_id);
  if (!view) return;
  mergeIntoView(view, [message]);
  view.removePending(message.client_msg_id); // also when a resend is answered `duplicate: true`
}

function onSendFailed(entry, err) {
  if (state.view?.groupId === entry.groupId) state.view.markFailed(entry.id, describe(err));
  showError(`Message not sent: ${describe(err)}`);
}

function onSendRetrying(entry) {
  if (state.view?.groupId === entry.groupId) state.view.markRetrying(entry.id, entry.attempt);
}

function startEdit(message) {
  cancelEdit();
  typing.stop();
  state.editing = message;
  state.view.nodes.get(message.seq)?.classList.add("editing");
  ui.editBanner.hidden = false;
  ui.input.value = message.content;
  ui.input.focus();
}

function cancelEdit() {
  if (!state.editing) return;
  state.view?.nodes.get(state.editing.seq)?.classList.remove("editing");
  state.editing = null;
  ui.editBanner.hidden = true;
  ui.input.value = "";
}

async function saveEdit(text) {
  const { id, group_id: groupId } = state.editing;
  try {
    const ack = await state.conn.request("edit_message", { group_id: groupId, message_id: id, content: text });
    cancelEdit();
    if (state.view?.groupId === groupId) mergeIntoView(state.view, [ack.message]);
  } catch (err) {
    showError(`Could not edit the message: ${describe(err)}`);
  }
}

async function deleteMessage(message, button) {
  // The first click arms the button; a second one within 3 s deletes.
  if (button.dataset.armed !== "true") {
    button.dataset.armed = "true";
    button.textContent = "Confirm delete";
    setTimeout(() => {
      button.dataset.armed = "false";
      button.textContent = "Delete";
    }, 3000);
    return;
  }
  try {
    const ack = await state.conn.request("delete_message", { group_id: message.group_id, message_id: message.id });
    if (state.view?.groupId === message.group_id) mergeIntoView(state.view, [ack.message]);
  } catch (err) {
    showError(`Could not delete the message: ${describe(err)}`);
  }
}

function onMessageAction(button) {
  const view = state.view;
  if (button.dataset.action === "dismiss") {
    const id = button.closest("li").dataset.clientMsgId;
    state.outbox.dismiss(id);
    view.removePending(id);
    ui.input.focus();
    return;
  }
  const message = view.messageOf(button);
  if (!message) return;
  const action = button.dataset.action;
  if (action === "edit") startEdit(message);
  else if (action === "delete") deleteMessage(message, button);
  else if (action === "reply") {
    compose.setReply(message);
    ui.input.focus();
  } else if (action === "react") toggleReactionPicker(button);
  else if (action === "pick-reaction") {
    closeReactionPicker(true);
    change("react", { message_id: message.id, emoji: button.dataset.emoji, on: true });
  } else if (action === "toggle-reaction") {
    change("react", { message_id: message.id, emoji: button.dataset.emoji, on: button.getAttribute("aria-pressed") !== "true" });
  } else if (action === "pin") change("pin_message", { message_id: message.id, pinned: !message.pinned });
  else if (action === "accept") {
    const accepted = button.getAttribute("aria-pressed") === "true";
    change("accept_answer", { question_id: button.dataset.questionId, answer_id: accepted ? null : message.id });
  } else if (action === "jump") jumpTo(view.groupId, Number(button.dataset.jumpSeq));
  else if (action === "open-file") {
    openImage(ui.viewer, button.dataset.url, button.dataset.name).catch((err) => showError(`Could not open the file: ${err.message}`));
  } else if (action === "download-file") {
    downloadFile(button.dataset.url, button.dataset.name).catch((err) => showError(`Could not download the file: ${err.message}`));
  }
}

/** A reaction, pin or acceptance: the ack carries the changed message (the room gets it too). */
async function change(event, payload) {
  const view = state.view;
  try {
    const ack = await state.conn.request(event, { group_id: view.groupId, ...payload });
    if (state.view === view) mergeIntoView(view, [ack.message]);
  } catch (err) {
    showError(describe(err));
  }
}

function toggleReactionPicker(button) {
  const item = button.closest("li.message");
  const open = item.querySelector(".reaction-picker");
  closeReactionPicker(false);
  if (open) return;
  item.append(reactionPicker());
  button.setAttribute("aria-expanded", "true");
  item.querySelector(".reaction-picker button").focus();
}

/** Close the open picker; `refocus` puts the focus back on its message's React button. */
function closeReactionPicker(refocus) {
  for (const picker of document.querySelectorAll(".reaction-picker")) {
    const item = picker.closest("li.message");
    picker.remove();
    const opener = item?.querySelector('[data-action="react"]');
    opener?.setAttribute("aria-expanded", "false");
    if (refocus) opener?.focus();
  }
}

/** Open a message in its group (a search result, a pin, a quote): older pages load until it is there. */
async function jumpTo(groupId, seq) {
  if (state.view?.groupId !== groupId) await openGroup(groupId);
  const view = state.view;
  if (!view || view.groupId !== groupId) return;
  while (!view.nodes.has(seq) && view.hasOlder && state.view === view && state.conn.connected) {
    if (view.loadingOlder) await new Promise((resolve) => setTimeout(resolve, 50));
    else await loadOlder();
  }
  const node = view.nodes.get(seq);
  if (!node) {
    showError("That message is not in this group's history any more.");
    return;
  }
  node.scrollIntoView({ block: "center" });
  node.classList.add("highlight");
  setTimeout(() => view.nodes.get(seq)?.classList.remove("highlight"), 2500);
  focusMessage(view, seq, { scroll: false });
}

/** Put the keyboard on a message of the open group (it becomes the list's tab stop). */
function focusMessage(view, seq, { scroll = true } = {}) {
  const node = view.nodes.get(seq);
  if (!node) return;
  view.setActive(seq);
  node.focus({ preventScroll: !scroll });
}

/** Keys in the message list: arrows, Home and End move between messages (older pages load
 * at the top); Escape leaves a message's buttons for the message itself. */
async function onListKey(event) {
  const view = state.view;
  const item = event.target.closest("li.message");
  if (!view || !item || !item.dataset.seq || event.altKey || event.ctrlKey || event.metaKey) return;
  const seq = Number(item.dataset.seq);
  const onItem = event.target === item;
  if (event.key === "Escape" && !onItem && !event.target.closest(".reaction-picker")) {
    event.preventDefault();
    focusMessage(view, seq);
    return;
  }
  if (!onItem) return;
  let to = null;
  if (event.key === "ArrowUp" || event.key === "ArrowDown") {
    event.preventDefault();
    to = view.neighbour(seq, event.key === "ArrowUp" ? -1 : 1);
    if (to === null && event.key === "ArrowUp" && view.hasOlder) {
      await loadOlder();
      to = view.neighbour(seq, -1);
    }
  } else if (event.key === "Home" || event.key === "End") {
    event.preventDefault();
    to = event.key === "Home" ? view.oldest : view.newest;
  }
  if (to !== null && state.view === view) focusMessage(view, to);
}

// -- wiring --

function wire() {
  ui.demoSignIn.addEventListener("click", async () => {
    try {
      signIn(await demoToken(ui.demoUser.value), ui.demoUser.value);
    } catch (err) {
      showError(`Demo sign-in failed: ${describe(err)}`);
    }
  });
  ui.tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = ui.tokenInput.value.trim();
    if (token) signIn(token);
    else showError("Paste a token first.");
  });
  ui.signOut.addEventListener("click", chooseSignOut);
  ui.reconnect.addEventListener("click", () => state.conn?.connect().catch(() => {}));
  ui.errorDismiss.addEventListener("click", clearError);
  ui.sessionSignIn.addEventListener("click", signInAgain);
  ui.groups.addEventListener("click", (event) => {
    const button = event.target.closest("[data-group-id]");
    if (button) openGroup(button.dataset.groupId);
  });
  ui.joinForm.addEventListener("submit", (event) => {
    event.preventDefault();
    if (ui.joinInput.value.trim()) openGroup(ui.joinInput.value);
  });
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  ui.input.addEventListener("keydown", (event) => {
    if (compose.onKey(event)) return;
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    } else if (event.key === "Escape") {
      cancelEdit();
      compose.setReply(null);
    }
  });
  ui.input.addEventListener("input", () => {
    if (state.view && !state.editing) typing.input(state.view.groupId, ui.input.value.trim() !== "");
  });
  ui.input.addEventListener("blur", () => typing.stop());
  ui.scroller.addEventListener("scroll", () => {
    if (ui.scroller.scrollTop < 80) loadOlder();
  });
  ui.loadOlder.addEventListener("click", loadOlder);
  ui.scroller.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button && state.view) onMessageAction(button);
  });
  ui.scroller.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && event.target.closest(".reaction-picker")) closeReactionPicker(true);
    else onListKey(event);
  });
  ui.scroller.addEventListener("focusin", (event) => {
    const item = event.target.closest("li.message[data-seq]");
    if (item && state.view) state.view.setActive(Number(item.dataset.seq));
  });
  document.addEventListener("visibilitychange", markReadSoon);
  // Files: the Attach button opens the picker; files dropped on the open group are attached too.
  ui.attach.addEventListener("click", () => ui.fileInput.click());
  ui.fileInput.addEventListener("change", () => {
    tray.add([...ui.fileInput.files]);
    ui.fileInput.value = "";
    ui.input.focus();
  });
  ui.room.addEventListener("dragover", (event) => {
    if (!state.view || !event.dataTransfer?.types.includes("Files")) return;
    event.preventDefault();
    ui.dropHint.hidden = false;
  });
  ui.room.addEventListener("dragleave", (event) => {
    if (!ui.room.contains(event.relatedTarget)) ui.dropHint.hidden = true;
  });
  ui.room.addEventListener("drop", (event) => {
    ui.dropHint.hidden = true;
    if (!state.view || !event.dataTransfer?.files.length) return;
    event.preventDefault();
    tray.add([...event.dataTransfer.files]);
  });
  $("viewer-close").addEventListener("click", () => ui.viewer.close());
}

async function main() {
  wire();
  setConnectionState("disconnected");
  showGroup(null);
  await offerDemoUsers();
  // A reload keeps the session (a demo user's stale token is renewed).
  const saved = savedSession();
  if (saved) signIn(saved.token, saved.demoUser);
  // For the browser console and automation, e.g. studyChat.socket.io.engine.close().
  window.studyChat = {
    state,
    people,
    get socket() {
      return state.conn?.socket ?? null;
    },
  };
  document.body.dataset.ready = "true";
}

main();
