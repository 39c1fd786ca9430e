// A dropped network, a lost ack, a server restart, a missed broadcast: after
// each, a session holds exactly the server's state, and its sends are stored
// once each, in the order they were made.

import assert from "node:assert/strict";
import { test } from "node:test";
import { ANA, BEN, GROUPS, until, useStack } from "./support.mjs";

const env = useStack();
const signIn = (user, options) => env.signIn(user, options);

/** The group's whole history as the server has it now (fewer than 100 messages). */
async function serverState(session, group) {
  const ack = await session.request("get_history", { group_id: group, limit: 100 });
  assert.equal(ack.has_more, false);
  return ack.messages;
}

async function sendAll(session, group, texts) {
  const stored = [];
  for (const text of texts) stored.push(await session.send(group, text).stored);
  return stored;
}

for (const transport of ["websocket", "polling"]) {
  test(`a dropped network (${transport}): the catch-up applies every change, waiting sends go in order`, async () => {
    const group = transport === "websocket" ? GROUPS[0] : GROUPS[1];
    const proxy = await env.stack.proxy();
    const ana = await signIn(ANA, { url: proxy.url, transport });
    const ben = await signIn(BEN);
    const [mine, other] = await sendAll(ana, group, ["Ana's first", "Ana's second"]);
    const [bens] = await sendAll(ben, group, ["Ben's first"]);
    const { timeline } = await ana.open(group);
    await ben.open(group);
    assert.equal(timeline.newest, 3);

    proxy.cut();
    await until(() => !ana.connected, "Ana to notice the drop");
    // While Ana is away: new messages, an edit, a delete, a reaction, a pin.
    await sendAll(ben, group, ["while you were away 1", "while you were away 2"]);
    await ben.request("edit_message", { group_id: group, message_id: bens.id, content: "Ben's first, edited" });
    await ben.request("react", { group_id: group, message_id: mine.id, emoji: "👍", on: true });
    await ben.request("pin_message", { group_id: group, message_id: other.id, pinned: true });
    // Ana deletes one of hers from another device.
    const anaElsewhere = await signIn(ANA);
    await anaElsewhere.request("delete_message", { group_id: group, message_id: other.id });
    // And writes three messages offline: they wait.
    const offline = ["offline 1", "offline 2", "offline 3"].map((text) => ana.send(group, text));
    assert.equal(ana.outbox.waiting.length, 3);

    proxy.restore();
    const stored = await Promise.all(offline.map((entry) => entry.stored));
    assert.deepEqual(stored.map((m) => m.content), ["offline 1", "offline 2", "offline 3"]);
    assert.deepEqual(stored.map((m) => m.seq), [6, 7, 8], "stored in the order they were written");
    const expected = await serverState(ben, group);
    await until(() => timeline.rev === expected.at(-1).rev && !timeline.hasGap, "Ana to be up to date");
    assert.deepEqual(timeline.messages(), expected);
    assert.equal(timeline.bySeq.get(2).deleted, true);
    assert.equal(timeline.bySeq.get(1).reactions[0].emoji, "👍");
    assert.equal(timeline.bySeq.get(3).content, "Ben's first, edited");
  });
}

test("a lost ack: the send is tried again with its client_msg_id and stored once", async () => {
  const group = GROUPS[2];
  const proxy = await env.stack.proxy();
  const ana = await signIn(ANA, { url: proxy.url, ackTimeoutMs: 1000 });
  const ben = await signIn(BEN);
  const { timeline: bens } = await ben.open(group);
  const { timeline } = await ana.open(group);

  proxy.stall(); // the send reaches the server; nothing comes back
  const entry = ana.send(group, "did this arrive?");
  await until(() => bens.newest === 1, "the server to store it");
  await new Promise((resolve) => setTimeout(resolve, 1500)); // the ack timed out: tried again, unanswered
  assert.ok(entry.attempt >= 2, `tried ${entry.attempt} times`);
  proxy.cut();
  proxy.restore();
  const message = await entry.stored;
  assert.equal(message.id, bens.bySeq.get(1).id, "the resend was answered with the first stored message");
  assert.equal(message.client_msg_id, entry.id);
  const history = await serverState(ben, group);
  assert.deepEqual(history.map((m) => m.content), ["did this arrive?"], "stored once");
  await until(() => timeline.newest === 1, "Ana's timeline");
  assert.deepEqual(timeline.messages(), history);
});

test("a server restart: the session reconnects, catches up and sends what waited", async () => {
  const group = GROUPS[3];
  const ana = await signIn(ANA);
  const ben = await signIn(BEN);
  const { timeline } = await ana.open(group);
  await ben.open(group);
  await sendAll(ben, group, ["before the restart"]);
  await until(() => timeline.newest === 1, "the first message");

  await env.stack.server.kill();
  await until(() => !ana.connected && !ben.connected, "both to notice");
  const waiting = ["during the restart 1", "during the restart 2"].map((text) => ana.send(group, text));
  await env.stack.server.start();
  await until(() => ben.connected, "Ben to reconnect");
  const bensLater = await sendAll(ben, group, ["after the restart"]);
  const stored = await Promise.all(waiting.map((entry) => entry.stored));
  assert.ok(stored[0].seq < stored[1].seq, "in the order they were written");
  const expected = await serverState(ben, group);
  assert.equal(expected.length, 4);
  assert.ok(expected.some((m) => m.id === bensLater[0].id));
  await until(() => timeline.rev === expected.at(-1).rev, "Ana to be up to date");
  assert.deepEqual(timeline.messages(), expected);
});

test("a missed broadcast: the gap in rev is filled from get_changes", async () => {
  const group = GROUPS[4];
  const ana = await signIn(ANA);
  const ben = await signIn(BEN);
  const { timeline } = await ana.open(group);
  await sendAll(ben, group, ["first"]);
  await until(() => timeline.newest === 1, "the first message");
  // Out of the room behind the session's back (as a lost broadcast would be):
  // it misses the next message, then sees the one after it (rev 3 while it holds rev 1).
  await new Promise((resolve) => ana.connection.socket.emit("leave_group", { group_id: group }, resolve));
  const [missed] = await sendAll(ben, group, ["missed"]);
  await new Promise((resolve) => ana.connection.socket.emit("join_group", { group_id: group, limit: 1 }, resolve));
  await sendAll(ben, group, ["seen"]);
  const expected = await serverState(ben, group);
  await until(() => timeline.newest === 3 && !timeline.hasGap && timeline.rev === expected.at(-1).rev, "the gap to be filled");
  assert.deepEqual(timeline.messages(), expected);
  assert.equal(timeline.bySeq.get(2).id, missed.id);
});

test("closing the session sends nothing more of what waited", async () => {
  const group = GROUPS[5];
  const proxy = await env.stack.proxy();
  const ana = await signIn(ANA, { url: proxy.url });
  const ben = await signIn(BEN);
  const { timeline: bens } = await ben.open(group);
  proxy.stall(); // the first send reaches the server; its answer does not come back
  const first = ana.send(group, "first");
  await until(() => bens.newest === 1, "the first send to be stored");
  const later = ["second", "third"].map((text) => ana.send(group, text));
  ana.close();
  proxy.restore();
  for (const entry of later) await assert.rejects(entry.stored, (err) => err.code === "cancelled");
  await assert.rejects(first.stored, (err) => err.code === "cancelled");
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert.deepEqual((await serverState(ben, group)).map((m) => m.content), ["first"]);
});

test("ids in any case: a send to an upper-case group id is stored and the next ones follow", async () => {
  const group = GROUPS[6];
  const ana = await signIn(ANA);
  const entries = ["upper 1", "upper 2"].map((text) => ana.send(group.toUpperCase(), text));
  const stored = await Promise.all(entries.map((entry) => entry.stored));
  assert.deepEqual(stored.map((m) => [m.group_id, m.content]), [[group, "upper 1"], [group, "upper 2"]]);
  assert.equal(ana.outbox.waiting.length, 0);
});

test("two opens of one group share one join; a join left before its answer leaves the room", async () => {
  const group = GROUPS[7];
  const ana = await signIn(ANA);
  const ben = await signIn(BEN);
  const [one, two] = await Promise.all([ana.open(group.toUpperCase()), ana.open(group)]);
  assert.equal(one.timeline, two.timeline);
  assert.equal(ana.timeline(group), one.timeline);
  ana.leave(group);
  const cancelled = ana.open(group);
  ana.leave(group);
  await assert.rejects(cancelled, (err) => err.code === "cancelled");
  assert.equal(ana.timeline(group), undefined);
  const seen = [];
  ana.on("event", (name, payload) => seen.push(payload.content));
  await ben.request("send_message", { group_id: group, content: "after Ana left" });
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert.deepEqual(seen, [], "out of the room");
});

test("removed while away: the rejoin is refused and the timeline closes (left)", async () => {
  const group = GROUPS[6];
  const proxy = await env.stack.proxy();
  const ana = await signIn(ANA, { url: proxy.url });
  const { timeline } = await ana.open(group);
  const left = ana.once("left", 15_000);
  proxy.cut();
  await until(() => !ana.connected, "Ana to notice the drop");
  env.stack.setMembers(group, [BEN]);
  proxy.restore();
  assert.equal(await left, timeline);
  assert.equal(ana.timeline(group), undefined);
  env.stack.setMembers(group, [ANA, BEN]);
});
