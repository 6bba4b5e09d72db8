import { expect, it } from 'vitest';
import { Downlink } from '../../web/src/downlink.ts';
import type { PlayerEvent } from '../../web/src/player-messages.ts';
import type { Player } from '../../web/src/player.ts';
import type { ClientMessage, GatewayState } from '../../web/src/protocol.ts';
import { Talk } from '../../web/src/talk.ts';

// The browser client's conversation logic (web/src/talk.ts, web/src/downlink.ts) in Node, against a fake
// socket and a fake player: what it sends when, and which of the downlink's frames reach the player.

/** A player that records the commands it gets. */
function fakePlayer() {
  const log: string[] = [];
  const player = {
    figures: { playing: false },
    push: (samples: Float32Array) => log.push(`frame ${samples.length}`),
    end: () => log.push('end'),
    turn: () => log.push('turn'),
    flush: () => log.push('flush'),
  };
  return { log, player: player as unknown as Player };
}

/** A Talk on a socket that is up, with the gateway in `state`. */
function talk() {
  const { log, player } = fakePlayer();
  const sent: ClientMessage[] = [];
  const audio: Int16Array[] = [];
  let state: GatewayState | undefined = 'ready';
  const downlink = new Downlink(player, { error: () => {}, opusFailed: () => {} });
  downlink.start({ codec: 'pcm16', sampleRate: 24000 });
  const link = {
    state: () => state,
    send: (m: ClientMessage) => (sent.push(m), true),
    sendAudio: (pcm: Int16Array) => (audio.push(pcm), true),
  };
  // The microphone never opens in Node (no navigator): hands-free is driven through chunk() below.
  const t = new Talk({} as AudioContext, link, downlink, player, () => {});
  /** A state from the gateway, as the page hands it on (app.ts). */
  const setState = (s: GatewayState | undefined) => {
    const replyOver = state === 'speaking';
    state = s;
    if (s !== undefined) downlink.state(s, replyOver);
    t.gatewayState(s);
  };
  /** A loud chunk of the microphone (20 ms of a square wave). */
  const speak = () => (t as unknown as { chunk(pcm: Int16Array): void }).chunk(Int16Array.from({ length: 320 }, (_, i) => (i % 20 < 10 ? 8000 : -8000)));
  const events = (e: PlayerEvent) => t.playerEvent(e);
  const shape = () => sent.map((m) => ('state' in m ? `${m.type} ${m.state}` : m.type === 'ping' ? `ping ${m.id}` : m.type));
  return { t, log, sent, audio, downlink, setState, speak, events, shape };
}

it("after a barge-in, the interrupted reply's frames are thrown away until the pong of the ping sent behind it", () => {
  const c = talk();
  c.setState('processing');
  c.t.text('Hello?');
  expect(c.shape()).toEqual(['text', 'ping flush-1']);
  // The gateway's `speaking` and the first frames of the reply the text interrupted were on their way;
  // then the gateway handled the text.
  c.setState('speaking');
  c.downlink.frame(new ArrayBuffer(960));
  c.setState('processing');
  c.downlink.pong('another');
  c.downlink.frame(new ArrayBuffer(960));
  expect(c.log.filter((l) => l.startsWith('frame'))).toEqual([]);
  c.downlink.pong('flush-1');
  c.downlink.frame(new ArrayBuffer(480));
  expect(c.log.filter((l) => l.startsWith('frame'))).toEqual(['frame 240']);
});

/** A pcm16 frame of `n` samples, each `value`. */
const pcm = (n: number, value: number) => new Int16Array(n).fill(value).buffer;

it('frames of the new reply that beat the pong to the page are kept: they follow a speaking with no state after it', () => {
  const c = talk();
  c.setState('processing');
  c.t.text('Hello?');
  // In flight: the interrupted reply had begun; then the gateway handled the text (processing), and the
  // voice service answered it before the gateway read the ping.
  c.setState('speaking');
  c.downlink.frame(pcm(10, 1));
  c.setState('processing');
  c.setState('speaking');
  c.downlink.frame(pcm(20, 2));
  c.downlink.frame(pcm(30, 3));
  expect(c.log.filter((l) => l.startsWith('frame'))).toEqual([]);
  c.downlink.pong('flush-1');
  c.downlink.frame(pcm(40, 4));
  expect(c.log.filter((l) => l.startsWith('frame'))).toEqual(['frame 20', 'frame 30', 'frame 40']);
});

it("the interrupted reply's frames after its own speaking go, since the gateway's state moved on before the pong", () => {
  const c = talk();
  c.setState('listening');
  c.t.text('Hello?');
  c.setState('processing');
  c.setState('speaking');
  c.downlink.frame(pcm(10, 1));
  c.setState('processing');
  c.downlink.pong('flush-1');
  expect(c.log.filter((l) => l.startsWith('frame'))).toEqual([]);
});

it('stop and push-to-talk interrupt with a ping each; the release ends the turn without one', () => {
  const c = talk();
  c.setState('speaking');
  c.t.stop();
  c.setState('ready');
  c.t.press();
  c.t.release();
  expect(c.shape()).toEqual(['abort', 'ping flush-1', 'listen start', 'ping flush-2', 'listen stop']);
  expect(c.log.filter((l) => l === 'flush' || l === 'turn')).toEqual(['flush', 'flush', 'flush', 'turn']);
});

it('a pressed button does not outlive its session', () => {
  const c = talk();
  c.t.press();
  c.setState(undefined);
  c.t.release();
  expect(c.shape()).toEqual(['listen start', 'ping flush-1']);
});

it('hands-free waits for the reply to play out before it listens again', () => {
  const c = talk();
  c.setState('speaking');
  c.t.setHandsFree(true);
  c.setState('ready');
  // The gateway is ready, but the reply is still in the player.
  c.events('tick');
  expect(c.shape()).toEqual([]);
  c.events('drained');
  expect(c.shape()).toEqual(['listen start', 'ping flush-1']);
  expect(c.sent[0]).toEqual({ type: 'listen', state: 'start', mode: 'auto' });
});

it('hands-free turned off mid-utterance sends listen stop, and that is the turn', () => {
  const c = talk();
  c.t.setHandsFree(true);
  c.setState('listening');
  c.t.setHandsFree(false);
  expect(c.shape()).toEqual(['listen start', 'ping flush-1', 'listen stop']);
  expect(c.log.at(-1)).toBe('turn');
});

it('a voice over the reply barges in, and its pre-roll goes up with it', () => {
  const c = talk();
  c.setState('speaking');
  c.t.setHandsFree(true);
  expect(c.shape()).toEqual([]);
  for (let i = 0; i < 20; i++) c.speak();
  expect(c.shape()).toEqual(['listen start', 'ping flush-1']);
  // The onset and what came before it (the pre-roll), and all that followed.
  expect(c.audio.length).toBe(20);
  expect(c.t.uplinkMs).toBe(400);
});

it('no barge-in while the gateway reconnects; once it is ready, hands-free listens', () => {
  const c = talk();
  c.setState('reconnecting');
  c.t.setHandsFree(true);
  for (let i = 0; i < 20; i++) c.speak();
  expect(c.shape()).toEqual([]);
  expect(c.audio).toEqual([]);
  c.setState('ready');
  c.speak();
  expect(c.shape()).toEqual(['listen start', 'ping flush-1']);
  expect(c.audio.length).toBe(1);
});
