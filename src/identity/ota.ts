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
export type ActivateResult = 'activated' | 'waiting' | { failed: string };

/** Far more than any OTA answer: a server streaming more is broken, and is not read to the end. */
const MAX_ANSWER_BYTES = 64 * 1024;

export class OtaClient {
  constructor(
    private readonly settings: OtaSettings,
    private readonly metrics: Metrics,
  ) {}

  async check(device: OtaDevice, signal: AbortSignal): Promise<OtaAnswer> {
    const { url } = this.settings;
    const body = await this.post(url, device, otaBody(device, VERSION), signal).catch((error: unknown) => {
      // A session that ended mid-request is nobody's failure.
      if (!signal.aborted) this.metrics.otaRequests.labels(error instanceof OversizedAnswer ? 'malformed' : 'unreachable').inc();
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
    try {
      const answer = await this.post(activateUrl(this.settings.url), device, body, signal);
      if (answer.status === 200) return 'activated';
      if (answer.status === 202) return 'waiting';
      this.metrics.otaRequests.labels('activate_error').inc();
      return { failed: `/activate answered HTTP ${answer.status}: ${answer.text.slice(0, 120)}` };
    } catch (error) {
      if (signal.aborted) throw error;
      this.metrics.otaRequests.labels('activate_error').inc();
      return { failed: error instanceof Error ? error.message : String(error) };
    }
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
      return { status: response.status, text: await readCapped(response) };
    } catch (error) {
      if (signal.aborted || error instanceof OversizedAnswer) throw error;
      const why = timeout.aborted ? `no answer within ${this.settings.timeoutMs} ms` : error instanceof Error ? (error.cause instanceof Error ? error.cause.message : error.message) : String(error);
      throw new ProvisionError('provision', `the OTA server at ${url} could not be reached: ${why}`, { cause: error });
    }
  }
}

class OversizedAnswer extends ProvisionError {
  constructor(message: string) {
    super('provision', message);
  }
}

/** The body as text, or an OversizedAnswer past MAX_ANSWER_BYTES. */
async function readCapped(response: Response): Promise<string> {
  const chunks: Uint8Array[] = [];
  let bytes = 0;
  for await (const chunk of response.body ?? []) {
    bytes += chunk.byteLength;
    if (bytes > MAX_ANSWER_BYTES) {
      await response.body?.cancel();
      throw new OversizedAnswer(`the OTA answer is over ${MAX_ANSWER_BYTES} bytes`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}
