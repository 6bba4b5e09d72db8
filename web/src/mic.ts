// The page's side of the microphone: getUserMedia into the mic worklet, which posts 20 ms chunks of
// pcm16 at 16 kHz. Once open it stays open: asking again at each press of the talk button would cut the
// start of what the user says.

export const MIC_RATE = 16000;
export const CHUNK_MS = 20;

export async function openMicrophone(context: AudioContext, onChunk: (pcm: Int16Array) => void): Promise<void> {
  // The browser's echo cancellation keeps the assistant's voice out of the microphone, so that speaking
  // over it (barge-in) works without headphones.
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
  });
  await context.audioWorklet.addModule('/mic-worklet.js');
  const source = context.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(context, 'voicegw-mic', { numberOfInputs: 1, numberOfOutputs: 0, channelCount: 1, channelCountMode: 'explicit' });
  node.port.onmessage = (e: MessageEvent<Int16Array>) => onChunk(e.data);
  source.connect(node);
}
