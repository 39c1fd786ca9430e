'use strict';
// A minimal Engine.IO v4 / Socket.IO v5 client swarm on `ws`, built to cost a few µs per
// message so that the server, not the generator, is what gets measured.
//
// One run = one scenario against one server. Config is a JSON object in argv[2]; the result is
// one JSON object on stdout. Every phase is bounded in time; the process exits by itself.
//
// Modes:
//   saturate  closed loop: each sender keeps `window` sends in flight; a send completes when
//             both its ack and its own broadcast copy arrived (so server queues stay bounded).
//   rate      open loop at `rate` deliveries/s (sends/s = rate / room size), latency measured.
//   idle      open `conns` connections, sign in, join, hold; server RSS before/after; then the
//             server's CPU over `heartbeatS` with nothing but heartbeats, and the latency of a
//             probe: the first group's first member sends `probeRate` a second for `probeS`.
//
// Every receiver checks the broadcast `seq` of its group: each acked seq exactly once, in
// increasing order (missing / duplicate / reordered are counted, and must be 0).

const { performance } = require('perf_hooks');
const WebSocket = require('ws');
const { Histogram } = require('./histogram');
const util = require('./util');

const { uid, gid, readInt, growTo } = util;

const cfg = Object.assign({
  mode: 'saturate',
  conns: 10,
  userOffset: 0,
  groupBase: 0,           // connection i joins group gid(groupBase + floor(i / groupSize))
  groupSize: 10,
  senders: 10,
  window: 2,
  rate: 0,                // deliveries per second (rate mode)
  warmupS: 1,
  measureS: 5,
  drainS: 15,
  setupTimeoutS: 120,
  settleMaxS: 60,
  holdS: 2,               // idle: how long to hold before reading RSS
  heartbeatS: 0,          // idle: a window of heartbeats only (server CPU)
  probeS: 0,              // idle: a window with a probe sender in the first group
  probeRate: 20,          // idle: the probe's sends per second
  concurrency: 200,       // handshakes in flight during setup
  contentLen: 64,
  maxInflight: 20000,     // rate mode: sends in flight beyond this are skipped (and counted)
  serverPid: 0,
  extraPids: [],          // e.g. redis-server: CPU reported separately
  clkTck: 100,
}, JSON.parse(process.argv[2] || '{}'));

const HARD_LIMIT_S = cfg.setupTimeoutS + cfg.settleMaxS + cfg.warmupS + cfg.measureS +
  cfg.drainS + cfg.holdS + cfg.heartbeatS + cfg.probeS + 30;
const hardTimer = setTimeout(() => {
  finish({ error: `swarm hard time limit (${HARD_LIMIT_S}s) reached` });
}, HARD_LIMIT_S * 1000);

const token = (sub) => util.token(sub, cfg.secret);
const procCpuS = (pid) => util.procCpuS(pid, cfg.clkTck);
const procRssKb = (pid) => util.procRssKb(pid);
const coreBusyS = () => util.coreBusyS(cfg.clkTck);
const selfCpuS = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- state

const conns = [];
const errors = [];
let measuring = false;
let deliveries = 0;          // `message` events received, all receivers, whole run
let otherEvents = 0;
let pings = 0;               // Engine.IO pings received, all connections         // presence, typing, ...: not counted, but used to wait for quiet
let lastOtherAt = 0;
let sendsAcked = 0;
let ackErrors = 0;
let inflight = 0;            // sends not yet complete
let sending = false;
let seqBase = -1;            // latest_seq at join: expected seqs are > seqBase
let ackedSeqs = new Uint8Array(1 << 16);
let maxAcked = 0;
const lat = new Histogram();

const MESSAGE_PREFIX = Buffer.from('42["message",');
const SEQ_KEY = Buffer.from('"seq":');
const CONTENT_KEY = Buffer.from('"content":');
const BAR = 124;  // '|'
const DOT = 46;   // '.'
function addError(msg) { if (errors.length < 20) errors.push(msg); }
class Conn {
  constructor(i) {
    this.i = i;
    this.user = uid(cfg.userOffset + i);
    this.group = gid(cfg.groupBase + Math.floor(i / cfg.groupSize));
    this.nextAck = 1;
    this.pending = new Map();  // ack id -> {n, kind}
    this.ready = false;
    this.closed = false;
    // receiver check
    this.seen = new Uint8Array(1024);
    this.last = 0;
    this.dups = 0;
    this.reorders = 0;
    this.received = 0;
    // sender
    this.n = 0;
    this.own = new Map();      // n -> state bits: 1 ack seen, 2 echo seen
  }

  open(onReady) {
    this.onReady = onReady;
    const ws = new WebSocket(cfg.url, { perMessageDeflate: false, skipUTF8Validation: true });
    this.ws = ws;
    ws.on('message', (data) => {
      // Broadcasts are the hot path: parsed from the bytes without making a string.
      if (data.length > 12 && data[0] === 52 && data[1] === 50 && data[2] === 91 &&
          data.compare(MESSAGE_PREFIX, 0, MESSAGE_PREFIX.length, 0, MESSAGE_PREFIX.length) === 0) {
        this.onMessage(data);
      } else {
        this.onFrame(data.toString());
      }
    });
    ws.on('error', (e) => { addError(`conn ${this.i}: ${e.message}`); this.fail(); });
    ws.on('close', () => { if (!this.closed && !this.ready) this.fail(); this.closed = true; });
  }

  fail() {
    if (this.onReady) { const cb = this.onReady; this.onReady = null; cb(false); }
  }

  emit(event, payload, kind, n) {
    const id = this.nextAck++;
    this.pending.set(id, { kind, n });
    this.ws.send(`42${id}${JSON.stringify([event, payload])}`);
  }

  onFrame(s) {
    const c0 = s.charCodeAt(0);
    if (c0 === 52 /* '4' */) {
      const c1 = s.charCodeAt(1);
      if (c1 === 50 /* '2' event */) {
        otherEvents++;
        lastOtherAt = performance.now();
      } else if (c1 === 51 /* '3' ack */) {
        this.onAck(s);
      } else if (c1 === 48 /* '0' connect */) {
        this.emit('join_group', { group_id: this.group }, 'join', 0);
      } else if (c1 === 52 /* '4' connect_error */) {
        addError(`conn ${this.i}: connect_error ${s.slice(2, 200)}`);
        this.ws.terminate();
        this.fail();
      }
    } else if (c0 === 50 /* '2' ping */) {
      pings++;
      this.ws.send('3');
    } else if (c0 === 48 /* '0' open */) {
      this.ws.send(`40${JSON.stringify({ token: token(this.user) })}`);
    }
  }

  onAck(s) {
    const br = s.indexOf('[');
    const id = Number(s.slice(2, br));
    const p = this.pending.get(id);
    if (p === undefined) return;
    this.pending.delete(id);
    if (p.kind === 'join') {
      const ack = JSON.parse(s.slice(br))[0];
      if (!ack || ack.ok !== true) {
        addError(`conn ${this.i}: join refused ${s.slice(br, br + 200)}`);
        this.fail();
        return;
      }
      const latest = typeof ack.latest_seq === 'number' ? ack.latest_seq : 0;
      if (seqBase < 0) seqBase = latest;
      else if (latest !== seqBase && cfg.mode !== 'idle') addError(`conn ${this.i}: latest_seq ${latest} != ${seqBase}`);
      this.last = latest;
      this.ready = true;
      const cb = this.onReady; this.onReady = null;
      if (cb) cb(true);
      return;
    }
    // send ack
    if (s.indexOf('"ok":true', br) < 0) {
      ackErrors++;
      addError(`conn ${this.i}: send refused ${s.slice(br, br + 200)}`);
      // No broadcast will come: the send is over. Back off a little before the next one.
      this.own.delete(p.n);
      inflight--;
      if (cfg.mode === 'saturate' && sending) setTimeout(() => { if (sending) this.send(); }, 20);
      return;
    }
    const k = s.indexOf('"seq":', br);
    const seq = parseInt(s.slice(k + 6, k + 26), 10);
    if (seq > maxAcked) maxAcked = seq;
    ackedSeqs = growTo(ackedSeqs, seq);
    ackedSeqs[seq] = 1;
    sendsAcked++;
    this.complete(p.n, 1);
  }

  onMessage(buf) {
    const now = performance.now();
    deliveries++;
    this.received++;
    const seq = readInt(buf, buf.indexOf(SEQ_KEY) + SEQ_KEY.length);
    const c = buf.indexOf(CONTENT_KEY) + CONTENT_KEY.length;
    const bar1 = buf.indexOf(BAR, c);
    const ts = readInt(buf, c) + readInt(buf, buf.indexOf(DOT, c) + 1) / 1000;  // "%d.%03d|"
    if (measuring) lat.record(now - ts);
    // exact order check
    this.seen = growTo(this.seen, seq);
    if (seq <= this.last) {
      if (this.seen[seq]) this.dups++; else this.reorders++;
    } else {
      this.last = seq;
    }
    this.seen[seq] = 1;
    // own echo?
    if (readInt(buf, bar1 + 1) === this.i) {
      this.complete(readInt(buf, buf.indexOf(BAR, bar1 + 1) + 1), 2);
    }
  }

  complete(n, bit) {
    const st = (this.own.get(n) || 0) | bit;
    if (st === 3) {
      this.own.delete(n);
      inflight--;
      if (cfg.mode === 'saturate' && sending) this.send();
    } else {
      this.own.set(n, st);
    }
  }

  send() {
    const n = ++this.n;
    let content = `${performance.now().toFixed(3)}|${this.i}|${n}|`;
    if (content.length < cfg.contentLen) content += 'x'.repeat(cfg.contentLen - content.length);
    this.own.set(n, 0);
    inflight++;
    this.emit('send_message', { group_id: this.group, content }, 'send', n);
  }
}

// ---------------------------------------------------------------- phases

async function setup() {
  const t0 = performance.now();
  let next = 0, done = 0, failed = 0;
  await new Promise((resolve) => {
    const deadline = setTimeout(() => resolve(), cfg.setupTimeoutS * 1000);
    const startOne = () => {
      if (next >= cfg.conns) return;
      const c = new Conn(next++);
      conns.push(c);
      c.open((ok) => {
        done++;
        if (!ok) failed++;
        if (done === cfg.conns) { clearTimeout(deadline); resolve(); } else startOne();
      });
    };
    for (let k = 0; k < Math.min(cfg.concurrency, cfg.conns); k++) startOne();
  });
  const ready = conns.filter((c) => c.ready).length;
  return { setup_s: (performance.now() - t0) / 1000, ready, failed: cfg.conns - ready };
}

async function settle() {
  // Wait until the server has gone quiet (e.g. presence events after many joins), bounded.
  const t0 = performance.now();
  const limit = t0 + cfg.settleMaxS * 1000;
  await sleep(200);
  while (performance.now() < limit && performance.now() - lastOtherAt < 300) await sleep(50);
  return (performance.now() - t0) / 1000;
}

function startRate(senders) {
  const sendsPerMs = cfg.rate / cfg.groupSize / 1000;
  const t0 = performance.now();
  let issued = 0, rr = 0, skipped = 0;
  const timer = setInterval(() => {
    if (!sending) return;
    const due = Math.floor((performance.now() - t0) * sendsPerMs) - issued;
    for (let k = 0; k < due; k++) {
      issued++;
      if (inflight >= cfg.maxInflight) { skipped++; continue; }
      senders[rr++ % senders.length].send();
    }
  }, 1);
  return { stop: () => clearInterval(timer), stats: () => ({ issued, skipped }) };
}

async function drain(members = conns) {
  const t0 = performance.now();
  const limit = t0 + cfg.drainS * 1000;
  const caughtUp = () => inflight === 0 &&
    members.every((c) => !c.ready || c.last >= maxAcked);
  while (performance.now() < limit && !caughtUp()) await sleep(20);
  await sleep(100);  // late duplicates would show up here
  return { drain_s: (performance.now() - t0) / 1000, drain_complete: caughtUp() };
}

function verify(members = conns) {
  let missing = 0, dups = 0, reorders = 0, unexpected = 0, receivers = 0, expected = 0;
  for (let s = seqBase + 1; s <= maxAcked; s++) if (ackedSeqs[s]) expected++;
  for (const c of members) {
    if (!c.ready) continue;
    receivers++;
    dups += c.dups;
    reorders += c.reorders;
    const top = Math.max(maxAcked, c.seen.length - 1);
    for (let s = seqBase + 1; s <= top; s++) {
      const got = s < c.seen.length && c.seen[s];
      const want = s <= maxAcked && ackedSeqs[s];
      if (want && !got) missing++;
      else if (got && !want) unexpected++;
    }
  }
  return { receivers, expected_seqs: expected, missing, dups, reorders, unexpected, ack_errors: ackErrors };
}

async function main() {
  const out = { mode: cfg.mode, conns: cfg.conns, room: cfg.groupSize };
  const rssBefore = procRssKb(cfg.serverPid);
  const cpuSetup0 = procCpuS(cfg.serverPid);
  Object.assign(out, await setup());
  if (out.ready < cfg.conns) return finish(Object.assign(out, { error: `${out.failed} of ${cfg.conns} connections failed to sign in and join` }));
  out.settle_s = await settle();
  // Server CPU to sign in and join everyone (and whatever that fans out, e.g. presence events).
  const cpuSetup = procCpuS(cfg.serverPid) - cpuSetup0;
  out.setup_cpu_s = cpuSetup;
  out.setup_cpu_ms_per_conn = cpuSetup / cfg.conns * 1000;

  if (cfg.mode === 'idle') {
    await sleep(cfg.holdS * 1000);
    const rssAfter = procRssKb(cfg.serverPid);
    Object.assign(out, {
      rss_before_kb: rssBefore, rss_after_kb: rssAfter,
      kb_per_conn: (rssAfter - rssBefore) / cfg.conns,
      conns_per_s: cfg.conns / out.setup_s,
    });
    if (cfg.heartbeatS > 0) out.heartbeat = await heartbeatWindow();
    if (cfg.probeS > 0) out.probe = await probeWindow();
    Object.assign(out, await massDisconnect());
    return finish(out);
  }

  const roomMembers = conns.filter((c) => c.ready);
  const senders = roomMembers.slice(0, Math.min(cfg.senders, roomMembers.length));
  sending = true;
  let rate = null;
  if (cfg.mode === 'saturate') {
    for (const s of senders) for (let w = 0; w < cfg.window; w++) s.send();
  } else {
    rate = startRate(senders);
  }
  await sleep(cfg.warmupS * 1000);

  // measured window
  const d0 = deliveries, a0 = sendsAcked, g0 = selfCpuS(), s0 = procCpuS(cfg.serverPid);
  const x0 = cfg.extraPids.map(procCpuS);
  const k0 = coreBusyS(), v0 = util.procKernelView(cfg.serverPid, cfg.clkTck);
  const t0 = performance.now();
  measuring = true;
  await sleep(cfg.measureS * 1000);
  measuring = false;
  const t1 = performance.now();
  const d1 = deliveries, a1 = sendsAcked, g1 = selfCpuS(), s1 = procCpuS(cfg.serverPid);
  const x1 = cfg.extraPids.map(procCpuS);
  const k1 = coreBusyS(), v1 = util.procKernelView(cfg.serverPid, cfg.clkTck);
  sending = false;
  if (rate) rate.stop();

  const wall = (t1 - t0) / 1000;
  const cpu = s1 - s0;
  Object.assign(out, {
    senders: senders.length,
    window_s: wall,
    deliveries: d1 - d0,
    sends: a1 - a0,
    deliveries_per_s: (d1 - d0) / wall,
    sends_per_s: (a1 - a0) / wall,
    server_cpu_s: cpu,
    deliveries_per_cpu_s: cpu > 0 ? (d1 - d0) / cpu : null,
    server_cpu_util: cpu / wall,
    gen_cpu_util: (g1 - g0) / wall,
    extra_cpu_s: x1.map((v, k) => (v === null || x0[k] === null ? null : v - x0[k])),
    core_busy: Object.fromEntries(Object.keys(k1).map((c) => [c, (k1[c] - k0[c]) / wall])),
    server_rss_kb: procRssKb(cfg.serverPid),
    latency_ms: lat.summary(),
  });
  if (v0 && v1) {
    Object.assign(out, { server_user_cpu_s: v1.user - v0.user, server_sys_cpu_s: v1.sys - v0.sys,
                         server_syscalls: v1.syscalls - v0.syscalls });
  }
  if (rate) Object.assign(out, { target_deliveries_per_s: cfg.rate }, rate.stats());
  Object.assign(out, await drain());
  out.verify = verify();
  out.deliveries_total = deliveries;
  out.other_events = otherEvents;
  finish(out);
}

/** The server's CPU while every connection only exchanges heartbeats. */
async function heartbeatWindow() {
  const c0 = procCpuS(cfg.serverPid), p0 = pings, t0 = performance.now();
  await sleep(cfg.heartbeatS * 1000);
  const wall = (performance.now() - t0) / 1000;
  const cpu = procCpuS(cfg.serverPid) - c0;
  const closed = conns.filter((c) => c.closed).length;
  return { window_s: wall, server_cpu_s: cpu, server_cpu_util: cpu / wall, pings: pings - p0,
    pings_per_s: (pings - p0) / wall, closed };
}

/** Send -> deliver latency in the first group while every other connection idles. */
async function probeWindow() {
  const members = conns.slice(0, cfg.groupSize).filter((c) => c.ready);
  const sender = members[0];
  const c0 = procCpuS(cfg.serverPid), t0 = performance.now();
  sending = true;
  measuring = true;
  const timer = setInterval(() => sender.send(), 1000 / cfg.probeRate);
  await sleep(cfg.probeS * 1000);
  clearInterval(timer);
  measuring = false;
  sending = false;
  const wall = (performance.now() - t0) / 1000;
  const cpu = procCpuS(cfg.serverPid) - c0;
  const drained = await drain(members);
  return { window_s: wall, room: members.length, sends: sendsAcked, server_cpu_util: cpu / wall,
    latency_ms: lat.summary(), ...drained, verify: verify(members),
    closed: conns.filter((c) => c.closed).length };
}

/** Drop every connection at once; the server's CPU until it has gone quiet again. */
async function massDisconnect() {
  const c0 = procCpuS(cfg.serverPid), t0 = performance.now();
  for (const c of conns) { c.closed = true; try { c.ws.terminate(); } catch (e) { /* closing anyway */ } }
  let last = c0, quietFor = 0, busyUntil = performance.now();
  const limit = performance.now() + 90_000;
  while (quietFor < 500 && performance.now() < limit) {
    await sleep(100);
    const now = procCpuS(cfg.serverPid);
    if (now - last > 0.02) { quietFor = 0; busyUntil = performance.now(); } else quietFor += 100;
    last = now;
  }
  return { teardown_s: (busyUntil - t0) / 1000, teardown_cpu_s: last - c0 };
}

let finished = false;
function finish(out) {
  if (finished) return;
  finished = true;
  clearTimeout(hardTimer);
  out.errors = errors;
  process.stdout.write(JSON.stringify(out) + '\n', () => {
    for (const c of conns) { try { c.ws.terminate(); } catch (e) { /* closing anyway */ } }
    process.exit(0);
  });
}

main().catch((e) => finish({ error: String(e && e.stack || e) }));
