// The token's life: refreshed before it runs out, renewed when a reconnect is
// refused, and the session's end reported when nothing can renew it.

import assert from "node:assert/strict";
import { test } from "node:test";
import { ANA, BEN, GROUPS, sleep, token, until, useStack } from "./support.mjs";

const env = useStack();
const session = (options) => env.session(options);

test("a token about to expire is refreshed from the provider: the same connection goes on", async () => {
  let asked = 0;
  const ana = session({
    token: token(ANA, 4), // the server warns at once: session_expiring
    tokenProvider: async () => {
      asked += 1;
      return token(ANA, 3600);
    },
  });
  const expiring = ana.once("expiring", 5000);
  const refreshed = ana.once("refreshed", 5000);
  await ana.connect();
  const warnedAt = await expiring;
  assert.ok(warnedAt - Date.now() < 4500, "the warning names the short token's end");
  const newEnd = await refreshed;
  assert.ok(newEnd - Date.now() > 3000 * 1000, "the session now ends with the new token");
  assert.equal(asked, 1);
  const id = ana.connection.id;
  await sleep(warnedAt - Date.now() + 1000); // past the first token's exp
  assert.ok(ana.connected);
  assert.equal(ana.connection.id, id, "not a new connection");
  const entry = ana.send(GROUPS[0], "still here");
  assert.equal((await entry.stored).content, "still here");
});

test("without a provider, the session's end is reported and the connection stays closed", async () => {
  const ben = session({ token: token(BEN, 4) });
  const states = [];
  ben.on("state", (state) => states.push(state));
  const ended = ben.once("ended", 10_000);
  await ben.connect();
  await until(() => ben.connected, "the connection");
  assert.deepEqual(await ended, { reconnecting: false });
  await sleep(500);
  assert.equal(ben.connected, false);
  assert.equal(states.at(-1), "disconnected");
});

test("a provider that cannot refresh in time: the session ends, then goes on with a fresh token", async () => {
  let fresh = false;
  const ana = session({
    token: token(ANA, 4),
    tokenProvider: async () => {
      if (!fresh) throw new Error("the sign-in service is down");
      return token(ANA, 3600);
    },
  });
  const ended = ana.once("ended", 10_000);
  await ana.connect();
  await until(() => ana.connected, "the connection");
  const { timeline } = await ana.open(GROUPS[1]);
  const firstId = ana.connection.id;
  assert.deepEqual(await ended, { reconnecting: true });
  setTimeout(() => {
    fresh = true; // the provider works again after a while
  }, 1500);
  await until(() => ana.connected && ana.connection.id !== firstId, "a new connection", 15_000);
  await ana.once("caught_up", 5000).catch(() => {}); // the group is joined again
  const ben = session({ token: token(BEN) });
  await ben.connect();
  await until(() => ben.connected, "Ben");
  await ben.request("send_message", { group_id: GROUPS[1], content: "for Ana's new connection" });
  await until(() => timeline.messages().some((m) => m.content === "for Ana's new connection"),
    "the rejoined group to receive");
});

test("an expired token at connect: the provider's fresh one is used", async () => {
  let asked = 0;
  const ana = session({
    token: token(ANA, -60),
    tokenProvider: async () => {
      asked += 1;
      return token(ANA);
    },
  });
  const refusals = [];
  ana.on("refused", (err) => refusals.push(err.code));
  await ana.connect();
  await until(() => ana.connected, "the connection");
  assert.equal(asked, 1);
  assert.deepEqual(refusals, [], "nothing was reported: the provider fixed it");
});

test("a refused handshake without a provider is a typed refusal", async () => {
  const ana = session({ token: "not-a-token" });
  const refused = ana.once("refused", 5000);
  await assert.rejects(ana.connect(), (err) => err.code === "unauthorized");
  const err = await refused;
  assert.equal(err.code, "unauthorized");
  assert.equal(ana.connected, false);
});

test("a provider that gives the same token again: reported as a failed refresh, not as refreshed", async () => {
  const short = token(ANA, 4);
  const ana = session({ token: short, tokenProvider: async () => short });
  let refreshed = false;
  ana.on("refreshed", () => {
    refreshed = true;
  });
  const failed = ana.once("refresh_failed", 6000);
  await ana.connect();
  const err = await failed;
  assert.match(err.message, /does not last longer/);
  assert.equal(refreshed, false);
});
