// The session against a real server over both transports: joining, sending in
// order, typed acks and errors, retry_after_ms honoured.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { ChatError } from "studychat-client";
import { ANA, BEN, GROUPS, NAMES, NOT_MINE, token, until, useStack } from "./support.mjs";

// A small send bucket, so that rate_limited comes quickly.
const env = useStack({ RATE_LIMIT_SEND_PER_S: "4", RATE_LIMIT_SEND_BURST: "5" });
const signIn = (user, transport = "websocket") => env.signIn(user, { transport });

for (const [transport, group] of [["websocket", GROUPS[0]], ["polling", GROUPS[1]]]) {
  describe(`over ${transport}`, () => {
    test("two members see each other's messages in order, with typed acks", async () => {
      const ana = await signIn(ANA, transport);
      const ben = await signIn(BEN, transport === "websocket" ? "polling" : "websocket");
      const { timeline: anas, ack } = await ana.open(group);
      assert.equal(ack.group.id, group);
      assert.deepEqual(anas.messages(), []);
      const { timeline: bens } = await ben.open(group);

      const entries = ["one", "two", "three", "four"].map((text) => ana.send(group, text));
      const stored = await Promise.all(entries.map((entry) => entry.stored));
      assert.deepEqual(stored.map((m) => m.content), ["one", "two", "three", "four"]);
      assert.deepEqual(stored.map((m) => m.seq), [1, 2, 3, 4], "stored in the order they were sent");
      for (const message of stored) {
        assert.equal(message.sender_id, ANA);
        assert.equal(message.sender_name, NAMES[ANA]);
      }
      await until(() => bens.newest === 4, "Ben to hold all four");
      assert.deepEqual(bens.messages(), stored);
      assert.deepEqual(anas.messages(), stored);
      assert.equal(ana.outbox.waiting.length, 0);

      const edited = await ben.request("join_group", { group_id: group, since_rev: 2 });
      assert.deepEqual(edited.changes.map((m) => m.seq), [3, 4]);
      ana.close();
      ben.close();
    });
  });
}

test("a refusal is a ChatError with the protocol's code and details", async () => {
  const ana = await signIn(ANA);
  await assert.rejects(ana.open(NOT_MINE), (err) => err instanceof ChatError && err.code === "not_member");
  await assert.rejects(ana.request("get_history", { group_id: GROUPS[2], limit: 0 }), (err) => {
    assert.ok(err instanceof ChatError);
    assert.equal(err.code, "invalid_payload");
    assert.ok("limit" in err.details, JSON.stringify(err.details));
    assert.match(err.describe(), /limit/);
    return true;
  });
  ana.close();
});

test("a send refused for good fails alone; the group's next sends go on", async () => {
  const ana = await signIn(ANA);
  const group = GROUPS[2];
  const failed = [];
  ana.on("failed", (entry, err) => failed.push([entry.content, err.code]));
  const bad = ana.send(group, "a reply to nothing", { reply_to: "66c000000000000000000000" });
  const good = ana.send(group, "after it");
  await assert.rejects(bad.stored, (err) => err.code === "message_not_found");
  assert.equal((await good.stored).content, "after it");
  assert.deepEqual(failed, [["a reply to nothing", "message_not_found"]]);
  assert.equal(ana.outbox.forGroup(group).length, 1, "the failed send is kept until dismissed");
  ana.outbox.dismiss(bad.id);
  assert.equal(ana.outbox.forGroup(group).length, 0);
  ana.close();
});

test("rate_limited sends wait retry_after_ms and are stored once each, in order", async () => {
  const ana = await signIn(ANA);
  const group = GROUPS[3];
  let retries = 0;
  ana.on("retrying", () => {
    retries += 1;
  });
  const started = Date.now();
  const texts = Array.from({ length: 10 }, (_, i) => `burst ${i}`);
  const stored = await Promise.all(texts.map((text) => ana.send(group, text)).map((entry) => entry.stored));
  const took = Date.now() - started;
  assert.deepEqual(stored.map((m) => m.content), texts);
  assert.deepEqual(stored.map((m) => m.seq), texts.map((_, i) => i + 1));
  assert.ok(retries >= 1, "some sends were refused with rate_limited and tried again");
  // 5 in the bucket, then 4 a second: the other 5 need about 1.25 s of refill.
  assert.ok(took >= 1000, `took ${took} ms: the retries did not wait`);
  const history = await ana.request("get_history", { group_id: group });
  assert.equal(history.messages.length, 10, "no send was stored twice");
  ana.close();
});

test("an outbox snapshot taken back by a new session is sent once, in order, failures kept", async () => {
  const group = GROUPS[4];
  // A session that never connects (the page went away offline): its sends wait.
  const away = env.session({ token: token(ANA) });
  let changes = 0;
  away.on("changed", () => (changes += 1));
  const first = away.send(group, "written offline 1");
  away.send(group, "written offline 2", { kind: "question" });
  assert.equal(changes, 2, "each send added is a change");
  // One stored just before the page went away: its ack never came.
  const ana = await signIn(ANA);
  const stored = await until(() => ana.request("send_message", { group_id: group, content: "stored, unacked", client_msg_id: "c-unacked-1" })
    .catch((err) => { if (err.code === "rate_limited") return null; throw err; }), "a send within the rate limit");
  const saved = JSON.parse(JSON.stringify([
    { id: "c-unacked-1", groupId: group, content: "stored, unacked", extra: {}, error: null },
    ...away.outbox.snapshot(),
    { id: "c-refused-1", groupId: group, content: "a reply to nothing", extra: {}, error: { code: "message_not_found", message: "No such message.", details: null } },
    { id: 7, groupId: group, content: "not an item" },
  ]));
  away.close();
  assert.equal(saved[1].id, first.id, "the snapshot keeps each client_msg_id");

  const again = env.session({ token: token(ANA) });
  const taken = again.outbox.restore(saved);
  assert.equal(taken.length, 4, "what is not a snapshot's item is skipped");
  const refused = again.outbox.forGroup(group).find((e) => e.error);
  assert.equal(refused.error.code, "message_not_found");
  await again.connect();
  const results = await Promise.all(taken.filter((e) => !e.error).map((e) => e.stored));
  assert.deepEqual(results.map((m) => m.content), ["stored, unacked", "written offline 1", "written offline 2"]);
  assert.equal(results[0].seq, stored.message.seq, "the stored one is answered with itself");
  assert.equal(results[2].kind, "question", "a send's other fields come back too");
  const history = await again.request("get_history", { group_id: group });
  assert.deepEqual(history.messages.map((m) => m.content), ["stored, unacked", "written offline 1", "written offline 2"]);
  assert.deepEqual(again.outbox.snapshot().map((e) => e.id), ["c-refused-1"], "a failure is kept until dismissed");
  again.close();
  ana.close();
});

test("a wait given up through an AbortSignal rejects with cancelled, before or after the request left", async () => {
  const ana = await signIn(ANA);
  const group = GROUPS[5];
  // Aborted before: nothing is sent.
  const before = new AbortController();
  before.abort();
  await assert.rejects(ana.request("send_message", { group_id: group, content: "never sent" }, { signal: before.signal }),
    (err) => err instanceof ChatError && err.code === "cancelled");
  // Aborted while waiting for the answer: the wait ends at once.
  const during = new AbortController();
  const asked = ana.request("get_history", { group_id: group }, { signal: during.signal });
  during.abort();
  await assert.rejects(asked, (err) => err.code === "cancelled");
  // Aborted while a retrying request waits out retry_after_ms (the send bucket is tiny here).
  const waits = new AbortController();
  const retrying = ana.connection.requestRetrying("join_group", { group_id: NOT_MINE }, { signal: waits.signal });
  await assert.rejects(retrying, (err) => err.code === "not_member", "a refusal for good is not retried");
  const texts = Array.from({ length: 8 }, (_, i) => `fill ${i}`);
  const flood = texts.map((content) => ana.request("send_message", { group_id: group, content }).catch((err) => err.code));
  // A refusal is answered at once, a stored send once written: go on at the first refusal,
  // before the bucket (4 tokens a second) refills while a busy database writes the others.
  await Promise.any(flood.map((p) => p.then((r) => (r === "rate_limited" ? r : Promise.reject(new Error("stored"))))))
    .catch(() => assert.fail("the send bucket never ran out"));
  const started = Date.now();
  const later = ana.connection.requestRetrying("send_message", { group_id: group, content: "after the wait" },
    { signal: waits.signal });
  setTimeout(() => waits.abort(), 50);
  await assert.rejects(later, (err) => err.code === "cancelled");
  assert.ok(Date.now() - started < 200, "the retry wait was cut short");
  await Promise.all(flood);
  const history = await ana.request("get_history", { group_id: group });
  assert.ok(!history.messages.some((m) => m.content === "never sent" || m.content === "after the wait"));
  ana.close();
});
