import { randomUUID } from 'node:crypto';
import type { Config } from '../config.ts';
import type { Logger } from '../observability/log.ts';
import { LoadSampler } from '../observability/load.ts';
import type { Metrics, RefuseReason } from '../observability/metrics.ts';
import { CloseCode } from '../protocol/client.ts';
import type { ClientIdentity } from '../identity/clients.ts';
import type { Provisioner } from '../identity/provisioning.ts';
import type { Connection, ConnectionHandler } from '../transport/client-server.ts';
import type { Upstream, UpstreamOptions } from '../transport/upstream.ts';
import { Actor } from './actor.ts';
import { admission, initialAdmission, type AdmissionState } from './admission.ts';
import { Session, type SessionOutcome, type SessionSocket } from './session.ts';

export type GatewayMessage =
  | { kind: 'connected'; socket: SessionSocket; identity: ClientIdentity; attach: (connection: Connection) => void }
  | { kind: 'session-ended'; session: Session; outcome: SessionOutcome }
  | { kind: 'tick' }
  /** Stop admitting; let replies in progress finish until the deadline, then close every session. */
  | { kind: 'drain'; deadlineMs: number; drained: () => void }
  | { kind: 'deadline' }
  | { kind: 'stop' };

export interface GatewayDeps {
  config: Config;
  provisioner: Provisioner;
  metrics: Metrics;
  logger: Logger;
  openUpstream?: (options: UpstreamOptions) => Upstream;
}

/**
 * How often sessions check their idle and stall timeouts, and how long a load window is: one timer for
 * all of them. A second reacts fast enough for admission: sessions arrive at human pace, readiness probes
 * come seconds apart, and during a stall the upgrades wait for the same loop anyway. A shorter window
 * would hold too few event-loop samples (10 ms apart) and frames for a percentile to mean anything.
 */
const TICK_MS = 1000;

const REFUSALS: Record<RefuseReason, { message: string; close: string }> = {
  draining: { message: 'the gateway is shutting down: try again later', close: 'shutting down' },
  load: { message: 'the gateway is overloaded: try again later', close: 'overloaded' },
  capacity: { message: 'the gateway is at capacity: try again later', close: 'at capacity' },
};

/**
 * The supervisor: admits sessions (capacity, load, draining), keeps the registry, hears when a session
 * ends, and keeps time for the sessions. It never reaches into a session's state: they talk by messages.
 * One gateway is one worker thread: its load is that thread's event loop and frames.
 */
export class Gateway extends Actor<GatewayMessage> implements ConnectionHandler {
  private readonly sessions = new Map<string, Session>();
  private closing = false;
  private drained: (() => void) | undefined;
  private deadline: NodeJS.Timeout | undefined;
  private readonly ticker: NodeJS.Timeout;
  private readonly load: LoadSampler;
  private admission: AdmissionState;

  constructor(private readonly deps: GatewayDeps) {
    super();
    this.load = new LoadSampler(deps.metrics.frameLateness);
    this.admission = initialAdmission(performance.now());
    this.ticker = setInterval(() => this.post({ kind: 'tick' }), TICK_MS).unref();
  }

  open(socket: SessionSocket, identity: ClientIdentity, attach: (connection: Connection) => void): void {
    this.post({ kind: 'connected', socket, identity, attach });
  }

  /** Whether a new session would be admitted now: what /readyz answers. */
  get accepting(): boolean {
    return this.refusal() === undefined;
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
        return this.admit(m.socket, m.identity, m.attach);
      case 'session-ended':
        if (!this.sessions.delete(m.session.id)) return;
        this.deps.metrics.sessionsActive.dec();
        this.deps.metrics.sessionsTotal.labels(m.outcome).inc();
        return this.checkDrained();
      case 'tick': {
        const now = performance.now();
        this.assessLoad(now);
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
        this.stopTicking();
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
    this.stopTicking();
    const drained = this.drained;
    this.drained = undefined;
    drained();
  }

  private stopTicking(): void {
    clearInterval(this.ticker);
    this.load.stop();
  }

  /** Ends a load window: the admission decision for the next one. */
  private assessLoad(now: number): void {
    const load = this.load.sample();
    this.deps.metrics.eventLoopLag.set(load.lagMs / 1000);
    const before = this.admission;
    this.admission = admission(before, { ...load, now }, this.deps.config.admission);
    if (this.admission.accepting === before.accepting) return;
    this.deps.metrics.admissionOpen.set(this.admission.accepting ? 1 : 0);
    const figures = { lagMs: Math.round(load.lagMs), latenessMs: Math.round(load.latenessMs), sessions: this.sessions.size, ...this.deps.config.admission };
    if (this.admission.accepting) this.deps.logger.info({ ...figures, refusedMs: Math.round(now - before.since) }, 'load admission open again');
    else this.deps.logger.warn({ ...figures, reason: this.admission.reason }, 'overloaded: refusing new sessions');
  }

  /** Why a new session would be refused now, if it would. */
  private refusal(): RefuseReason | undefined {
    if (this.closing) return 'draining';
    if (!this.admission.accepting) return 'load';
    if (this.sessions.size >= this.deps.config.limits.maxSessions) return 'capacity';
    return undefined;
  }

  private admit(socket: SessionSocket, identity: ClientIdentity, attach: (connection: Connection) => void): void {
    const refusal = this.refusal();
    if (refusal !== undefined) {
      this.deps.metrics.sessionsTotal.labels('refused').inc();
      this.deps.metrics.sessionsRefused.labels(refusal).inc();
      this.deps.metrics.clientCloses.labels(String(CloseCode.tryAgainLater)).inc();
      socket.send(JSON.stringify({ type: 'error', code: 'overloaded', message: REFUSALS[refusal].message }), false);
      socket.end(CloseCode.tryAgainLater, REFUSALS[refusal].close);
      return;
    }
    const session = new Session(socket, { ...this.deps, identity, onEnded: (s, outcome) => this.post({ kind: 'session-ended', session: s, outcome }) }, randomUUID());
    this.sessions.set(session.id, session);
    this.deps.metrics.sessionsActive.inc();
    attach(session);
  }
}
