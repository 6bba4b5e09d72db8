import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll } from 'vitest';
import { Resources } from './gateway.ts';
// Brings window.voicegw's type (a global declaration) into the tests' page functions.
import type { VoicegwFigures } from '../../web/src/figures.ts';

export type { VoicegwFigures };

/** Debian's Chromium (the package `chromium`): nothing here downloads a browser. */
export const CHROMIUM = '/usr/bin/chromium';
/** What the fake microphone says, over and over: a 2.6 s sentence, 16-bit PCM as Chromium wants it. */
export const FAKE_MIC_WAV = fileURLToPath(new URL('../fixtures/utterance-16k.wav', import.meta.url));

/** A headless Chromium whose microphone plays FAKE_MIC_WAV and whose pages may play sound unprompted. */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--no-sandbox',
      '--autoplay-policy=no-user-gesture-required',
      '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${FAKE_MIC_WAV}`,
    ],
  });
}

export interface ClientPage {
  page: Page;
  /** Uncaught exceptions and console errors of the page: a test expects none. */
  problems: string[];
  close(): Promise<void>;
}

/**
 * Opens the gateway's client page (`query` is its URL's search, e.g. `?downlink=pcm16`) in a context of its
 * own. `beforeLoad` runs in the page before any of its scripts, e.g. to stand in for a browser API.
 */
export async function openClient(browser: Browser, port: number, query = '', waitForReady = true, beforeLoad?: () => void): Promise<ClientPage> {
  const context: BrowserContext = await browser.newContext({ viewport: { width: 960, height: 540 } });
  if (beforeLoad !== undefined) await context.addInitScript(beforeLoad);
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  const problems: string[] = [];
  page.on('pageerror', (error) => problems.push(error.message));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(message.text());
  });
  await page.goto(`http://127.0.0.1:${port}/${query}`);
  // The page defines window.voicegw as its module starts, which a page's load event need not wait for.
  await page.waitForFunction(() => window.voicegw !== undefined);
  if (waitForReady) await page.waitForFunction(() => window.voicegw.state === 'ready');
  return { page, problems, close: () => context.close() };
}

/** The page's figures now (window.voicegw, copied out of the page). */
export function figuresOf(page: Page): Promise<VoicegwFigures> {
  return page.evaluate(() => ({ ...window.voicegw }));
}

/** Types and sends a message from the page's text box. */
export async function ask(page: Page, text: string): Promise<void> {
  await page.fill('#text', text);
  await page.click('#compose button[type=submit]');
}

/** Waits until the page has heard a reply to its end: the gateway ready, the player idle, `frames` played. */
export async function replyPlayed(page: Page, frames: number): Promise<VoicegwFigures> {
  await page.waitForFunction((n) => window.voicegw.state === 'ready' && !window.voicegw.playing && window.voicegw.framesPlayed >= n, frames);
  return figuresOf(page);
}

/**
 * Where a test's screenshot goes: the README's docs/images/web-client.png when SCREENSHOT=update, else a
 * temporary directory, so that a test run leaves the checkout as it was.
 */
export function screenshotPath(): string {
  if (process.env.SCREENSHOT === 'update') return fileURLToPath(new URL('../../docs/images/web-client.png', import.meta.url));
  return join(mkdtempSync(join(tmpdir(), 'voicegw-screenshot-')), 'web-client.png');
}

/**
 * One Chromium for a test file. `openPage` is openClient on it; after each test its pages are closed and
 * the gateways and servers in `resources` stopped.
 */
export function chromiumForFile(): { resources: Resources; openPage: (...args: Parameters<typeof openClient> extends [Browser, ...infer R] ? R : never) => Promise<ClientPage> } {
  let browser: Browser;
  const resources = new Resources();
  const pages: ClientPage[] = [];
  beforeAll(async () => {
    browser = await launchChromium();
  });
  afterAll(() => browser.close());
  afterEach(async () => {
    for (const p of pages.splice(0)) await p.close();
    await resources.dispose();
  });
  return {
    resources,
    openPage: async (...args) => {
      const page = await openClient(browser, ...args);
      pages.push(page);
      return page;
    },
  };
}
