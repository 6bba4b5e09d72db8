import { randomUUID } from 'node:crypto';
import type { Config } from '../config.ts';
import type { Logger } from '../observability/log.ts';
import type { Metrics } from '../observability/metrics.ts';
import { CloseCode } from '../protocol/client.ts';
import type { Connection, ConnectionHandler } from '../transport/client-server.ts';
import type { Upstream, UpstreamOptions } from '../transport/upstream.ts';
import { Actor } from './actor.ts';
import { Session, type SessionOutcome, type SessionSocket } from './session.ts';

export type GatewayMessage =
  | { kind: 'connected'; socket: SessionSocket; attach: (connection: Connection) => void }
  | { kind: 'session-ended'; session: Session; outcome: SessionOutcome }
  | { kind: 'tick' }
  /** Stop admitting; let replies in progress finish until the deadline, then close every session. */
  | { kind: 'drain'; deadlineMs: number; drained: () => void }
  | { kind: 'deadline' }
  | { kind: 'stop' };

export interface GatewayDeps {
  config: Config;
  upstreamUrl: string;
  metrics: Metrics;
  logger: Logger;
  openUpstream?: (options: UpstreamOptions) => Upstream;
}

/** How often sessions check their idle and stall timeouts: one timer for all of them. */
const TICK_MS = 1000;

/**
 * The supervisor: admits sessions (capacity, draining), keeps the registry, hears when a session ends,
 * and keeps time for the sessions. It never reaches into a session's state: they talk by messages.
 */
export class Gateway extends Actor<GatewayMessage> implements ConnectionHandler {
  private readonly sessions = new Map<string, Session>();
  private closing = false;
  private drained: (() => void) | undefined;
  private deadline: NodeJS.Timeout | undefined;
  private readonly ticker: NodeJS.Timeout;

  constructor(private readonly deps: GatewayDeps) {
    super();
    this.ticker = setInterval(() => this.post({ kind: 'tick' }), TICK_MS).unref();
  }

  open(socket: SessionSocket, attach: (connection: Connection) => void): void {
    this.post({ kind: 'connected', socket, attach });
  }

  /** Whether a new session would be admitted now: what /readyz answers. */
  get accepting(): boolean {
    return !this.closing && this.sessions.size < this.deps.config.limits.maxSessions;
  }

  get size(): number {
    return this.sessions.size;
  }

  /** Drains (see the message) and resolves once the last session has ended. */
  drain(deadlineMs: number): Promise<void> {
    return new Promise((drained) => this.post({ kind: 'drain', deadlineMs, drained }));
  }

  protected receive(m: GatewayMessage): void {
    switch (m.kind) {
      case 'connected':
        return this.admit(m.socket, m.attach);
      case 'session-ended':
        if (!this.sessions.delete(m.session.id)) return;
        this.deps.metrics.sessionsActive.dec();
        this.deps.metrics.sessionsTotal.labels(m.outcome).inc();
        return this.checkDrained();
      case 'tick': {
        const now = performance.now();
        for (const session of this.sessions.values()) session.post({ kind: 'tick', now });
        return;
      }
      case 'drain':
        this.deps.logger.info({ sessions: this.sessions.size, deadlineMs: m.deadlineMs }, 'draining');
        this.closing = true;
        this.drained = m.drained;
        this.deadline = setTimeout(() => this.post({ kind: 'deadline' }), m.deadlineMs);
        this.tellAll(true);
        return this.checkDrained();
      case 'deadline':
        this.deps.logger.info({ sessions: this.sessions.size }, 'drain deadline: closing the rest');
        return this.tellAll(false);
      case 'stop':
        this.closing = true;
        clearInterval(this.ticker);
        return this.tellAll(false);
    }
  }

  protected failed(error: unknown, message: GatewayMessage): void {
    this.deps.logger.error({ err: error, message: message.kind }, 'gateway failed to handle a message');
  }

  private tellAll(graceful: boolean): void {
    for (const session of [...this.sessions.values()]) session.post({ kind: 'shutdown', graceful });
  }

  private checkDrained(): void {
    if (this.drained === undefined || this.sessions.size > 0) return;
    clearTimeout(this.deadline);
    clearInterval(this.ticker);
    const drained = this.drained;
    this.drained = undefined;
    drained();
  }

  private admit(socket: SessionSocket, attach: (connection: Connection) => void): void {
    if (!this.accepting) {
      this.deps.metrics.sessionsTotal.labels('refused').inc();
      this.deps.metrics.clientCloses.labels(String(CloseCode.tryAgainLater)).inc();
      const message = this.closing ? 'the gateway is shutting down: try again later' : 'the gateway is at capacity: try again later';
      socket.send(JSON.stringify({ type: 'error', code: 'overloaded', message }), false);
      socket.end(CloseCode.tryAgainLater, this.closing ? 'shutting down' : 'at capacity');
      return;
    }
    const session = new Session(socket, { ...this.deps, onEnded: (s, outcome) => this.post({ kind: 'session-ended', session: s, outcome }) }, randomUUID());
    this.sessions.set(session.id, session);
    this.deps.metrics.sessionsActive.inc();
    attach(session);
  }
}
