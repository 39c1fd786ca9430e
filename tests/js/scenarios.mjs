// Drives the chat server with the official socket.io-client and reports what it saw.
//
//   node scenarios.mjs SERVER_URL SCENARIO < config.json
//
// config: {"transport": "websocket"|"polling", "transports": {user: transport},
//          "tokens": {user: jwt}, "options": {...socket options for "connect"}}
// Prints one JSON document on stdout: {"scenario", "result", "calls", "waits_timed_out"}.
// The script only observes; tests/test_js_client.py holds the assertions.
// Timeouts below exist only so that a silent server cannot hang the run; a
// timed-out ack or wait is reported, never retried.

import { io } from "socket.io-client";

const ACK_TIMEOUT_MS = 15000;
const WAIT_TIMEOUT_MS = 15000;
const CLOSE_GRACE_MS = 300;

const CALCULUS = "64b0000000000000000000a1";
const CHEMISTRY = "64b0000000000000000000a2";
const UNKNOWN_GROUP = "64b0000000000000000000ff";
const USER_IDS = {
  ana: "64b000000000000000000001",
  juan: "64b000000000000000000002",
  mei: "64b000000000000000000003",
  omar: "64b000000000000000000004",
  lucia: "64b000000000000000000005",
};

const calls = []; // every emitWithAck: {client, event, outcome}
const waitsTimedOut = []; // every waitFor that gave up: {client, event, what}
const clients = [];

function transportOptions(transport) {
  if (transport === "websocket") return { transports: ["websocket"] };
  if (transport === "polling") return { transports: ["polling"], upgrade: false };
  if (transport === "default") return {}; // what a browser app gets: polling first, then the upgrade
  throw new Error(`unknown transport ${transport}`);
}

function describeError(err) {
  return {
    is_error: err instanceof Error,
    message: err?.message,
    message_type: typeof err?.message,
    has_data: err != null && Object.prototype.hasOwnProperty.call(err, "data"),
    data: err?.data === undefined ? null : err.data,
  };
}

class Client {
  constructor(label, url, options) {
    this.label = label;
    this.events = []; // [{event, payload}] in arrival order
    this.waiters = new Set();
    this.socket = io(url, { reconnection: false, forceNew: true, timeout: WAIT_TIMEOUT_MS, ...options });
    this.socket.onAny((event, ...args) => {
      this.events.push({ event, payload: args.length === 1 ? args[0] : args });
      for (const waiter of this.waiters) waiter();
    });
    clients.push(this);
  }

  /** Resolve with {outcome: "connected", transport, id} or {outcome: "connect_error", error}. */
  connected() {
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve({ outcome: "no_answer" }), WAIT_TIMEOUT_MS);
      this.socket.once("connect", () => {
        clearTimeout(timer);
        resolve({ outcome: "connected", transport: this.socket.io.engine.transport.name, id: this.socket.id });
      });
      this.socket.once("connect_error", (err) => {
        clearTimeout(timer);
        resolve({ outcome: "connect_error", error: describeError(err), connected: this.socket.connected });
      });
    });
  }

  /** emitWithAck; a missing ack is reported as {timed_out: true} (and in `calls`). */
  async call(event, ...args) {
    try {
      const ack = await this.socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, ...args);
      const outcome = ack && typeof ack === "object" ? (ack.ok === true ? "ok" : ack.error?.code ?? "malformed") : "malformed";
      calls.push({ client: this.label, event, outcome });
      return ack;
    } catch (err) {
      calls.push({ client: this.label, event, outcome: "timeout" });
      return { timed_out: true, error: String(err) };
    }
  }

  received(event) {
    return this.events.filter((e) => e.event === event).map((e) => e.payload);
  }

  /** The first `event` payload matching `match` (already received or still to come), or null. */
  waitFor(event, match = () => true, what = "") {
    const find = () => this.events.find((e) => e.event === event && match(e.payload));
    const found = find();
    if (found) return Promise.resolve(found.payload);
    return new Promise((resolve) => {
      const waiter = () => {
        const hit = find();
        if (hit) {
          this.waiters.delete(waiter);
          clearTimeout(timer);
          resolve(hit.payload);
        }
      };
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        waitsTimedOut.push({ client: this.label, event, what });
        resolve(null);
      }, WAIT_TIMEOUT_MS);
      this.waiters.add(waiter);
    });
  }

  /** Wait until the connection has really closed on our side. */
  close() {
    if (!this.socket.connected) {
      this.socket.close();
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.socket.once("disconnect", () => resolve());
      this.socket.disconnect();
    });
  }
}

/** A connected client for `user`, or an exception saying why it could not connect. */
async function signIn(ctx, user, transport = undefined) {
  const t = transport ?? ctx.transports?.[user] ?? ctx.transport;
  const client = new Client(user, ctx.url, { auth: { token: ctx.tokens[user] }, ...transportOptions(t) });
  const state = await client.connected();
  if (state.outcome !== "connected") {
    throw new Error(`${user} could not connect over ${t}: ${JSON.stringify(state)}`);
  }
  client.transport = state.transport;
  return client;
}

const isMessageId = (id) => (m) => m && m.id === id;

// ---------------------------------------------------------------- scenarios

const scenarios = {
  /** socket.io-client's default options: it connects over polling, then upgrades to websocket. */
  async upgrade(ctx) {
    const ana = await signIn(ctx, "ana", "default");
    const engine = ana.socket.io.engine;
    const upgraded = engine.transport.name === "websocket" || await new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), WAIT_TIMEOUT_MS);
      engine.once("upgrade", () => { clearTimeout(timer); resolve(true); });
    });
    const join = await ana.call("join_group", { group_id: CALCULUS });
    const sent = await ana.call("send_message", { group_id: CALCULUS, content: "after the upgrade" });
    const echo = await ana.waitFor("message", isMessageId(sent?.message?.id), "own message");
    return { first_transport: ana.transport, upgraded, transport_after: engine.transport.name, join, sent, echo };
  },

  /** Connect with arbitrary options (auth, extraHeaders, query); list groups when connected. */
  async connect(ctx) {
    const client = new Client("client", ctx.url, { ...(ctx.options ?? {}), ...transportOptions(ctx.transport) });
    const state = await client.connected();
    if (state.outcome === "connected") {
      state.list_groups = await client.call("list_groups");
      state.list_groups_with_empty_object = await client.call("list_groups", {});
    }
    return state;
  },

  async join_group(ctx) {
    const ana = await signIn(ctx, "ana");
    return {
      transport: ana.transport,
      join: await ana.call("join_group", { group_id: CALCULUS }),
      join_again_limit_2: await ana.call("join_group", { group_id: CALCULUS, limit: 2 }),
      join_since_1: await ana.call("join_group", { group_id: CALCULUS, since_seq: 1 }),
      join_since_0_limit_1: await ana.call("join_group", { group_id: CALCULUS, since_seq: 0, limit: 1 }),
      join_since_3: await ana.call("join_group", { group_id: CALCULUS, since_seq: 3 }),
      join_uppercase_id: await ana.call("join_group", { group_id: CALCULUS.toUpperCase() }),
      join_empty_group: await ana.call("join_group", { group_id: CHEMISTRY }),
    };
  },

  /** Ana and Juan in Calculus: send, duplicate resend, broadcast to both. */
  async send_message(ctx) {
    const ana = await signIn(ctx, "ana");
    const juan = await signIn(ctx, "juan");
    const joins = {
      ana: await ana.call("join_group", { group_id: CALCULUS }),
      juan: await juan.call("join_group", { group_id: CALCULUS }),
    };
    const first = await ana.call("send_message", { group_id: CALCULUS, content: "Hola! ¿Quién trae café? ☕", client_msg_id: "c-first" });
    const firstId = first?.message?.id;
    const broadcastFirst = {
      ana: await ana.waitFor("message", isMessageId(firstId), "first"),
      juan: await juan.waitFor("message", isMessageId(firstId), "first"),
    };
    const resend = await ana.call("send_message", { group_id: CALCULUS, content: "a different text", client_msg_id: "c-first" });
    // Barrier: a later message reaches both clients after anything the resend could have caused.
    const reply = await juan.call("send_message", { group_id: CALCULUS, content: "Yo llevo galletas", client_msg_id: "c-first" });
    const replyId = reply?.message?.id;
    await ana.waitFor("message", isMessageId(replyId), "reply");
    await juan.waitFor("message", isMessageId(replyId), "reply");
    return {
      transports: { ana: ana.transport, juan: juan.transport },
      joins,
      first,
      broadcast_first: broadcastFirst,
      resend,
      reply,
      messages_seen: { ana: ana.received("message"), juan: juan.received("message") },
    };
  },

  async history(ctx) {
    const ana = await signIn(ctx, "ana");
    const emptyJoin = await ana.call("join_group", { group_id: CHEMISTRY });
    const emptyHistory = await ana.call("get_history", { group_id: CHEMISTRY });
    const sends = [];
    for (let i = 1; i <= 7; i++) {
      sends.push(await ana.call("send_message", { group_id: CHEMISTRY, content: `note ${i}`, client_msg_id: `h-${i}` }));
    }
    const g = { group_id: CHEMISTRY };
    const pages = {
      latest_3: await ana.call("get_history", { ...g, limit: 3 }),
      before_5_limit_3: await ana.call("get_history", { ...g, before_seq: 5, limit: 3 }),
      before_2_limit_3: await ana.call("get_history", { ...g, before_seq: 2, limit: 3 }),
      after_0_limit_3: await ana.call("get_history", { ...g, after_seq: 0, limit: 3 }),
      after_3_limit_3: await ana.call("get_history", { ...g, after_seq: 3, limit: 3 }),
      after_6_limit_3: await ana.call("get_history", { ...g, after_seq: 6, limit: 3 }),
      after_7: await ana.call("get_history", { ...g, after_seq: 7 }),
      default_limit: await ana.call("get_history", g),
      null_bounds: await ana.call("get_history", { ...g, before_seq: null, after_seq: null, limit: null }),
      both_bounds: await ana.call("get_history", { ...g, before_seq: 5, after_seq: 1 }),
    };
    // Walk back from the latest page the way a client scrolls up.
    const walk = [];
    let page = await ana.call("get_history", { ...g, limit: 2 });
    walk.push(page);
    while (page?.ok && page.has_more && walk.length < 20) {
      page = await ana.call("get_history", { ...g, limit: 2, before_seq: page.messages[0].seq });
      walk.push(page);
    }
    // Mei, a member who never joined the room, reads the same history.
    const mei = await signIn(ctx, "mei");
    const meiHistory = await mei.call("get_history", { ...g, after_seq: 0, limit: 100 });
    return { empty_join: emptyJoin, empty_history: emptyHistory, sends, pages, walk_back: walk, mei_history: meiHistory };
  },

  async invalid_payloads(ctx) {
    const ana = await signIn(ctx, "ana");
    const c = { group_id: CALCULUS };
    const results = {
      send_content_number: await ana.call("send_message", { ...c, content: 123 }),
      send_missing_group_id: await ana.call("send_message", { content: "hi" }),
      send_unknown_field: await ana.call("send_message", { ...c, content: "hi", colour: "red" }),
      send_string_payload: await ana.call("send_message", "hello"),
      send_array_payload: await ana.call("send_message", [c]),
      send_no_payload: await ana.call("send_message"),
      send_blank_content: await ana.call("send_message", { ...c, content: " \n\t\u00a0 " }),
      send_too_long_content: await ana.call("send_message", { ...c, content: "x".repeat(4001) }),
      send_bad_group_id: await ana.call("send_message", { group_id: "calculus", content: "hi" }),
      send_client_msg_id_too_long: await ana.call("send_message", { ...c, content: "hi", client_msg_id: "k".repeat(65) }),
      join_number_payload: await ana.call("join_group", 42),
      join_limit_zero: await ana.call("join_group", { ...c, limit: 0 }),
      history_limit_string: await ana.call("get_history", { ...c, limit: "5" }),
      history_limit_101: await ana.call("get_history", { ...c, limit: 101 }),
      history_limit_float: await ana.call("get_history", { ...c, limit: 1.5 }),
      typing_string_boolean: await ana.call("typing", { ...c, is_typing: "yes" }),
      mark_read_boolean_seq: await ana.call("mark_read", { ...c, seq: true }),
      unknown_event: await ana.call("shout", { ...c, content: "HOLA" }),
    };
    // An unknown event without an ack is ignored and the connection keeps working.
    ana.socket.emit("shout", { content: "no ack" });
    const afterwards = {
      list_groups: await ana.call("list_groups"),
      // Nothing refused above was stored: the next message takes the next seq.
      valid_send: await ana.call("send_message", { ...c, content: "finally a valid one" }),
      connected: ana.socket.connected,
    };
    return { results, afterwards };
  },

  async refusals(ctx) {
    const ana = await signIn(ctx, "ana");
    const juan = await signIn(ctx, "juan");
    const lucia = await signIn(ctx, "lucia");
    const omar = await signIn(ctx, "omar");
    const c = { group_id: CALCULUS };
    const anaMessage = await ana.call("send_message", { ...c, content: "Ana's message" });
    const anaMessageId = anaMessage?.message?.id;
    return {
      lucia_join: await lucia.call("join_group", c),
      lucia_history: await lucia.call("get_history", c),
      lucia_send: await lucia.call("send_message", { ...c, content: "let me in" }),
      lucia_typing: await lucia.call("typing", { ...c, is_typing: true }),
      lucia_mark_read: await lucia.call("mark_read", { ...c, seq: 1 }),
      lucia_list_groups: await lucia.call("list_groups"),
      omar_join: await omar.call("join_group", c),
      unknown_group_join: await ana.call("join_group", { group_id: UNKNOWN_GROUP }),
      unknown_group_history: await ana.call("get_history", { group_id: UNKNOWN_GROUP }),
      unknown_group_send: await ana.call("send_message", { group_id: UNKNOWN_GROUP, content: "anyone?" }),
      ana_message: anaMessage,
      sender_id_of_other: await ana.call("send_message", { ...c, content: "I am Juan", sender_id: USER_IDS.juan }),
      sender_id_of_other_unknown_group: await ana.call("send_message", { group_id: UNKNOWN_GROUP, content: "x", sender_id: USER_IDS.juan }),
      sender_id_of_other_bad_content: await ana.call("send_message", { ...c, content: 123, sender_id: USER_IDS.juan }),
      sender_id_own: await ana.call("send_message", { ...c, content: "I am Ana", sender_id: USER_IDS.ana }),
      sender_id_own_uppercase: await ana.call("send_message", { ...c, content: "Still Ana", sender_id: USER_IDS.ana.toUpperCase() }),
      juan_edits_anas: await juan.call("edit_message", { ...c, message_id: anaMessageId, content: "hijacked" }),
      juan_deletes_anas: await juan.call("delete_message", { ...c, message_id: anaMessageId }),
      edit_unknown_message: await ana.call("edit_message", { ...c, message_id: "64b0000000000000000000ee", content: "x" }),
      edit_in_other_group: await ana.call("edit_message", { group_id: CHEMISTRY, message_id: anaMessageId, content: "x" }),
      lucia_edits_anas: await lucia.call("edit_message", { ...c, message_id: anaMessageId, content: "x" }),
      history_after: await ana.call("get_history", c),
    };
  },

  async typing(ctx) {
    const ana = await signIn(ctx, "ana");
    const juan = await signIn(ctx, "juan");
    await ana.call("join_group", { group_id: CALCULUS });
    await juan.call("join_group", { group_id: CALCULUS });
    const start = await ana.call("typing", { group_id: CALCULUS, is_typing: true });
    const juanSawStart = await juan.waitFor("typing", (t) => t?.is_typing === true, "ana starts");
    const stop = await ana.call("typing", { group_id: CALCULUS, is_typing: false });
    const juanSawStop = await juan.waitFor("typing", (t) => t?.is_typing === false, "ana stops");
    const juanTyping = await juan.call("typing", { group_id: CALCULUS, is_typing: true });
    const anaSawJuan = await ana.waitFor("typing", (t) => t?.user_id === USER_IDS.juan, "juan starts");
    // Barrier: anything the server sent Ana about her own typing arrived before this.
    const barrier = await ana.call("send_message", { group_id: CALCULUS, content: "barrier" });
    await ana.waitFor("message", isMessageId(barrier?.message?.id), "barrier");
    await juan.waitFor("message", isMessageId(barrier?.message?.id), "barrier");
    return {
      transports: { ana: ana.transport, juan: juan.transport },
      acks: { start, stop, juan: juanTyping },
      juan_saw_start: juanSawStart,
      juan_saw_stop: juanSawStop,
      ana_saw_juan: anaSawJuan,
      typing_seen: { ana: ana.received("typing"), juan: juan.received("typing") },
    };
  },

  async presence(ctx) {
    const ana = await signIn(ctx, "ana");
    const anaJoin = await ana.call("join_group", { group_id: CALCULUS });
    const juan = await signIn(ctx, "juan");
    const juanJoin = await juan.call("join_group", { group_id: CALCULUS });
    const anaSawJuanOnline = await ana.waitFor("presence", (p) => p?.user_id === USER_IDS.juan && p.online === true, "juan online");
    const juanJoinAgain = await juan.call("join_group", { group_id: CALCULUS });
    // Juan's second connection joins and leaves: his first connection keeps him online.
    const juan2 = await signIn(ctx, "juan", ctx.transports.ana);
    const juan2Join = await juan2.call("join_group", { group_id: CALCULUS });
    const juan2Leave = await juan2.call("leave_group", { group_id: CALCULUS });
    await juan2.close();
    const barrier = await juan.call("send_message", { group_id: CALCULUS, content: "barrier" });
    await ana.waitFor("message", isMessageId(barrier?.message?.id), "barrier");
    await juan.waitFor("message", isMessageId(barrier?.message?.id), "barrier");
    const juanPresenceSeen = juan.received("presence");
    await juan.close();
    const anaSawJuanOffline = await ana.waitFor("presence", (p) => p?.user_id === USER_IDS.juan && p.online === false, "juan offline");
    // Mei joins last: her join ack says who is online now, and her presence event closes the sequence.
    const mei = await signIn(ctx, "mei", ctx.transports.juan);
    const meiJoin = await mei.call("join_group", { group_id: CALCULUS });
    await ana.waitFor("presence", (p) => p?.user_id === USER_IDS.mei, "mei online");
    return {
      transports: { ana: ana.transport, juan: juan.transport },
      ana_join: anaJoin,
      juan_join: juanJoin,
      juan_join_again: juanJoinAgain,
      juan2_join: juan2Join,
      juan2_leave: juan2Leave,
      mei_join: meiJoin,
      ana_saw_juan_online: anaSawJuanOnline,
      ana_saw_juan_offline: anaSawJuanOffline,
      presence_seen: { ana: ana.received("presence"), juan: juanPresenceSeen, mei: mei.received("presence") },
    };
  },

  async mark_read(ctx) {
    const ana = await signIn(ctx, "ana");
    const juan = await signIn(ctx, "juan");
    const c = { group_id: CALCULUS };
    const join = await ana.call("join_group", c);
    const steps = {
      read_1: await ana.call("mark_read", { ...c, seq: 1 }),
      read_3: await ana.call("mark_read", { ...c, seq: 3 }),
      read_2_backwards: await ana.call("mark_read", { ...c, seq: 2 }),
      read_0: await ana.call("mark_read", { ...c, seq: 0 }),
      read_past_latest: await ana.call("mark_read", { ...c, seq: 999 }),
    };
    const juanSend = await juan.call("send_message", { ...c, content: "new from Juan" });
    const anaSend = await ana.call("send_message", { ...c, content: "new from Ana" });
    const groupsAfterSends = { ana: await ana.call("list_groups"), juan: await juan.call("list_groups") };
    const juanDelete = await juan.call("delete_message", { ...c, message_id: juanSend?.message?.id });
    const groupsAfterDelete = await ana.call("list_groups");
    await ana.close();
    // A new connection of Ana finds her marker where she left it.
    const ana2 = await signIn(ctx, "ana");
    const rejoin = await ana2.call("join_group", c);
    const readAll = await ana2.call("mark_read", { ...c, seq: rejoin?.latest_seq });
    return { join, steps, juan_send: juanSend, ana_send: anaSend, groups_after_sends: groupsAfterSends,
      juan_delete: juanDelete, groups_after_delete: groupsAfterDelete, rejoin, read_all: readAll };
  },

  async edit_delete(ctx) {
    const ana = await signIn(ctx, "ana");
    const juan = await signIn(ctx, "juan");
    const c = { group_id: CALCULUS };
    await ana.call("join_group", c);
    await juan.call("join_group", c);
    const sent = await ana.call("send_message", { ...c, content: "The exam is on Mondya", client_msg_id: "e-1" });
    const id = sent?.message?.id;
    const edit = await ana.call("edit_message", { ...c, message_id: id, content: "The exam is on Monday" });
    const updated = {
      ana: await ana.waitFor("message_updated", isMessageId(id), "edit"),
      juan: await juan.waitFor("message_updated", isMessageId(id), "edit"),
    };
    const historyAfterEdit = await juan.call("get_history", c);
    const del = await ana.call("delete_message", { ...c, message_id: id });
    const deleted = {
      ana: await ana.waitFor("message_deleted", isMessageId(id), "delete"),
      juan: await juan.waitFor("message_deleted", isMessageId(id), "delete"),
    };
    const deleteAgain = await ana.call("delete_message", { ...c, message_id: id });
    const editDeleted = await ana.call("edit_message", { ...c, message_id: id, content: "resurrected" });
    const historyAfterDelete = await juan.call("get_history", c);
    // Barrier: anything the repeated delete or the refused edit could have broadcast came before this.
    const barrier = await juan.call("send_message", { ...c, content: "barrier" });
    await ana.waitFor("message", isMessageId(barrier?.message?.id), "barrier");
    await juan.waitFor("message", isMessageId(barrier?.message?.id), "barrier");
    return {
      transports: { ana: ana.transport, juan: juan.transport },
      sent, edit, updated, history_after_edit: historyAfterEdit,
      delete: del, deleted, delete_again: deleteAgain, edit_deleted: editDeleted,
      history_after_delete: historyAfterDelete,
      seen: {
        ana: { updated: ana.received("message_updated"), deleted: ana.received("message_deleted") },
        juan: { updated: juan.received("message_updated"), deleted: juan.received("message_deleted") },
      },
    };
  },

  /** A question, a reply that mentions the asker, reactions, a pin and an accepted answer. */
  async conversation(ctx) {
    const ana = await signIn(ctx, "ana");
    const juan = await signIn(ctx, "juan");
    const c = { group_id: CALCULUS };
    await ana.call("join_group", c);
    await juan.call("join_group", c);
    const asked = await ana.call("send_message", { ...c, content: "¿Cómo se deriva $x^2$?", kind: "question" });
    const qid = asked?.message?.id;
    await ana.call("leave_group", c); // away: Juan's mention waits for her
    const reply = await juan.call("send_message", {
      ...c, content: "Con la regla de la potencia: $2x$", reply_to: qid, mentions: [USER_IDS.ana],
    });
    const rid = reply?.message?.id;
    const listed = await ana.call("list_groups");
    const rejoin = await ana.call("join_group", c);
    const reactions = [];
    for (const [who, emoji, on] of [[juan, "👍🏽", true], [ana, "👍🏽", true], [ana, "👨‍👩‍👧", true],
                                    [ana, "👍🏽", true], [juan, "👍🏽", false]]) {
      reactions.push(await who.call("react", { ...c, message_id: rid, emoji, on }));
    }
    const badEmoji = await ana.call("react", { ...c, message_id: rid, emoji: "+1", on: true });
    const pin = await juan.call("pin_message", { ...c, message_id: qid, pinned: true });
    const notAsker = await juan.call("accept_answer", { ...c, question_id: qid, answer_id: rid });
    const accept = await ana.call("accept_answer", { ...c, question_id: qid, answer_id: rid });
    const last = accept?.message?.rev;
    await juan.waitFor("message_updated", (m) => m.rev === last, "acceptance");
    return {
      transports: { ana: ana.transport, juan: juan.transport },
      asked, reply, listed, rejoin, reactions, bad_emoji: badEmoji, pin, not_asker: notAsker, accept,
      unanswered: await juan.call("get_history", { ...c, filter: "unanswered" }),
      pinned: await juan.call("get_history", { ...c, filter: "pinned" }),
      mentions: await ana.call("get_history", { ...c, filter: "mentions" }),
      juan_updates: juan.received("message_updated"),
    };
  },

  /**
   * Mixed sends, edits and deletes by three writers spread over the nodes in
   * `ctx.urls`, while a fourth client keeps leaving and coming back (on any
   * node) and keeps its copy of the group by `rev` only: since_rev on each
   * join, get_changes to page on and to fill a jump in the live revisions.
   */
  async revisions(ctx) {
    const { urls, group, total, writers: writerNames, reader: readerName } = ctx;
    let seed = 2026;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
    const pick = (list) => list[Math.floor(random() * list.length)];
    const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
    const connectTo = async (url, name, transport) => {
      const client = new Client(name, url, { auth: { token: ctx.tokens[name] }, ...transportOptions(transport) });
      const state = await client.connected();
      if (state.outcome !== "connected") throw new Error(`${name} could not connect to ${url}: ${JSON.stringify(state)}`);
      return client;
    };
    const BROADCASTS = new Set(["message", "message_updated", "message_deleted"]);
    const liveRevs = (client) => client.events.filter((e) => BROADCASTS.has(e.event)).map((e) => e.payload.rev);

    const writers = [];
    for (const [i, name] of writerNames.entries()) {
      const writer = await connectTo(urls[i % urls.length], name, "websocket");
      await writer.call("join_group", { group_id: group });
      writers.push(writer);
    }
    let done = 0;
    const ackedRevs = [];
    const refused = [];
    const write = async (client) => {
      const own = [];
      while (done < total) {
        done += 1;
        const roll = random();
        let ack;
        if (roll < 0.45 || own.length === 0) {
          ack = await client.call("send_message", { group_id: group, content: `${client.label} ${done}` });
          if (ack?.ok) own.push(ack.message.id);
        } else if (roll < 0.8) {
          ack = await client.call("edit_message", { group_id: group, message_id: pick(own), content: `edit ${done}` });
        } else {
          const target = own.splice(Math.floor(random() * own.length), 1)[0];
          ack = await client.call("delete_message", { group_id: group, message_id: target });
        }
        if (ack?.ok) ackedRevs.push(ack.message.rev);
        else refused.push(ack);
      }
    };

    class Replica {
      constructor() {
        this.state = new Map();
        this.mark = 0; // every change up to here is held
        this.above = new Set(); // revs seen above the mark
      }

      apply(message) {
        const held = this.state.get(message.id);
        if (!held || held.rev < message.rev) this.state.set(message.id, message);
        if (message.rev > this.mark) this.above.add(message.rev);
        this.upTo(this.mark);
      }

      upTo(rev) {
        this.mark = Math.max(this.mark, rev);
        for (const seen of this.above) if (seen <= this.mark) this.above.delete(seen);
        while (this.above.delete(this.mark + 1)) this.mark += 1;
      }

      get gap() {
        for (const seen of this.above) if (seen > this.mark) return true;
        return false;
      }

      async page(client, ack) {
        for (;;) {
          if (!ack?.ok) throw new Error(`catch-up refused: ${JSON.stringify(ack)}`);
          for (const message of ack.changes) this.apply(message);
          const last = ack.changes.length ? ack.changes[ack.changes.length - 1].rev : this.mark;
          this.upTo(ack.has_more ? last : Math.max(last, ack.latest_rev));
          if (!ack.has_more) return;
          ack = await client.call("get_changes", { group_id: group, after_rev: this.mark, limit: 37 });
        }
      }
    }

    const replica = new Replica();
    let visits = 0;
    let gapFills = 0;
    const disorder = [];
    const wander = async () => {
      while (done < total) {
        const client = await connectTo(pick(urls), readerName, pick(["websocket", "polling", "default"]));
        client.socket.onAny((event, message) => {
          if (BROADCASTS.has(event)) replica.apply(message);
        });
        await replica.page(client, await client.call("join_group", { group_id: group, since_rev: replica.mark, limit: 37 }));
        await sleep(50 + random() * 350);
        if (replica.gap) {
          gapFills += 1;
          await replica.page(client, await client.call("get_changes", { group_id: group, after_rev: replica.mark, limit: 37 }));
        }
        const revs = liveRevs(client);
        if (revs.some((rev, i) => i > 0 && rev <= revs[i - 1])) disorder.push(revs);
        await client.close();
        visits += 1;
        await sleep(random() * 300);
      }
    };

    await Promise.all([wander(), ...writers.map(write)]);
    const final = await connectTo(urls[urls.length - 1], readerName, "websocket");
    await replica.page(final, await final.call("join_group", { group_id: group, since_rev: replica.mark, limit: 37 }));
    const truth = new Replica();
    await truth.page(final, await final.call("get_changes", { group_id: group, after_rev: 0, limit: 100 }));
    await final.close();
    // The writers stayed connected: their broadcasts alone end at the last rev.
    const lastRev = Math.max(0, ...ackedRevs);
    const deadline = Date.now() + WAIT_TIMEOUT_MS;
    while (Date.now() < deadline && writers.some((w) => liveRevs(w).at(-1) !== lastRev)) await sleep(50);
    const sortById = (map) => [...map.values()].sort((a, b) => (a.id < b.id ? -1 : 1));
    return {
      acked_revs: ackedRevs.sort((a, b) => a - b),
      refused,
      visits,
      gap_fills: gapFills,
      disorder,
      replica_mark: replica.mark,
      truth_mark: truth.mark,
      replica: sortById(replica.state),
      truth: sortById(truth.state),
      writers_live_revs: writers.map(liveRevs),
    };
  },
};

// ---------------------------------------------------------------- main

async function readStdin() {
  let text = "";
  for await (const chunk of process.stdin) text += chunk;
  return text.trim() ? JSON.parse(text) : {};
}

async function main() {
  const [url, name] = process.argv.slice(2);
  if (!url || !scenarios[name]) {
    console.error(`usage: node scenarios.mjs SERVER_URL {${Object.keys(scenarios).join("|")}} < config.json`);
    process.exit(64);
  }
  const ctx = { ...(await readStdin()), url };
  let result;
  let fatal = null;
  try {
    result = await scenarios[name](ctx);
  } catch (err) {
    fatal = err?.stack ?? String(err);
  }
  await Promise.all(clients.map((client) => client.close().catch(() => {})));
  const report = JSON.stringify({ scenario: name, result, fatal, calls, waits_timed_out: waitsTimedOut }) + "\n";
  // A polling client POSTs its close packet after "disconnect" has fired, and
  // its last long-poll GET stays open until the server times it out, so Node
  // would not exit by itself for a while: give the goodbyes a moment to leave
  // (the server then sees clean closes, not vanished clients), then exit.
  // Only once the report has left: a write to a pipe is asynchronous past the
  // pipe's 64 KB, and process.exit() drops what is still queued.
  process.stdout.write(report, () => setTimeout(() => process.exit(fatal ? 1 : 0), CLOSE_GRACE_MS));
}

await main();
