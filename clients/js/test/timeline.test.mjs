// GroupTimeline and supersedes on their own (no server): which state of a message wins.

import assert from "node:assert/strict";
import { test } from "node:test";
import { GroupTimeline, supersedes } from "studychat-client";

const GROUP = "66b0000000000000000000a0";
const message = (seq, fields = {}) => ({
  type: "message", kind: "message", id: `66c0000000000000000000${String(seq).padStart(2, "0")}`, seq, rev: seq,
  group_id: GROUP, content: `m${seq}`, deleted: false, edited_at: null, reactions: [], ...fields,
});

test("a revised state replaces one from before revisions, whatever changed (a reaction too)", () => {
  const old = message(1, { rev: 0 });
  const reacted = message(1, { rev: 7, reactions: [{ emoji: "👍", count: 1, user_ids: ["x"] }] });
  assert.equal(supersedes(reacted, old), true);
  assert.equal(supersedes(old, reacted), false);
  assert.equal(supersedes(message(1, { rev: 3 }), message(1, { rev: 4 })), false);
  const timeline = new GroupTimeline(GROUP);
  timeline.merge([old]);
  timeline.merge([reacted]);
  assert.equal(timeline.bySeq.get(1).reactions.length, 1);
});

test("a change to a message older than the oldest held leaves the held run of seqs alone (onlyHeld)", () => {
  const timeline = new GroupTimeline(GROUP);
  timeline.applyUpTo(5);
  timeline.merge([message(4), message(5)]);
  assert.equal(timeline.merge([message(1, { rev: 6, content: "edited" })], { onlyHeld: true }), 0);
  assert.deepEqual(timeline.seqs, [4, 5]);
  assert.equal(timeline.rev, 6, "the change is counted: no gap to fill");
  assert.equal(timeline.hasGap, false);
});
