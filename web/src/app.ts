// The browser reference client of voicegw (/app.js): connects to /v1/voice on the page's own host, plays
// the reply through the player worklet, sends the microphone from the mic worklet, and shows what happens.
// URL parameters: token (when the gateway needs one), downlink=opus|pcm16 (to force a codec).
import { chooseDownlink, Downlink } from './downlink.ts';
import { exposeFigures, type Line, type Problem } from './figures.ts';
import { MIC_RATE } from './mic.ts';
import type { PlayerFigures } from './player-messages.ts';
import { Player } from './player.ts';
import type { ClientMessage, GatewayMessage, GatewayState } from './protocol.ts';
import { PlayoutReport } from './report.ts';
import { Session } from './session.ts';
import { Talk } from './talk.ts';
import { addLine, controls, notify, showActivation, showEmotion, showFigures, showState } from './ui.ts';
import { closeText, errorText } from './wording.ts';

const params = new URLSearchParams(location.search);
const context = new AudioContext({ latencyHint: 'interactive' });
const choice = chooseDownlink(params.get('downlink'), context.sampleRate);

let state = 'connecting';
let gatewayState: GatewayState | undefined;
let sessionId: string | null = null;
let codec = choice.codec;
const transcript: Line[] = [];
const errors: Problem[] = [];

const player = await Player.create(context, Number(controls.target.value), (figures) => {
  report.figures(figures, performance.now());
  if (figures.event !== 'tick') talk.changed();
  render();
});
const downlink = new Downlink(player, (message) => problem('client', 'decoder', message));
const session = new Session(url, hello, {
  connecting() {
    state = 'connecting';
    render();
  },
  message: onMessage,
  audio: (frame) => downlink.frame(frame),
  closed(code, reason, retryInMs) {
    state = retryInMs === undefined ? 'closed' : 'waiting';
    gatewayState = undefined;
    report.end();
    downlink.stop();
    talk.gatewayState(undefined);
    showActivation(undefined);
    problem('close', code, closeText(code, reason, retryInMs));
  },
});
const report = new PlayoutReport((message) => session.send(message));
const link = { state: () => gatewayState, send: (m: ClientMessage) => session.send(m), sendAudio: (pcm: Int16Array) => session.sendAudio(pcm) };
const talk = new Talk(context, link, downlink, player, (message) => problem('client', 'microphone', message));

function url(): string {
  const token = controls.token.value.trim();
  const query = token === '' ? '' : `?token=${encodeURIComponent(token)}`;
  return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/v1/voice${query}`;
}

function hello(): ClientMessage {
  return {
    type: 'hello',
    version: 1,
    downlink: choice.codec === 'opus' ? { codec: 'opus', transport: 'binary' } : { codec: 'pcm16', sampleRate: choice.sampleRate, transport: 'binary' },
    uplink: { codec: 'pcm16', sampleRate: MIC_RATE, frameMs: 60 },
  };
}

function onMessage(m: GatewayMessage): void {
  switch (m.type) {
    case 'hello':
      sessionId = m.sessionId;
      codec = m.downlink.codec;
      downlink.start(m.downlink);
      report.start(player.figures);
      showActivation(undefined);
      break;
    case 'state': {
      const replyOver = gatewayState === 'speaking';
      state = gatewayState = m.state;
      downlink.state(replyOver);
      talk.gatewayState(m.state);
      break;
    }
    case 'user_text':
    case 'assistant_text': {
      const role = m.type === 'user_text' ? 'user' : 'assistant';
      transcript.push({ role, text: m.text });
      addLine(role, m.text);
      break;
    }
    case 'emotion':
      showEmotion(m.emoji);
      break;
    case 'activation':
      state = 'activation';
      showActivation(m);
      break;
    case 'error':
      problem('error', m.code, errorText(m.code, m.message));
      break;
    default: // pong, mcp: this page sends no ping and offers no tools
  }
  render();
}

function problem(kind: Problem['kind'], code: string | number, message: string): void {
  if (kind !== 'close' || code !== 1000) errors.push({ kind, code, message });
  notify(kind === 'close' && code === 1000 ? 'info' : 'error', message);
  render();
}

function render(): void {
  const f: PlayerFigures = player.figures;
  showState(state, gatewayState !== undefined, f.playing);
  showFigures(f, codec, talk.uplinkMs);
}

controls.token.value = params.get('token') ?? '';
controls.compose.addEventListener('submit', (e) => {
  e.preventDefault();
  const text = controls.text.value.trim();
  if (text === '') return;
  talk.text(text);
  controls.text.value = '';
});
controls.talk.addEventListener('pointerdown', (e) => {
  controls.talk.setPointerCapture(e.pointerId);
  talk.press();
});
for (const type of ['pointerup', 'pointercancel'] as const) controls.talk.addEventListener(type, () => talk.release());
// The space bar talks too, unless the user is typing; it must not also press a focused button (Stop).
const talkKey = (e: KeyboardEvent) => e.code === 'Space' && !(e.target instanceof HTMLInputElement);
addEventListener('keydown', (e) => {
  if (!talkKey(e)) return;
  e.preventDefault();
  if (!e.repeat) talk.press();
});
addEventListener('keyup', (e) => {
  if (!talkKey(e)) return;
  e.preventDefault();
  talk.release();
});
controls.handsFree.addEventListener('change', () => {
  controls.talk.hidden = controls.handsFree.checked;
  talk.setHandsFree(controls.handsFree.checked);
});
controls.stop.addEventListener('click', () => talk.stop());
controls.target.addEventListener('change', () => {
  const ms = Math.min(2000, Math.max(0, Number(controls.target.value) || 0));
  controls.target.value = String(ms);
  player.setTarget(ms);
});
controls.connect.addEventListener('click', () => session.connect());
// Browsers start audio only after a user gesture (unless told otherwise, as the tests' Chromium is).
for (const type of ['pointerdown', 'keydown'] as const) addEventListener(type, () => void context.resume(), { capture: true });
if (context.state === 'suspended') notify('info', 'Click anywhere (or type) to turn the sound on.');
addEventListener('pagehide', () => session.close());

exposeFigures(() => {
  const { event: _event, ...figures } = player.figures;
  return { ...figures, state, sessionId, codec, transcript, errors, uplinkMs: talk.uplinkMs };
});
session.connect();
