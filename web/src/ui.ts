// The page's elements (index.html) and how the session's news is shown in them.
import type { PlayerFigures } from './player-messages.ts';

const byId = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;

export const controls = {
  compose: byId<HTMLFormElement>('compose'),
  text: byId<HTMLInputElement>('text'),
  talk: byId<HTMLButtonElement>('talk'),
  handsFree: byId<HTMLInputElement>('hands-free'),
  stop: byId<HTMLButtonElement>('stop'),
  target: byId<HTMLInputElement>('target'),
  token: byId<HTMLInputElement>('token'),
  connect: byId<HTMLButtonElement>('connect'),
};

const view = {
  state: byId('state'),
  emotion: byId('emotion'),
  notices: byId('notices'),
  activation: byId('activation'),
  activationCode: byId('activation-code'),
  activationMessage: byId('activation-message'),
  transcript: byId('transcript'),
  codec: byId('f-codec'),
  buffered: byId('f-buffered'),
  underruns: byId('f-underruns'),
  first: byId('f-first'),
  stop: byId('f-stop'),
  frames: byId('f-frames'),
  played: byId('f-played'),
  uplink: byId('f-uplink'),
};

const MAX_NOTICES = 4;

/** `up`: a session is there to talk to; Connect is for when there is none (or it is still coming up). */
export function showState(state: string, up: boolean, playing: boolean): void {
  view.state.textContent = playing && state !== 'speaking' ? `${state} · playing` : state;
  view.state.dataset.state = state;
  for (const c of [controls.text, controls.talk, controls.stop]) c.disabled = !up;
  controls.connect.disabled = up;
}

export function showEmotion(emoji: string): void {
  view.emotion.textContent = emoji;
}

export function addLine(role: 'user' | 'assistant', text: string): void {
  const li = document.createElement('li');
  li.className = role;
  li.textContent = text;
  view.transcript.append(li);
  li.scrollIntoView({ block: 'end' });
}

export function notify(kind: 'error' | 'info', text: string): void {
  const p = document.createElement('p');
  p.className = kind;
  p.textContent = text;
  view.notices.prepend(p);
  while (view.notices.children.length > MAX_NOTICES) view.notices.lastElementChild!.remove();
}

/** The device must be activated: the code to enter, and the voice service's word on where. */
export function showActivation(activation: { code: string; message: string } | undefined): void {
  view.activation.hidden = activation === undefined;
  view.activationCode.textContent = activation?.code ?? '';
  view.activationMessage.textContent = activation?.message ?? '';
}

const ms = (value: number | null): string => (value === null ? '–' : `${Math.round(value)} ms`);

export function showFigures(f: PlayerFigures, codec: string, uplinkMs: number): void {
  view.codec.textContent = codec;
  view.buffered.textContent = ms(f.bufferedMs);
  view.underruns.textContent = String(f.underruns);
  view.first.textContent = ms(f.firstAudioMs);
  view.stop.textContent = ms(f.lastStopMs);
  view.frames.textContent = `${f.framesPlayed} / ${f.framesReceived}`;
  view.played.textContent = `${(f.playedMs / 1000).toFixed(2)} s`;
  view.uplink.textContent = `${(uplinkMs / 1000).toFixed(2)} s`;
}
