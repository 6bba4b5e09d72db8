/**
 * What one session may hold in memory on its client's and its upstream's behalf, in bytes: the audio
 * and text waiting for the client socket, what the pacer holds back, and what waits for the upstream
 * socket. Each holder takes what it keeps and gives it back when the bytes leave; the upstream socket's
 * own buffer is read where it lives (`upstreamBytes`), since ws keeps that count itself.
 */
export class SessionBudget {
  /** Bytes taken by the client side: the sink's queue and the pacer's hold. */
  held = 0;
  /** Read live: what the upstream socket has not yet written. */
  upstreamBytes: () => number = () => 0;

  constructor(readonly limit: number) {}

  get used(): number {
    return this.held + this.upstreamBytes();
  }

  take(bytes: number): void {
    this.held += bytes;
  }

  give(bytes: number): void {
    this.held -= bytes;
  }
}
