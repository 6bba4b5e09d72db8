// Runs the simulator on its own: node --import tsx src/sim/main.ts (SIM_HOST, SIM_PORT, SIM_REPLY=speech|echo,
// SIM_PROVISIONING=off|single-module|manager|cloud, SIM_AUTH_KEY).
import { createLogger } from '../observability/log.ts';
import { startSimulator, type ProvisioningMode } from './simulator.ts';

const log = createLogger();
const host = process.env.SIM_HOST ?? '127.0.0.1';
const port = Number(process.env.SIM_PORT ?? 8000);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  log.fatal({ SIM_PORT: process.env.SIM_PORT }, 'SIM_PORT must be a port number');
  process.exit(1);
}
const reply = process.env.SIM_REPLY ?? 'speech';
if (reply !== 'speech' && reply !== 'echo') {
  log.fatal({ SIM_REPLY: reply }, 'SIM_REPLY must be speech or echo');
  process.exit(1);
}

const MODES: readonly ProvisioningMode[] = ['single-module', 'manager', 'cloud'];
const mode = process.env.SIM_PROVISIONING ?? 'off';
const provisioningMode = MODES.find((m) => m === mode);
if (mode !== 'off' && provisioningMode === undefined) {
  log.fatal({ SIM_PROVISIONING: mode }, 'SIM_PROVISIONING must be off, single-module, manager or cloud');
  process.exit(1);
}
// An empty key means none, as an unset variable does.
const authKey = process.env.SIM_AUTH_KEY || undefined;
const provisioning = provisioningMode === undefined ? undefined : { mode: provisioningMode, authKey };

const sim = await startSimulator({ host, port, logger: log, reply, provisioning });
log.info({ url: sim.url, otaUrl: sim.otaUrl, consoleUrl: sim.consoleUrl, provisioning: mode }, 'xiaozhi simulator listening');

const stop = (signal: NodeJS.Signals): void => {
  log.info({ signal }, 'closing simulator');
  sim.close().then(
    () => process.exit(0),
    (err: unknown) => {
      log.error({ err }, 'simulator did not close cleanly');
      process.exit(1);
    },
  );
};
process.once('SIGINT', stop);
process.once('SIGTERM', stop);
