import { readFileSync } from 'node:fs';
import type { Metrics } from '../observability/metrics.ts';
import { activateUrl, activationBody, otaBody, otaHeaders, parseOtaAnswer, type OtaAnswer, type OtaDevice } from '../protocol/ota.ts';

// The two HTTP calls of xiaozhi provisioning, as the firmware makes them: the OTA request, and the
// `/activate` poll while a user binds the device. Every failure is a ProvisionError, counted by outcome.

const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

export type ProvisionFault = 'provision' | 'activation_timeout';

/** Why a session's device could not be provisioned: the session ends with upstream_unavailable or activation_timeout. */
export class ProvisionError extends Error {
  override name = 'ProvisionError';
  constructor(
    readonly kind: ProvisionFault,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

export interface OtaSettings {
  url: string;
  timeoutMs: number;
  activationVersion: 1 | 2;
}

/** 200: bound. 202: the user has not entered the code yet. Anything else: the firmware logs it and tries again later. */
export type ActivateResult = 'activated' | 'waiting' | 'failed';

export class OtaClient {
  constructor(
    private readonly settings: OtaSettings,
    private readonly metrics: Metrics,
  ) {}

  async check(device: OtaDevice, signal: AbortSignal): Promise<OtaAnswer> {
    const { url } = this.settings;
    const body = await this.post(url, device, otaBody(device, VERSION), signal).catch((error: unknown) => {
      this.metrics.otaRequests.labels('unreachable').inc();
      throw error;
    });
    if (body.status !== 200) {
      this.metrics.otaRequests.labels('http_error').inc();
      throw new ProvisionError('provision', `the OTA server answered HTTP ${body.status}: ${body.text.slice(0, 120)}`);
    }
    const parsed = parseOtaAnswer(body.text);
    if (!parsed.ok) {
      this.metrics.otaRequests.labels('malformed').inc();
      throw new ProvisionError('provision', parsed.detail);
    }
    const { answer } = parsed;
    if (answer.activation !== undefined) this.metrics.otaRequests.labels('activation').inc();
    else if (answer.websocket === undefined) this.metrics.otaRequests.labels('no_websocket').inc();
    else this.metrics.otaRequests.labels('ok').inc();
    return answer;
  }

  async activate(device: OtaDevice, challenge: string, signal: AbortSignal): Promise<ActivateResult> {
    const body = activationBody(device, challenge, this.settings.activationVersion);
    const answer = await this.post(activateUrl(this.settings.url), device, body, signal).catch((error: unknown) => {
      if (signal.aborted) throw error;
      return undefined;
    });
    if (answer?.status === 200) return 'activated';
    if (answer?.status === 202) return 'waiting';
    return 'failed';
  }

  private async post(url: string, device: OtaDevice, body: object, signal: AbortSignal): Promise<{ status: number; text: string }> {
    const timeout = AbortSignal.timeout(this.settings.timeoutMs);
    try {
      const response = await fetch(url, {
        method: 'POST',
        headers: otaHeaders(device, this.settings.activationVersion, VERSION),
        body: JSON.stringify(body),
        signal: AbortSignal.any([signal, timeout]),
      });
      return { status: response.status, text: await response.text() };
    } catch (error) {
      if (signal.aborted) throw error;
      const why = timeout.aborted ? `no answer within ${this.settings.timeoutMs} ms` : error instanceof Error ? (error.cause instanceof Error ? error.cause.message : error.message) : String(error);
      throw new ProvisionError('provision', `the OTA server at ${url} could not be reached: ${why}`, { cause: error });
    }
  }
}
