'use strict';
// Latency histogram: 1 % wide log buckets from 1 µs to ~100 s, exact max. O(1) per sample.

const MIN_MS = 0.001;
const STEP = Math.log(1.01);
const BUCKETS = Math.ceil(Math.log(1e5 / MIN_MS) / STEP) + 1;

class Histogram {
  constructor() {
    this.counts = new Float64Array(BUCKETS);
    this.n = 0;
    this.max = 0;
    this.sum = 0;
  }

  record(ms) {
    if (ms < MIN_MS) ms = MIN_MS;
    let b = Math.floor(Math.log(ms / MIN_MS) / STEP);
    if (b >= BUCKETS) b = BUCKETS - 1;
    this.counts[b]++;
    this.n++;
    this.sum += ms;
    if (ms > this.max) this.max = ms;
  }

  quantile(q) {
    if (this.n === 0) return null;
    const want = q * this.n;
    let acc = 0;
    for (let b = 0; b < BUCKETS; b++) {
      acc += this.counts[b];
      if (acc >= want) return Math.min(MIN_MS * Math.exp((b + 0.5) * STEP), this.max);
    }
    return this.max;
  }

  summary() {
    const r = (v) => (v === null ? null : Math.round(v * 1000) / 1000);
    return {
      count: this.n,
      mean: this.n ? r(this.sum / this.n) : null,
      p50: r(this.quantile(0.5)),
      p99: r(this.quantile(0.99)),
      p999: r(this.quantile(0.999)),
      max: r(this.n ? this.max : null),
    };
  }
}

module.exports = { Histogram };
