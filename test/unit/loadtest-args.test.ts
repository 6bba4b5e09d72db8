import { describe, expect, it } from 'vitest';
import { parseCli, UsageError } from '../../src/cli/loadtest/args.ts';
import { plan, spread } from '../../src/cli/loadtest/plan.ts';

describe('The load tool arguments', () => {
  it('default to a short local load: 50 sessions, 2 typed replies, pcm16 24 kHz binary, a 120 ms buffer', () => {
    const cli = parseCli([]);
    expect(cli.url).toBeUndefined();
    expect(cli.upstreamPacing).toBe('xiaozhi');
    expect(cli.load).toMatchObject({ sessions: 50, replies: 2, rampS: 5, codec: 'pcm16', rate: 24000, transport: 'binary', pacing: 'none', buffersMs: [120], bargeIn: 0, slow: 0 });
    expect(cli.load.text).toBeTypeOf('string');
    expect(cli.load.timeoutS).toBe(155);
  });

  it('read every flag the issue lists', () => {
    const cli = parseCli(
      ['--url', 'ws://10.0.0.1:8080/v1/voice', '--sessions', '7', '--replies', '3', '--ramp', '1.5', '--text', 'hi', '--codec', 'opus', '--rate', '48000']
        .concat(['--transport', 'json', '--pacing', 'realtime', '--prebuffer', '200', '--buffer', '250,60,120,60', '--barge-in', '0.3', '--slow', '0.1'])
        .concat(['--json', 'a.json', '--html', 'a.html', '--quiet', '--gateway-pid', '42', '--token', 't']),
    );
    expect(cli).toMatchObject({ url: 'ws://10.0.0.1:8080/v1/voice', json: 'a.json', html: 'a.html', quiet: true });
    expect(cli.load).toMatchObject({ sessions: 7, replies: 3, rampS: 1.5, text: 'hi', codec: 'opus', rate: 48000, transport: 'json', pacing: 'realtime' });
    expect(cli.load).toMatchObject({ prebufferMs: 200, buffersMs: [60, 120, 250], bargeIn: 0.3, slow: 0.1, gatewayPid: 42, token: 't' });
  });

  it('model a 120 ms buffer whenever they search for capacity, since the SLO is judged there', () => {
    expect(parseCli(['--find-capacity', '--buffer', '60']).load.buffersMs).toEqual([60, 120]);
  });

  it.each([
    [['--sesions', '5'], /Unknown option '--sesions'/],
    [['--sessions', '0'], /--sessions must be a whole number from 1/],
    [['--sessions', '2.5'], /--sessions must be a whole number/],
    [['--rate', '44100'], /--rate must be one of 8000, 12000, 16000, 24000, 48000/],
    [['--buffer', '60,abc'], /--buffer must be a whole number/],
    [['--barge-in', '1.5'], /--barge-in must be a number from 0 to 1/],
    [['--slow', '1'], /--slow must be a number from 0 to 0.99/],
    [['--codec', 'mp3'], /--codec must be one of pcm16, opus/],
    [['--url', 'http://x/v1/voice'], /--url must be a ws:\/\/ or wss:\/\/ URL/],
    [['--text', 'a', '--wav', 'b.wav'], /--text or --wav, not both/],
    [['--wav', '/no/such.wav'], /no such file/],
    [['--url', 'ws://x/v1/voice', '--upstream-pacing', 'burst'], /cannot apply with --url/],
    [['--gateway-pid', '5'], /--gateway-pid is for --url/],
    [['extra'], /positional/],
  ])('refuse %j with a message that names what is wrong', (argv, message) => {
    expect(() => parseCli(argv)).toThrow(UsageError);
    expect(() => parseCli(argv)).toThrow(message);
  });
});

describe('The run plan', () => {
  it('spreads a share evenly and exactly: 5% of 20 is one', () => {
    expect(spread(20, 0.05)).toEqual(new Set([10]));
    expect(spread(10, 0.3).size).toBe(3);
    expect(spread(10, 0).size).toBe(0);
  });

  it('is the same for the same seed, and starts sessions evenly over the ramp', () => {
    const options = { sessions: 20, replies: 2, rampS: 1.9, bargeIn: 0.25, slow: 0.1, seed: 7 };
    const a = plan(options);
    expect(plan(options)).toEqual(a);
    expect(a.startAtMs[0]).toBe(0);
    expect(a.startAtMs[19]).toBeCloseTo(1900, 6);
    expect(a.slow.filter(Boolean).length).toBe(2);
    const bargeIns = a.bargeInAfterMs.flat().filter((ms) => ms !== undefined);
    expect(bargeIns.length).toBe(9); // a quarter of the 36 replies of the 18 sessions that read
    expect(a.bargeInAfterMs.filter((_, i) => a.slow[i]).flat().every((ms) => ms === undefined)).toBe(true);
    expect(bargeIns.every((ms) => ms >= 60 && ms <= 3000)).toBe(true);
  });
});
