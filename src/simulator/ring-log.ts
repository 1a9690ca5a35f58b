/**
 * A bounded, append-only log that drops its oldest entries once full.
 *
 * The simulator records every request it sees; a long benchmark must not grow memory without bound, and
 * dropping from the front of a plain array would copy it on every append. A ring buffer keeps append O(1).
 */
export class RingLog<T> {
  private readonly entries: T[] = [];
  /** Index of the oldest entry once the buffer has wrapped. */
  private oldest = 0;

  constructor(private readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`capacity must be a positive integer, got ${capacity}`);
  }

  append(entry: T): void {
    if (this.entries.length < this.capacity) {
      this.entries.push(entry);
      return;
    }
    this.entries[this.oldest] = entry;
    this.oldest = (this.oldest + 1) % this.capacity;
  }

  /** The entries, oldest first, as a new array the caller may keep. */
  toArray(): T[] {
    if (this.oldest === 0) return this.entries.slice();
    return this.entries.slice(this.oldest).concat(this.entries.slice(0, this.oldest));
  }

  clear(): void {
    this.entries.length = 0;
    this.oldest = 0;
  }
}
