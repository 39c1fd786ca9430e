// One group's messages as a client holds them: each seq once, the latest state
// of each message by `rev`, and the bookkeeping that keeps the copy exact: every
// change up to `rev` is applied, and a change seen above it means a gap to fill.

/**
 * Should `incoming` replace `current` (same seq)? The state with the higher
 * `rev` is the later one. Messages stored before revisions existed carry rev 0
 * until the server gives them one: then tombstones are final and later edits win.
 */
export function supersedes(incoming, current) {
  // Any revised state is later than an unrevised one (a reaction or a pin, not only an edit).
  if (incoming.rev > 0 || current.rev > 0) return incoming.rev > current.rev;
  if (current.deleted) return false;
  if (incoming.deleted) return true;
  return (incoming.edited_at || "") > (current.edited_at || "");
}

export class GroupTimeline {
  constructor(groupId) {
    this.groupId = groupId;
    this.reset();
  }

  /** Forget everything held (the server's history is not the one this copy came from). */
  reset() {
    this.bySeq = new Map(); // seq -> message
    this.byId = new Map(); // id -> message
    this.seqs = []; // sorted
    this.top = 0; // every seq from the oldest held up to `top` is held
    // Every change up to `rev` is applied. A change with rev R shows as a message
    // whose `rev` is R; those seen above `rev` wait in `revsAbove` until the ones
    // between have been seen too.
    this.rev = 0;
    this.revsAbove = new Set();
    this.revKnown = 0; // the highest rev seen
    this.hasOlder = false; // older messages exist than the oldest held
    this.catchingUp = false; // a rejoin is paging in what was missed
    this.filling = null; // the running gap fill, if any
  }

  get oldest() {
    return this.seqs.length ? this.seqs[0] : null;
  }

  get newest() {
    return this.seqs.length ? this.seqs[this.seqs.length - 1] : 0;
  }

  /** The held messages, oldest first. */
  messages() {
    return this.seqs.map((seq) => this.bySeq.get(seq));
  }

  /** True when a change above `rev` is known to exist: fetch `get_changes {after_rev: rev}`. */
  get hasGap() {
    return this.revKnown > this.rev;
  }

  /** Every change up to `rev` is applied (a join or a page of changes said so). */
  applyUpTo(rev) {
    if (rev > this.rev) this.rev = rev;
    for (const seen of this.revsAbove) if (seen <= this.rev) this.revsAbove.delete(seen);
    this._advanceRev();
  }

  _noteRev(rev) {
    if (!(rev > this.rev)) return; // 0 (not revised yet) or already counted
    this.revsAbove.add(rev);
    this.revKnown = Math.max(this.revKnown, rev);
  }

  _advanceRev() {
    while (this.revsAbove.delete(this.rev + 1)) this.rev += 1;
    this.revKnown = Math.max(this.revKnown, this.rev);
  }

  /**
   * Add or update messages, in any order and overlap; returns how many were
   * new. With `onlyHeld`, a message older than the oldest held is left out (a
   * change caught up on: loading older history fetches its current state).
   */
  merge(messages, { onlyHeld = false } = {}) {
    let added = 0;
    for (const message of messages) {
      if (message.group_id !== this.groupId) continue;
      this._noteRev(message.rev); // the state a change produced: that change is applied
      const current = this.bySeq.get(message.seq);
      if (!current && onlyHeld && this.seqs.length && message.seq < this.oldest) continue;
      if (current && !supersedes(message, current)) continue;
      if (!current) {
        added += 1;
        this._insertSeq(message.seq);
      } else if (current.id !== message.id) {
        this.byId.delete(current.id);
      }
      this.bySeq.set(message.seq, message);
      this.byId.set(message.id, message);
      this.changed(message, current ?? null);
    }
    if (added) this._advanceTop();
    this._advanceRev();
    return added;
  }

  /** Called for every message added (`previous` null) or replaced by a later state. */
  changed(message, previous) {} // eslint-disable-line no-unused-vars

  /** Where `seq` is, or would go, among the held seqs (binary search). */
  position(seq) {
    let lo = 0;
    let hi = this.seqs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.seqs[mid] < seq) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  _insertSeq(seq) {
    this.seqs.splice(this.position(seq), 0, seq);
  }

  _advanceTop() {
    if (this.top < this.oldest - 1) this.top = this.oldest - 1;
    while (this.bySeq.has(this.top + 1)) this.top += 1;
  }
}
