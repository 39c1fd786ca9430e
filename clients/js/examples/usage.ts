// A typed use of the client: `npm run typecheck` (tsc --noEmit) checks it
// against the declarations, including the mistakes marked @ts-expect-error.

import { io, type Socket } from "socket.io-client";
import {
  ChatError, ChatSession, GroupTimeline,
  type ClientToServerEvents, type Message, type OutboxItem, type ServerToClientEvents,
} from "studychat-client";

const GROUP = "65b0000000000000000000a1";
/** Where an app keeps small strings across restarts (localStorage, AsyncStorage, a file). */
const localStore = new Map<string, string>();

/** A timeline that renders: override `changed`. */
class Rendered extends GroupTimeline {
  lines: string[] = [];
  override changed(message: Message, previous: Message | null): void {
    this.lines.push(`${previous ? "~" : "+"}${message.seq} ${message.sender_name}: ${message.content}`);
  }
}

export async function chat(url: string, fetchToken: () => Promise<string>): Promise<void> {
  const session = new ChatSession({
    url,
    tokenProvider: fetchToken,
    socketOptions: { transports: ["websocket"] },
    createTimeline: (groupId) => new Rendered(groupId),
  });
  session.on("state", (state, reason) => console.log(state, reason));
  session.on("event", (name, payload, { timeline }) => {
    if (name === "typing") console.log(payload.name, payload.is_typing); // payload: TypingEvent
    if (name === "message" && timeline) console.log(timeline.lines.length, payload.seq); // payload: Message
  });
  session.on("failed", (entry, error) => console.log(entry.id, error.code, error.describe()));
  // Unsent messages survive a restart: saved on every change, taken back before connecting.
  const saved: OutboxItem[] = JSON.parse(localStore.get("outbox") ?? "[]");
  session.outbox.restore(saved);
  session.on("changed", () => localStore.set("outbox", JSON.stringify(session.outbox.snapshot())));
  await session.connect(); // resolves once connected

  const { timeline, ack } = await session.open(GROUP);
  const lines: string[] = timeline.lines; // the subclass comes back typed
  console.log(lines, ack?.unread_count, ack?.online.join(","));

  const entry = session.send(GROUP, "Does anyone have the notes?", { kind: "question" });
  const stored: Message = await entry.stored;
  console.log(stored.seq, stored.rev, stored.kind);

  const groups = await session.request("list_groups");
  for (const group of groups.groups) console.log(group.name, group.unread_count, group.latest_rev);

  const changes = await session.request("join_group", { group_id: GROUP, since_rev: 10 });
  console.log(changes.changes.length, changes.latest_rev); // since_rev: `changes`, not `messages`
  const page = await session.request("join_group", { group_id: GROUP });
  console.log(page.messages.length);

  // Search as you type: each new query stops waiting for the one before.
  let searching = new AbortController();
  const search = async (query: string) => {
    searching.abort();
    searching = new AbortController();
    try {
      const found = await session.request("search_messages", { query }, { signal: searching.signal });
      console.log(found.results.length);
    } catch (err) {
      if (!(err instanceof ChatError && err.code === "cancelled")) throw err;
    }
  };
  await search("deriv");

  try {
    await session.request("mark_read", { group_id: GROUP, seq: stored.seq });
  } catch (err) {
    if (err instanceof ChatError && err.code === "rate_limited") console.log(err.retryAfterMs);
  }

  // @ts-expect-error: is_typing is a boolean
  await session.request("typing", { group_id: GROUP, is_typing: "yes" });
  // @ts-expect-error: an unknown event
  await session.request("send_messages", { group_id: GROUP, content: "x" });
  // @ts-expect-error: content is required
  await session.request("send_message", { group_id: GROUP });
  // @ts-expect-error: kind is "message" or "question"
  session.send(GROUP, "hi", { kind: "system" });
  // @ts-expect-error: not an error code of the protocol
  if (new ChatError().code === "not_a_member") console.log("never");

  session.close();
}

/** The wire types work with a plain socket.io-client socket too. */
export function plain(url: string, token: string): void {
  const socket: Socket<ServerToClientEvents, ClientToServerEvents> = io(url, { auth: { token } });
  socket.on("message_deleted", (message) => console.log(message.deleted, message.rev));
  socket.on("group_added", ({ group }) => console.log(group.name, group.latest_rev));
  socket.emit("get_changes", { group_id: GROUP, after_rev: 0 }, (answer) => {
    if (answer.ok) console.log(answer.changes.length, answer.has_more);
    else console.log(answer.error.code, answer.error.retry_after_ms);
  });
  // @ts-expect-error: after_rev is required
  socket.emit("get_changes", { group_id: GROUP }, () => {});
}
