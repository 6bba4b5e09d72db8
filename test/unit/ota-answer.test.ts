import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { activateUrl, activationBody, otaBody, otaHeaders, parseOtaAnswer } from '../../src/protocol/ota.ts';

const device = {
  deviceId: '02:11:22:33:44:55',
  clientId: '0b1e5b8e-4a53-4c65-8f0e-3a1f2b9c7d10',
  serialNumber: 'SN-ABCDEF01-021122334455',
  hmacKey: 'a'.repeat(64),
};

describe('parseOtaAnswer', () => {
  it("takes the websocket section of the public cloud's answer and ignores its mqtt section", () => {
    const cloud = {
      mqtt: { endpoint: 'mqtt.xiaozhi.me', client_id: 'GID_test@@@02_11_22_33_44_55@@@x', username: 'u', password: 'p', publish_topic: 'device-server', subscribe_topic: 'null' },
      websocket: { url: 'wss://api.tenclass.net/xiaozhi/v1/', token: 'test-token' },
      server_time: { timestamp: 1772084756816, timezone_offset: 480 },
      firmware: { version: '2.0.4', url: '' },
    };
    expect(parseOtaAnswer(JSON.stringify(cloud))).toEqual({
      ok: true,
      answer: { websocket: { url: 'wss://api.tenclass.net/xiaozhi/v1/', token: 'test-token' }, activation: undefined },
    });
  });

  it('reads an empty token as no token, so that no Authorization header is sent', () => {
    const parsed = parseOtaAnswer(JSON.stringify({ websocket: { url: 'ws://10.0.0.2:8000/xiaozhi/v1/', token: '' } }));
    expect(parsed.ok && parsed.answer.websocket).toEqual({ url: 'ws://10.0.0.2:8000/xiaozhi/v1/', token: undefined });
  });

  it('asks for activation while the section carries a code or a challenge, as the firmware decides', () => {
    const withCode = parseOtaAnswer(JSON.stringify({ activation: { code: '123456', message: 'xiaozhi.me\n123456', challenge: 'c1' }, websocket: { url: 'ws://h/xiaozhi/v1/' } }));
    expect(withCode.ok && withCode.answer.activation).toEqual({ code: '123456', message: 'xiaozhi.me\n123456', challenge: 'c1' });
    const challengeOnly = parseOtaAnswer(JSON.stringify({ activation: { challenge: 'c2' } }));
    expect(challengeOnly.ok && challengeOnly.answer.activation).toEqual({ code: undefined, message: undefined, challenge: 'c2' });
    const neither = parseOtaAnswer(JSON.stringify({ activation: { message: 'done', timeout_ms: 30000 }, websocket: { url: 'ws://h/' } }));
    expect(neither.ok && neither.answer.activation).toBeUndefined();
  });

  it('reports an answer with only MQTT as having no websocket section', () => {
    const parsed = parseOtaAnswer(JSON.stringify({ mqtt: { endpoint: 'm' } }));
    expect(parsed).toEqual({ ok: true, answer: { websocket: undefined, activation: undefined } });
  });

  it.each([
    ['not JSON', '<html>502 Bad Gateway</html>', /not JSON/],
    ['a JSON array', '[1,2]', /not a JSON object/],
    ["manager-api's error body", '{"error":"Invalid device ID"}', /refused: Invalid device ID/],
    ["the single-module server's failure body", '{"success":false,"message":"request error."}', /refused: request error\./],
    ['a websocket section without a url', '{"websocket":{"token":"t"}}', /without a ws:\/\/ or wss:\/\/ url/],
    ['a websocket url of another scheme', '{"websocket":{"url":"http://h/"}}', /without a ws:\/\/ or wss:\/\/ url/],
  ])('refuses %s with a reason and never throws', (_, body, reason) => {
    const parsed = parseOtaAnswer(body);
    expect(parsed.ok).toBe(false);
    expect(!parsed.ok && parsed.detail).toMatch(reason);
  });
});

describe('the OTA request', () => {
  it("sends the firmware's headers: Device-Id, Client-Id, Activation-Version, and Serial-Number only for version 2", () => {
    expect(otaHeaders(device, 1, '0.1.0')).toEqual({
      'Activation-Version': '1',
      'Device-Id': device.deviceId,
      'Client-Id': device.clientId,
      'User-Agent': 'bread-compact-wifi/voicegw-0.1.0',
      'Accept-Language': 'en-US',
      'Content-Type': 'application/json',
    });
    expect(otaHeaders(device, 2, '0.1.0')['Serial-Number']).toBe(device.serialNumber);
  });

  it('always sends application.version, which manager-api reads without a null check', () => {
    expect(otaBody(device, '0.1.0')).toMatchObject({ application: { version: '0.1.0' }, board: { type: 'bread-compact-wifi', mac: device.deviceId } });
  });

  it('activates with the empty body for version 1 and an HMAC of the challenge for version 2', () => {
    expect(activationBody(device, 'challenge-1', 1)).toEqual({});
    expect(activationBody(device, 'challenge-1', 2)).toEqual({
      algorithm: 'hmac-sha256',
      serial_number: device.serialNumber,
      challenge: 'challenge-1',
      hmac: createHmac('sha256', Buffer.from(device.hmacKey, 'utf8')).update('challenge-1').digest('hex'),
    });
  });

  it('polls <ota>activate, adding the slash the firmware adds', () => {
    expect(activateUrl('https://api.tenclass.net/xiaozhi/ota/')).toBe('https://api.tenclass.net/xiaozhi/ota/activate');
    expect(activateUrl('http://h:8002/xiaozhi/ota')).toBe('http://h:8002/xiaozhi/ota/activate');
  });
});
