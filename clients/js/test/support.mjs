// What the client's tests run against: a real chat server process (python -m
// server) on a real database (MONGODB_URI, else a SecantusDB daemon started
// here), a TCP proxy between client and server that can drop or stall the
// network, and tokens signed like the platform's.
//
// CHAT_PYTHON names the Python with the server installed (default: the
// repository's .venv). tests/test_js_package.py runs these tests in the suite.

import { spawn, spawnSync } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before } from "node:test";
import { fileURLToPath } from "node:url";
import { ChatSession } from "studychat-client";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const PYTHON = process.env.CHAT_PYTHON || path.join(ROOT, ".venv", "bin", "python");
const SECRET = "client-tests-" + randomBytes(16).toString("hex");
const START_TIMEOUT_MS = 30_000;

export const ANA = "66a000000000000000000001";
export const BEN = "66a000000000000000000002";
export const CAROL = "66a000000000000000000003"; // in no group
export const NAMES = { [ANA]: "Ana García", [BEN]: "Ben Okafor", [CAROL]: "Carol Diaz" };
/** Groups of Ana and Ben: a test that needs an empty group takes its own. */
export const GROUPS = Array.from({ length: 8 }, (_, i) => `66b0000000000000000000${(0xa0 + i).toString(16)}`);
export const NOT_MINE = "66b0000000000000000000ff"; // Carol's only

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Poll `check` until it returns a truthy value; fail after `timeoutMs` with `what`. */
export async function until(check, what, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

function b64url(data) {
  return Buffer.from(data).toString("base64url");
}

/** An HS256 token for `sub`, valid for `ttlS` seconds (negative: already expired). */
export function token(sub, ttlS = 3600, claims = {}) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify({ sub, iat: now, exp: now + ttlS, ...claims }));
  const signature = createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${signature}`;
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function answers(url) {
  try {
    return (await fetch(url, { signal: AbortSignal.timeout(1000) })).ok;
  } catch {
    return false;
  }
}

function pingMongo(uri) {
  const script = "import sys, pymongo; pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=500).admin.command('ping')";
  return spawnSync(PYTHON, ["-c", script, uri], { stdio: "ignore" }).status === 0;
}

/** The database: MONGODB_URI when set, else a SecantusDB daemon of this test file's own. */
async function startDatabase() {
  if (process.env.MONGODB_URI && !process.env.MONGODB_URI.startsWith("memory://")) {
    return { uri: process.env.MONGODB_URI, stop() {} };
  }
  const dir = mkdtempSync(path.join(tmpdir(), "chat-client-db-"));
  const port = await freePort();
  const daemon = spawn(path.join(path.dirname(PYTHON), "secantusd-py"),
    ["--host", "127.0.0.1", "--port", String(port), "--storage-path", dir, "--log-level", "WARNING"],
    { stdio: "ignore" });
  const uri = `mongodb://127.0.0.1:${port}/?retryWrites=false`;
  await until(() => pingMongo(uri), "SecantusDB to answer", START_TIMEOUT_MS);
  return {
    uri,
    stop() {
      daemon.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Write the platform's users and study groups into a fresh database. */
function seed(uri, db) {
  const users = Object.entries(NAMES).map(([id, name]) => {
    const [first, last] = name.split(" ");
    return { id, full_name: first, last_name: last };
  });
  const groups = [
    ...GROUPS.map((id, i) => ({ id, name: `Group ${i + 1}`, members: [ANA, BEN] })),
    { id: NOT_MINE, name: "Carol's", members: [CAROL] },
  ];
  const script = `
import json, sys
from bson import ObjectId
from pymongo import MongoClient
uri, name, data = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
db = MongoClient(uri)[name]
db.users.insert_many([{"_id": ObjectId(u["id"]), "full_name": u["full_name"], "last_name": u["last_name"]} for u in data["users"]])
db.study_groups.insert_many([{"_id": ObjectId(g["id"]), "name": g["name"], "members": [ObjectId(m) for m in g["members"]]} for g in data["groups"]])
`;
  const result = spawnSync(PYTHON, ["-c", script, uri, db, JSON.stringify({ users, groups })], { encoding: "utf8" });
  if (result.status !== 0) throw new Error(`seeding failed: ${result.stderr}`);
}

/** A `python -m server` process on a fixed port: stop it (SIGKILL) and start it again on the same data. */
export class ChatServer {
  constructor(env) {
    this.env = env;
    this.port = null;
    this.proc = null;
    this.output = "";
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    this.port ??= await freePort();
    this.proc = spawn(PYTHON, ["-m", "server"], {
      cwd: ROOT,
      env: { ...process.env, ...this.env, HOST: "127.0.0.1", PORT: String(this.port), LOG_LEVEL: "WARNING" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const keep = (chunk) => {
      this.output = (this.output + chunk).slice(-20_000);
    };
    this.proc.stdout.on("data", keep);
    this.proc.stderr.on("data", keep);
    const proc = this.proc;
    await until(async () => {
      if (proc.exitCode !== null) throw new Error(`the server exited:\n${this.output}`);
      return answers(`${this.url}/readyz`);
    }, "the server to be ready", START_TIMEOUT_MS);
  }

  /** SIGKILL: no graceful shutdown, as in a crash. */
  async kill() {
    const proc = this.proc;
    this.proc = null;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((resolve) => proc.once("exit", resolve));
    proc.kill("SIGKILL");
    await exited;
  }
}

/**
 * A TCP proxy in front of the server. `cut()` drops every connection through
 * it and refuses new ones until `restore()`; `stall()` holds the server's bytes
 * back (the client hears nothing; what it sends still arrives) until the
 * connections are cut or restored.
 */
export class Proxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.pairs = new Set();
    this.down = false;
    this.stalled = false;
    this.server = net.createServer((client) => this._accept(client));
  }

  async start() {
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = this.server.address().port;
    return this;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  _accept(client) {
    if (this.down) {
      client.destroy();
      return;
    }
    const upstream = net.connect(this.targetPort, "127.0.0.1");
    const pair = { client, upstream, held: [] };
    this.pairs.add(pair);
    client.on("data", (data) => upstream.write(data));
    upstream.on("data", (data) => {
      if (this.stalled) pair.held.push(data);
      else client.write(data);
    });
    const close = () => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("close", close).on("error", close);
    upstream.on("close", close).on("error", close);
  }

  stall() {
    this.stalled = true;
  }

  /** The network is gone: every connection drops (what the server held back is lost). */
  cut() {
    this.down = true;
    this.stalled = false;
    for (const pair of this.pairs) {
      pair.client.destroy();
      pair.upstream.destroy();
    }
    this.pairs.clear();
  }

  restore() {
    this.down = false;
    this.stalled = false;
    for (const pair of this.pairs) for (const data of pair.held.splice(0)) pair.client.write(data);
  }

  close() {
    this.cut();
    return new Promise((resolve) => this.server.close(resolve));
  }
}

/** A database, a seeded one of its own, and a server on it: `await stack.stop()` ends them. */
export async function startStack(settings = {}) {
  const database = await startDatabase();
  const db = `client_tests_${randomBytes(6).toString("hex")}`;
  seed(database.uri, db);
  const server = new ChatServer({
    MONGODB_URI: database.uri, MONGODB_DB: db, JWT_SECRET: SECRET, MEMBERSHIP_POLL_S: "1", ...settings,
  });
  await server.start();
  const proxies = [];
  return {
    server,
    /** A proxy to the server (started). */
    async proxy() {
      const proxy = await new Proxy(server.port).start();
      proxies.push(proxy);
      return proxy;
    },
    /** The platform changes a group's members (straight in the database, as it does). */
    setMembers(groupId, members) {
      const script = `
import sys
from bson import ObjectId
from pymongo import MongoClient
MongoClient(sys.argv[1])[sys.argv[2]].study_groups.update_one(
    {"_id": ObjectId(sys.argv[3])}, {"$set": {"members": [ObjectId(m) for m in sys.argv[4:]]}})
`;
      const result = spawnSync(PYTHON, ["-c", script, database.uri, db, groupId, ...members], { encoding: "utf8" });
      if (result.status !== 0) throw new Error(`setMembers failed: ${result.stderr}`);
    },
    async stop() {
      for (const proxy of proxies) await proxy.close();
      await server.kill();
      database.stop();
    },
  };
}

/** Socket options for tests: one transport, quick reconnects. */
export function socketOptions(transport = "websocket") {
  const transports = transport === "polling" ? { transports: ["polling"], upgrade: false } : { transports: ["websocket"] };
  return { ...transports, reconnectionDelay: 100, reconnectionDelayMax: 500, randomizationFactor: 0 };
}

/**
 * A test file's stack (started before its tests, stopped after them) and its sessions:
 * `env.session(options)` makes one (closed at the end), `env.signIn(user, options)` makes one
 * with a token for `user` and waits until it is connected.
 */
export function useStack(settings = {}) {
  const sessions = [];
  const env = {
    stack: null,
    session({ transport = "websocket", ...options } = {}) {
      const made = new ChatSession({ url: env.stack.server.url, socketOptions: socketOptions(transport), ...options });
      sessions.push(made);
      return made;
    },
    async signIn(user, options = {}) {
      const made = env.session({ token: token(user), ...options });
      await made.connect();
      await until(() => made.connected, "the connection");
      return made;
    },
  };
  before(async () => {
    env.stack = await startStack(settings);
  });
  after(async () => {
    for (const made of sessions) made.close();
    await env.stack.stop();
  });
  return env;
}
