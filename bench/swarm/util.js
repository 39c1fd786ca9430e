'use strict';
// Helpers of the swarm: ids and tokens as the harness seeds them, /proc readers, byte parsing.

const fs = require('fs');
const crypto = require('crypto');

const uid = (i) => 'aaaaaaaa' + i.toString(16).padStart(16, '0');
const gid = (k) => 'bbbbbbbb' + k.toString(16).padStart(16, '0');

function b64url(buf) {
  return Buffer.from(buf).toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
}
function token(sub, secret) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify({ sub, iat: now, exp: now + 3600 }));
  const sig = b64url(crypto.createHmac('sha256', secret).update(`${head}.${body}`).digest());
  return `${head}.${body}.${sig}`;
}

// The fields of /proc/<pid>/stat after the command name (f[11] utime, f[12] stime, in ticks).
function statFields(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}
function procCpuS(pid, clkTck) {
  if (!pid) return null;
  try {
    const f = statFields(pid);
    return (Number(f[11]) + Number(f[12])) / clkTck;   // utime + stime
  } catch (e) { return null; }
}
// The server's user and kernel CPU seconds apart, and its read and write system calls
// (/proc/<pid>/io: read, readv, write, writev..., which is what libuv and Node use on sockets).
// Kernel entries cost very differently from one host to another, and the peers make very
// different numbers of them per message: these say how much of a ratio is the host's.
function procKernelView(pid, clkTck) {
  if (!pid) return null;
  try {
    const f = statFields(pid);
    const io = fs.readFileSync(`/proc/${pid}/io`, 'utf8');
    const count = (name) => Number(new RegExp(`^${name}: (\\d+)`, 'm').exec(io)[1]);
    return { user: Number(f[11]) / clkTck, sys: Number(f[12]) / clkTck, syscalls: count('syscr') + count('syscw') };
  } catch (e) { return null; }
}
function procRssKb(pid) {
  if (!pid) return null;
  try {
    const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch (e) { return null; }
}
// Busy CPU seconds of each core (from /proc/stat): with the server's own CPU this shows how much
// else ran on its core during the window (this machine is shared).
function coreBusyS(clkTck) {
  const out = {};
  try {
    for (const line of fs.readFileSync('/proc/stat', 'utf8').split('\n')) {
      const m = /^cpu(\d+) (.*)$/.exec(line);
      if (!m) continue;
      const v = m[2].trim().split(/\s+/).map(Number);
      // user + nice + system + steal. Not irq/softirq: the loopback TCP work of our own traffic
      // lands there (about 15 % of the server core at 150k deliveries/s) without being charged to
      // any process, so counting it would call our own load "other".
      out[m[1]] = (v[0] + v[1] + v[2] + v[7]) / clkTck;
    }
  } catch (e) { /* not Linux */ }
  return out;
}
function readInt(buf, at) {
  while (buf[at] === 32 || buf[at] === 34) at++;  // tolerate `": "` and the opening quote
  let v = 0;
  for (let c = buf[at]; c >= 48 && c <= 57; c = buf[++at]) v = v * 10 + (c - 48);
  return v;
}

function growTo(arr, n) {
  if (n < arr.length) return arr;
  let size = arr.length;
  while (size <= n) size *= 2;
  const out = new Uint8Array(size);
  out.set(arr);
  return out;
}

module.exports = { uid, gid, token, procCpuS, procKernelView, procRssKb, coreBusyS, readInt, growTo };
