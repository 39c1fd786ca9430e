// A minimal event emitter that works the same in browsers and Node.

export class Emitter {
  #listeners = new Map();

  /** Call `listener` for every `event`; returns a function that stops it. */
  on(event, listener) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(listener);
    return () => this.off(event, listener);
  }

  off(event, listener) {
    this.#listeners.get(event)?.delete(listener);
  }

  /** The next `event` (its first argument), or a rejection after `timeoutMs`. */
  once(event, timeoutMs = 0) {
    return new Promise((resolve, reject) => {
      const stop = this.on(event, (value) => {
        stop();
        clearTimeout(timer);
        resolve(value);
      });
      const timer = timeoutMs > 0
        ? setTimeout(() => {
          stop();
          reject(new Error(`no ${event} within ${timeoutMs} ms`));
        }, timeoutMs)
        : undefined;
    });
  }

  emit(event, ...args) {
    for (const listener of [...(this.#listeners.get(event) ?? [])]) {
      try {
        listener(...args);
      } catch (err) {
        // One listener's bug must not stop the others, nor the client's own bookkeeping.
        setTimeout(() => {
          throw err;
        });
      }
    }
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
