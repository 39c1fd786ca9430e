'use strict';
// Peer (1): the same chat on Node Socket.IO v4 (socket.io from the npm registry), in-memory store.
// JWT (HS256) checked in a handshake middleware with `jsonwebtoken`; default server options.
//
//   node bench/servers/node_chat.js --port P --spec bench/.work/spec.json

const fs = require('fs');
const http = require('http');
const { Server } = require('socket.io');
const jwt = require('jsonwebtoken');

const args = {};
for (let k = 2; k < process.argv.length; k += 2) args[process.argv[k].replace(/^--/, '')] = process.argv[k + 1];
const spec = JSON.parse(fs.readFileSync(args.spec, 'utf8'));

const uid = (i) => 'aaaaaaaa' + i.toString(16).padStart(16, '0');
const gid = (k) => 'bbbbbbbb' + k.toString(16).padStart(16, '0');
const groups = new Map();
for (const g of spec.groups) {
  const members = new Set();
  for (let i = g.first; i < g.first + g.count; i++) members.add(uid(i));
  groups.set(gid(g.k), { name: g.name, members, history: [] });
}
const userName = (id) => `Bench User ${parseInt(id.slice(8), 16)}`;
const idPrefix = require('crypto').randomBytes(4).toString('hex');
let idCounter = 0;
const newId = () => idPrefix + (++idCounter).toString(16).padStart(16, '0');

const httpServer = http.createServer();
const io = new Server(httpServer);

io.use((socket, next) => {
  try {
    const claims = jwt.verify((socket.handshake.auth || {}).token || '', spec.secret, { algorithms: ['HS256'] });
    socket.data.user = claims.sub;
    next();
  } catch (e) {
    const err = new Error('unauthorized');
    err.data = { code: 'unauthorized', message: e.message };
    next(err);
  }
});

const notMember = { ok: false, error: { code: 'not_member', message: 'not a member' } };

io.on('connection', (socket) => {
  socket.on('join_group', (data, ack) => {
    const g = groups.get(data && data.group_id);
    if (!g || !g.members.has(socket.data.user)) return ack(notMember);
    socket.join(data.group_id);
    ack({ ok: true, group: { id: data.group_id, name: g.name }, messages: g.history.slice(-50),
          has_more: g.history.length > 50, latest_seq: g.history.length });
  });

  socket.on('send_message', (data, ack) => {
    const g = groups.get(data && data.group_id);
    if (!g || !g.members.has(socket.data.user)) return ack(notMember);
    const name = userName(socket.data.user);
    const msg = {
      type: 'message', kind: 'message', id: newId(), seq: g.history.length + 1, rev: g.history.length + 1, group_id: data.group_id,
      sender_id: socket.data.user, sender: name, sender_name: name, content: data.content,
      timestamp: new Date().toISOString(), client_msg_id: null, edited_at: null, deleted: false,
      mentions: [], reply_to: null, reactions: [], pinned: null, answer_id: null, attachments: [], deleted_by: null,
    };
    g.history.push(msg);
    io.to(data.group_id).emit('message', msg);
    ack({ ok: true, message: msg, duplicate: false });
  });
});

httpServer.listen(Number(args.port), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
