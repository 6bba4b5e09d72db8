import { setTimeout as sleep } from 'node:timers/promises';
import { catchError, Observable, of, switchMap, throwError } from 'rxjs';
import type { Config } from '../config.ts';
import type { Logger } from '../observability/log.ts';
import type { Metrics } from '../observability/metrics.ts';
import type { OtaAnswer } from '../protocol/ota.ts';
import type { RawUpstream } from '../streams/events.ts';
import { UpstreamError, type UpstreamTarget } from '../transport/upstream.ts';
import { deviceIdFor, newDevice, StoreError, type Device, type DeviceStore } from './devices.ts';
import { OtaClient, ProvisionError } from './ota.ts';

// Which device a session speaks as, and where that device connects. A user's device comes from the
// store, so that the server knows them again next time; a session without a user is a device of its
// own. With an OTA server, each device is handed its URL and token, and is activated first where the
// server asks for it, as the firmware does (XIAOZHI-OTA.md); without one, it connects to UPSTREAM_URL.

/** Where this gateway's sessions go: a fixed server, an OTA server handing each device its own, or both (the fixed one when the answer offers no WebSocket). */
export interface UpstreamSource {
  url: string | undefined;
  otaUrl: string | undefined;
}

/**
 * A store is kept when clients can be named users (a static token naming one, or JWTs), unless
 * UPSTREAM_DEVICE_ID makes every session the same device anyway.
 */
export function storeNeeded(config: Config): boolean {
  const { tokens, jwt } = config.clients;
  return config.upstream.deviceId === undefined && (jwt !== undefined || tokens.some((t) => t.user !== undefined));
}

/** The server's activation code for the user to enter, and its words on where. */
export interface Activation {
  code: string;
  message: string;
}

/** /activate polls per round before the OTA request is made again, as the firmware. */
const ACTIVATE_POLLS = 10;
/** After a poll the server refused, the firmware waits 10 s where it waits 3 s after a 202. */
const FAILED_POLL_BACKOFF = 3;

interface Resolved {
  target: UpstreamTarget;
  /** From an earlier OTA answer: a refusal at the handshake is worth asking the OTA server again. */
  cached: boolean;
}

export class Provisioner {
  private readonly ota: OtaClient | undefined;

  constructor(
    private readonly config: Config,
    private readonly source: UpstreamSource,
    /** Absent when no client can be a named user, or when UPSTREAM_DEVICE_ID makes every session one device. */
    private readonly store: DeviceStore | undefined,
    private readonly metrics: Metrics,
  ) {
    const { ota } = config.upstream;
    this.ota = source.otaUrl === undefined ? undefined : new OtaClient({ url: source.otaUrl, timeoutMs: ota.timeoutMs, activationVersion: ota.activationVersion }, metrics);
  }

  forSession(user: string | undefined, sessionId: string, log: Logger, onActivation: (a: Activation) => void): SessionDevice {
    return new SessionDevice(this, user, sessionId, log, onActivation);
  }

  /** Whether the user's device is kept in the store (storeNeeded); otherwise the session is a device of its own, or UPSTREAM_DEVICE_ID's. */
  stored(user: string | undefined): user is string {
    return this.store !== undefined && user !== undefined;
  }

  /** The session's device: read once per session; later connections write to the store at most. */
  async device(user: string | undefined, sessionId: string): Promise<Device> {
    if (!this.stored(user)) {
      const { deviceId, clientId } = this.config.upstream;
      return { ...newDevice(user ?? sessionId, deviceId ?? deviceIdFor(sessionId)), clientId: clientId ?? sessionId };
    }
    try {
      return await this.store!.deviceFor(user);
    } catch (error) {
      throw this.storeFailed(error);
    }
  }

  /** The target when it is known without asking anyone (no store to read, no OTA server to ask): at once, as before provisioning existed. */
  fixedTarget(user: string | undefined, sessionId: string): UpstreamTarget | undefined {
    if (this.ota !== undefined || this.stored(user)) return undefined;
    const { deviceId, clientId, token } = this.config.upstream;
    return { url: this.source.url!, token, deviceId: deviceId ?? deviceIdFor(sessionId), clientId: clientId ?? sessionId };
  }

  async resolve(device: Device, user: string | undefined, fresh: boolean, signal: AbortSignal, log: Logger, onActivation: (a: Activation) => void): Promise<Resolved> {
    const stored = this.stored(user);
    const { token, ota: settings } = this.config.upstream;
    const ids = { deviceId: device.deviceId, clientId: device.clientId };
    if (this.ota === undefined) return { target: { url: this.source.url!, token, ...ids }, cached: false };
    const kept = device.endpoint;
    if (!fresh && kept !== undefined && Date.now() - kept.fetchedAt < settings.maxAgeMs) return { target: { url: kept.url, token: kept.token, ...ids }, cached: true };

    const answer = await this.provision(device, stored, signal, log, onActivation);
    const websocket = answer.websocket ?? (this.source.url === undefined ? undefined : { url: this.source.url, token });
    if (websocket === undefined) throw new ProvisionError('provision', 'the OTA answer has no websocket section (the server offers only MQTT)');
    device.endpoint = { ...websocket, fetchedAt: Date.now() };
    if (stored) void this.keep(() => this.store!.saveEndpoint(device.user, device.deviceId, device.endpoint!), log);
    return { target: { ...websocket, ...ids }, cached: false };
  }

  /** The OTA request, and while the answer asks for activation: tell the user, poll `/activate`, ask again. */
  private async provision(device: Device, stored: boolean, signal: AbortSignal, log: Logger, onActivation: (a: Activation) => void): Promise<OtaAnswer> {
    const ota = this.ota!;
    let answer = await ota.check(device, signal);
    if (answer.activation === undefined) return answer;

    const { activationTimeoutMs, activationPollMs } = this.config.upstream.ota;
    const deadline = Date.now() + activationTimeoutMs;
    const wait = async (ms = activationPollMs): Promise<void> => {
      const left = deadline - Date.now();
      if (left <= 0) throw new ProvisionError('activation_timeout', `the device was not activated within ${activationTimeoutMs} ms`);
      await sleep(Math.min(ms, left), undefined, { signal });
    };
    this.metrics.activationsPending.inc();
    let shown: string | undefined;
    try {
      for (;;) {
        const { code, message, challenge } = answer.activation;
        if (code !== undefined && code !== shown) {
          shown = code;
          log.info({ deviceId: device.deviceId }, 'device awaits activation: the client was given the code');
          onActivation({ code, message: message ?? '' });
        }
        // Without a challenge there is nothing to prove: the server drops `activation` once the user has
        // bound the device. With one, as the firmware: ten polls, then the OTA request again, which may
        // bring a new code.
        let bound = false;
        if (challenge === undefined) await wait();
        for (let poll = 0; challenge !== undefined && poll < ACTIVATE_POLLS && !bound; poll++) {
          const result = await ota.activate(device, challenge, signal);
          if (result === 'activated') bound = true;
          else if (result === 'waiting') await wait();
          else {
            log.warn({ detail: result.failed }, 'activation poll failed: trying again later');
            await wait(activationPollMs * FAILED_POLL_BACKOFF);
          }
        }
        answer = await this.checkAgain(device, signal, log, () => wait(activationPollMs * FAILED_POLL_BACKOFF));
        if (answer.activation === undefined) break;
        // Bound, says /activate, yet the answer still asks: a new round, but not at once.
        if (bound) await wait();
      }
    } catch (error) {
      if (!signal.aborted) this.metrics.activations.labels(error instanceof ProvisionError && error.kind === 'activation_timeout' ? 'timeout' : 'failed').inc();
      throw error;
    } finally {
      this.metrics.activationsPending.dec();
    }
    this.metrics.activations.labels('activated').inc();
    log.info({ deviceId: device.deviceId }, 'device activated');
    device.activatedAt = Date.now();
    if (stored) void this.keep(() => this.store!.markActivated(device.user, device.deviceId, device.activatedAt!), log);
    return answer;
  }

  /** The OTA request during activation: a failure is waited out, as the firmware does, until the deadline. */
  private async checkAgain(device: Device, signal: AbortSignal, log: Logger, wait: () => Promise<void>): Promise<OtaAnswer> {
    for (;;) {
      try {
        return await this.ota!.check(device, signal);
      } catch (error) {
        if (!(error instanceof ProvisionError)) throw error;
        log.warn({ detail: error.message }, 'OTA request failed during activation: trying again');
        await wait();
      }
    }
  }

  /** A write that only saves work next time: its failure is counted and logged, and the session goes on. */
  private async keep(write: () => Promise<void>, log: Logger): Promise<void> {
    try {
      await write();
    } catch (error) {
      this.storeFailed(error);
      log.warn({ err: error }, 'device store write failed: the session goes on');
    }
  }

  private storeFailed(error: unknown): ProvisionError {
    this.metrics.storeErrors.labels(error instanceof StoreError ? error.operation : 'read').inc();
    return new ProvisionError('provision', `the device store failed: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  }
}

/**
 * One session's device. `dial` is what the session subscribes to for each upstream connection: the
 * target first (the store, OTA and activation, as needed), then the connection itself. A cached token
 * refused at the handshake is asked for again once, since servers' tokens expire.
 */
export class SessionDevice {
  private device: Promise<Device> | undefined;

  constructor(
    private readonly provisioner: Provisioner,
    private readonly user: string | undefined,
    private readonly sessionId: string,
    private readonly log: Logger,
    private readonly onActivation: (a: Activation) => void,
  ) {}

  dial(connect: (target: UpstreamTarget) => Observable<RawUpstream>): Observable<RawUpstream> {
    return this.target$(false).pipe(
      switchMap(({ target, cached }) =>
        connect(target).pipe(
          catchError((error: unknown) => {
            if (!cached || !refusedAtHandshake(error)) return throwError(() => error);
            this.log.info({ detail: error.message }, 'upstream refused the cached token: asking the OTA server again');
            return this.target$(true).pipe(switchMap((fresh) => connect(fresh.target)));
          }),
        ),
      ),
    );
  }

  private target$(fresh: boolean): Observable<Resolved> {
    const fixed = this.provisioner.fixedTarget(this.user, this.sessionId);
    if (fixed !== undefined) return of({ target: fixed, cached: false });
    return new Observable<Resolved>((subscriber) => {
      const abort = new AbortController();
      this.resolve(fresh, abort.signal).then(
        (resolved) => {
          subscriber.next(resolved);
          subscriber.complete();
        },
        (error: unknown) => subscriber.error(error),
      );
      return () => abort.abort();
    });
  }

  private async resolve(fresh: boolean, signal: AbortSignal): Promise<Resolved> {
    this.device ??= this.provisioner.device(this.user, this.sessionId);
    const device = await this.device.catch((error: unknown) => {
      // A failed read is tried again at the next connection rather than remembered.
      this.device = undefined;
      throw error;
    });
    return this.provisioner.resolve(device, this.user, fresh, signal, this.log, this.onActivation);
  }
}

/**
 * The server would not have this device's token: it refused the upgrade (401, 403), or answered it with
 * something other than a hello (S sends "认证失败"). A server that is down is not worth an OTA request.
 */
function refusedAtHandshake(error: unknown): error is UpstreamError {
  if (!(error instanceof UpstreamError)) return false;
  return error.kind === 'bad_hello' || (error.kind === 'connect' && /Unexpected server response: 40[13]\b/.test(error.message));
}
