// The browser reference client of voicegw (/app.js): connects to /v1/voice on the page's own host, plays
// the reply through the player worklet, sends the microphone from the mic worklet, and shows what happens.
// URL parameters: token (when the gateway needs one), downlink=opus|pcm16 (to force a codec).
import { chooseDownlink, Downlink, type DownlinkChoice } from './downlink.ts';
import { exposeFigures, type Line, type Problem } from './figures.ts';
import { answerMcp } from './mcp.ts';
import { MIC_RATE } from './mic.ts';
import { Player } from './player.ts';
import type { ClientMessage, GatewayMessage, GatewayState } from './protocol.ts';
import { PlayoutReport } from './report.ts';
import { Session } from './session.ts';
import { Talk } from './talk.ts';
import { addLine, controls, notify, showActivation, showEmotion, showFigures, showState } from './ui.ts';
import { closeText, errorText } from './wording.ts';

const params = new URLSearchParams(location.search);
const context = new AudioContext({ latencyHint: 'interactive' });

let state = 'connecting';
let gatewayState: GatewayState | undefined;
let sessionId: string | null = null;
/** What the hello asks for; known once the browser has said whether it decodes Opus. */
let choice: DownlinkChoice | undefined;
let codec: 'opus' | 'pcm16' = params.get('downlink') === 'pcm16' ? 'pcm16' : 'opus';
const transcript: Line[] = [];
const errors: Problem[] = [];

const player = new Player(context, Number(controls.target.value), (figures) => {
  report.figures(figures);
  talk.playerEvent(figures.event);
  render();
});
const downlink = new Downlink(player, {
  error: (message) => problem('client', 'decoder', message),
  opusFailed: (message) => fallBackToPcm(message),
});
const session = new Session(url, hello, {
  connecting() {
    endSession();
    state = 'connecting';
    render();
  },
  message: onMessage,
  audio: (frame) => downlink.frame(frame),
  unreadable: () => problem('client', 'message', 'The gateway sent a message this page could not read; it was ignored.'),
  closed(code, reason, next) {
    endSession();
    state = next.retryInMs === undefined ? 'closed' : 'waiting';
    problem('close', code, closeText(code, reason, next));
  },
});
const report = new PlayoutReport(
  (message) => session.send(message),
  () => player.figures,
);
const link = {
  state: () => gatewayState,
  send: (m: ClientMessage) => session.send(m),
  sendAudio: (pcm: Int16Array) => session.sendAudio(pcm),
};
const talk = new Talk(context, link, downlink, player, (message) => problem('client', 'microphone', message));

function url(): string {
  const token = controls.token.value.trim();
  const query = token === '' ? '' : `?token=${encodeURIComponent(token)}`;
  return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/v1/voice${query}`;
}

function hello(): ClientMessage {
  const downlink = choice?.codec === 'opus' ? { codec: 'opus' as const, transport: 'binary' as const } : { codec: 'pcm16' as const, sampleRate: choice?.sampleRate ?? 48000, transport: 'binary' as const };
  return { type: 'hello', version: 1, downlink, uplink: { codec: 'pcm16', sampleRate: MIC_RATE, frameMs: 60 } };
}

/** Starts a new session (Connect, a page back from the cache, a change of codec); the old one ends first. */
function connect(): void {
  if (choice === undefined) return;
  codec = choice.codec;
  session.connect();
}

/**
 * The session is gone, or a new one begins: nothing of the old one may linger (the gateway's state, the
 * playout report's counters, a pressed talk button, a hands-free utterance, an activation code).
 */
function endSession(): void {
  gatewayState = undefined;
  report.end();
  downlink.stop();
  talk.gatewayState(undefined);
  showActivation(undefined);
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
      // The device is bound once the session moves: whatever the code was, it is done with.
      showActivation(undefined);
      downlink.state(m.state, replyOver);
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
    case 'pong':
      downlink.pong(m.id);
      break;
    case 'mcp': {
      const answer = answerMcp(m.payload);
      if (answer !== undefined) session.send(answer);
      break;
    }
  }
  render();
}

/** WebCodecs kept failing on this session's packets: a new session with the gateway decoding them. */
function fallBackToPcm(message: string): void {
  if (choice === undefined || choice.codec === 'pcm16') return;
  choice = { ...choice, codec: 'pcm16' };
  problem('client', 'decoder', `${message} Reconnecting with pcm16 audio, which the gateway decodes.`);
  connect();
}

function problem(kind: Problem['kind'], code: string | number, message: string): void {
  if (kind !== 'close' || code !== 1000) errors.push({ kind, code, message });
  notify(kind === 'close' && code === 1000 ? 'info' : 'error', message);
  render();
}

function render(): void {
  showState(state, gatewayState !== undefined, player.figures.playing);
  showFigures(player.figures, codec, talk.uplinkMs);
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
// Disabled while a session is up (showState); otherwise a new try, e.g. with another token.
controls.connect.addEventListener('click', connect);
// Browsers start audio only after a user gesture (unless told otherwise, as the tests' Chromium is).
for (const type of ['pointerdown', 'keydown'] as const) addEventListener(type, () => void context.resume(), { capture: true });
if (context.state === 'suspended') notify('info', 'Click anywhere (or type) to turn the sound on.');
addEventListener('pagehide', () => session.close());
// Back from the back/forward cache: the socket was closed at pagehide, and the page's state is of then.
addEventListener('pageshow', (e) => {
  if (e.persisted) connect();
});

exposeFigures(() => {
  const { event: _event, ...figures } = player.figures;
  return { ...figures, state, sessionId, codec, transcript, errors, uplinkMs: talk.uplinkMs, uplinkDropped: session.uplinkDropped };
});
render();

try {
  await player.ready;
  choice = await chooseDownlink(params.get('downlink'), context.sampleRate);
  connect();
} catch (error) {
  state = 'closed';
  problem('client', 'player', `The audio player could not start: ${error instanceof Error ? error.message : String(error)}`);
}
