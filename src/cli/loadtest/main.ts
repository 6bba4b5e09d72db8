// npm run loadtest: arguments, the targets when none is given (simulator and gateway as child
// processes), one run or a capacity search, the summary, and the JSON and HTML reports.
import { writeFileSync } from 'node:fs';
import { findCapacity, SLO, type Probe } from './capacity.ts';
import { parseCli, USAGE, UsageError, type Cli } from './args.ts';
import { buildHtml } from './html.ts';
import { progressBar } from './progress.ts';
import { runLoad, warmUp, type LoadOptions, type LoadReport } from './run.ts';
import { summaryText } from './summary.ts';
import { startGateway, startSimulator, type SimulatorTarget } from './targets.ts';

const say = (line: string) => process.stdout.write(`${line}\n`);

/** One run against `url`, with a progress bar when a person is watching. */
async function run(cli: Cli, options: LoadOptions): Promise<LoadReport> {
  const bar = cli.quiet || !process.stderr.isTTY ? undefined : progressBar(options.sessions);
  try {
    return await runLoad({ ...options, ...(bar && { onProgress: bar.update }) });
  } finally {
    bar?.stop();
  }
}

/** One run of `sessions` against a fresh, warmed-up gateway of our own (in front of `sim`), or against --url. */
async function measure(cli: Cli, sim: SimulatorTarget | undefined, sessions: number): Promise<LoadReport> {
  if (sim === undefined) return run(cli, { ...cli.load, sessions, url: cli.url! });
  const gateway = await startGateway({ upstreamUrl: sim.url, env: { MAX_SESSIONS: String(Math.max(1000, sessions)) } });
  try {
    await warmUp({ ...cli.load, sessions, url: gateway.url });
    return await run(cli, {
      ...cli.load,
      sessions,
      url: gateway.url,
      gatewayPid: gateway.pid,
      upstream: `the tool's simulator, ${cli.upstreamPacing} pacing`,
      upstreamSendTimes: sim.takeSendTimes,
    });
  } finally {
    await gateway.stop();
  }
}

function writeReports(cli: Cli, json: unknown, report: LoadReport): void {
  writeFileSync(cli.json, `${JSON.stringify(json, null, 2)}\n`);
  writeFileSync(cli.html, buildHtml(report));
  say(`\nwrote ${cli.json} and ${cli.html}`);
}

async function capacity(cli: Cli, sim: SimulatorTarget | undefined): Promise<number> {
  say(`searching capacity from ${cli.load.sessions} to ${cli.maxSessions} sessions; SLO: ${JSON.stringify(SLO)}`);
  const onProbe = (p: Probe) => say(`${String(p.sessions).padStart(6)} sessions: ${p.ok ? 'meets the SLO' : `fails: ${p.why.join('; ')}`}`);
  const found = await findCapacity((n) => measure(cli, sim, n), { low: cli.load.sessions, high: cli.maxSessions }, onProbe);
  say(`\ncapacity: ${found.sessions} concurrent sessions`);
  const knee = found.reports.filter((p) => p.ok).sort((a, b) => b.sessions - a.sessions)[0] ?? found.reports[0]!;
  say(`\nat ${knee.sessions} sessions:\n${summaryText(knee.report)}`);
  writeReports(cli, { capacity: found.sessions, slo: SLO, probes: found.reports }, knee.report);
  return 0;
}

async function main(): Promise<number> {
  let cli: Cli;
  try {
    cli = parseCli(process.argv.slice(2));
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(`loadtest: ${error.message}\n\n${USAGE}\n`);
    return 2;
  }
  if (cli.help) {
    say(USAGE);
    return 0;
  }
  const sim = cli.url === undefined ? await startSimulator({ pacing: cli.upstreamPacing }) : undefined;
  try {
    if (cli.findCapacity) return await capacity(cli, sim);
    const report = await measure(cli, sim, cli.load.sessions);
    say(summaryText(report));
    writeReports(cli, report, report);
    return report.sessions.failed > 0 || report.frames.lost > 0 ? 3 : 0;
  } finally {
    await sim?.stop();
  }
}

// Ctrl-C ends the run at once; targets.ts kills the children on the way out.
process.once('SIGINT', () => process.exit(130));
main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`loadtest: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  },
);
