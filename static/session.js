// Signing in: the demo sign-in of a `--demo` server, tokens, and the session
// that survives a reload of the page (sessionStorage: per tab, gone with it),
// with the sends it had not got stored yet.

const SESSION_KEY = "studychat.session";
// One entry per person ("studychat.outbox.<user id>"): someone else signing in on the same tab
// neither sends nor overwrites what another person left unsent.
const OUTBOX_PREFIX = "studychat.outbox.";

/** The demo users ([{id, name}]), or null when the server has no demo sign-in (404). */
export async function demoUsers() {
  try {
    const response = await fetch("/demo/users");
    return response.ok ? (await response.json()).users : null;
  } catch {
    return null;
  }
}

/** A fresh token for a demo user. */
export async function demoToken(userId) {
  const response = await fetch("/demo/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user_id: userId }),
  });
  const body = await response.json();
  if (!body.ok) throw new Error(body.error.message);
  return body.token;
}

/** The token's `sub`, read without verifying it: the server is the judge, this is for display. */
export function tokenSubject(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return String(JSON.parse(atob(part)).sub || "").toLowerCase() || null;
  } catch {
    return null;
  }
}

/** `{token, demoUser}` saved by the last sign-in in this tab, or null. */
export function savedSession() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
    return saved && typeof saved.token === "string" ? saved : null;
  } catch {
    return null;
  }
}

export function saveSession(token, demoUser) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify({ token, demoUser }));
}

/** Forget the tab's sign-in and, unless `keepUnsent`, the messages `userId` had not sent yet. */
export function forgetSession({ userId = null, keepUnsent = false } = {}) {
  sessionStorage.removeItem(SESSION_KEY);
  if (!keepUnsent && userId) sessionStorage.removeItem(OUTBOX_PREFIX + userId);
}

/** The unsent messages (an outbox snapshot) this tab saved for `userId`, or []. */
export function savedOutbox(userId) {
  try {
    const saved = JSON.parse(sessionStorage.getItem(OUTBOX_PREFIX + userId) || "null");
    return saved && Array.isArray(saved.items) ? saved.items : [];
  } catch {
    return [];
  }
}

export function saveOutbox(userId, items) {
  try {
    if (items.length) sessionStorage.setItem(OUTBOX_PREFIX + userId, JSON.stringify({ items }));
    else sessionStorage.removeItem(OUTBOX_PREFIX + userId);
  } catch {
    // Storage full or refused: the sends still go while the page stays open.
  }
}
