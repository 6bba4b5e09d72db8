/**
 * Whether each worker admits sessions now, one flag per worker in memory every thread shares: any worker
 * can answer /readyz for the whole gateway without asking the others.
 */
export class Readiness {
  private readonly flags: Int32Array;

  constructor(readonly buffer: SharedArrayBuffer) {
    this.flags = new Int32Array(buffer);
  }

  static create(workers: number): Readiness {
    return new Readiness(new SharedArrayBuffer(workers * Int32Array.BYTES_PER_ELEMENT));
  }

  set(worker: number, accepting: boolean): void {
    Atomics.store(this.flags, worker, accepting ? 1 : 0);
  }

  /** Every worker is up and accepting. */
  get all(): boolean {
    for (let i = 0; i < this.flags.length; i++) if (Atomics.load(this.flags, i) !== 1) return false;
    return true;
  }
}
