import { randomUUID } from 'node:crypto';
import type { Config } from '../config.ts';
import type { Logger } from '../observability/log.ts';
import type { Metrics } from '../observability/metrics.ts';
import { CloseCode } from '../protocol/client.ts';
import type { Upstream, UpstreamOptions } from '../transport/upstream.ts';
import { Actor } from './actor.ts';
import { Session, type SessionOutcome, type SessionSocket } from './session.ts';

export type GatewayMessage =
  | { kind: 'connected'; socket: SessionSocket; attach: (session: Session) => void }
  | { kind: 'session-ended'; session: Session; outcome: SessionOutcome }
  | { kind: 'shutdown'; code: number; reason: string };

export interface GatewayDeps {
  config: Config;
  upstreamUrl: string;
  metrics: Metrics;
  logger: Logger;
  openUpstream?: (options: UpstreamOptions) => Upstream;
}

/**
 * The supervisor: admits sessions (capacity), keeps the registry, and hears when a session ends.
 * It never reaches into a session's state; sessions and the gateway talk by messages.
 */
export class Gateway extends Actor<GatewayMessage> {
  private readonly sessions = new Map<string, Session>();
  private closing = false;

  constructor(private readonly deps: GatewayDeps) {
    super();
  }

  /** Whether a new session would be admitted now: what /readyz answers. */
  get accepting(): boolean {
    return !this.closing && this.sessions.size < this.deps.config.limits.maxSessions;
  }

  get size(): number {
    return this.sessions.size;
  }

  protected receive(m: GatewayMessage): void {
    switch (m.kind) {
      case 'connected':
        return this.admit(m.socket, m.attach);
      case 'session-ended':
        if (!this.sessions.delete(m.session.id)) return;
        this.deps.metrics.sessionsActive.dec();
        this.deps.metrics.sessionsTotal.labels(m.outcome).inc();
        return;
      case 'shutdown':
        this.closing = true;
        for (const session of this.sessions.values()) session.post({ kind: 'shutdown', code: m.code, reason: m.reason });
        return;
    }
  }

  protected failed(error: unknown, message: GatewayMessage): void {
    this.deps.logger.error({ err: error, message: message.kind }, 'gateway failed to handle a message');
  }

  private admit(socket: SessionSocket, attach: (session: Session) => void): void {
    if (!this.accepting) {
      this.deps.metrics.sessionsTotal.labels('refused').inc();
      socket.send(JSON.stringify({ type: 'error', code: 'overloaded', message: 'the gateway is at capacity: try again later' }), false);
      socket.end(CloseCode.tryAgainLater, 'at capacity');
      return;
    }
    const session = new Session(socket, { ...this.deps, onEnded: (s, outcome) => this.post({ kind: 'session-ended', session: s, outcome }) }, randomUUID());
    this.sessions.set(session.id, session);
    this.deps.metrics.sessionsActive.inc();
    attach(session);
  }
}
