// What every browser check shares: Debian's chromium driven by playwright-core, a watch on
// failed requests and console errors, screenshots, and the JSON report the Python side reads.
//
// A check is a module whose default export is `async (page, params, report) => {}`; it is run
// with `node e2e/run-check.mjs <check> '<params JSON>'`, which prints the report as one line
// of JSON on stdout. tests/e2e/browser.py runs it and asserts on the report.
import { mkdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const E2E = dirname(fileURLToPath(import.meta.url));
export const ARTIFACTS = process.env.E2E_ARTIFACTS || join(E2E, 'artifacts');

// Debian's chromium, never a downloaded build. Without the background-networking flags it
// dials Google's services at start, which this closed network refuses (and CI's too).
export const CHROMIUM = process.env.E2E_CHROMIUM || '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/**
 * A fresh chromium (its own empty profile) and one page; close() removes the profile.
 * Service workers are blocked so that every check loads from the servers, never a cache.
 */
export async function launch({ viewport = { width: 1400, height: 900 } } = {}) {
  const profile = await mkdtemp(join(tmpdir(), 'dicomserver-e2e-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport,
    serviceWorkers: 'block',
  });
  const page = context.pages()[0] ?? (await context.newPage());
  return {
    context,
    page,
    async close() {
      await context.close();
      await rm(profile, { recursive: true, force: true });
    },
  };
}

/**
 * Records on `report` every request that failed (no answer, or a status >= 400) and every
 * console error or uncaught page error, except those `allowed` names: a list of
 * {kind, pattern, why} with `kind` 'console' (matched against "<message> <source URL>") or
 * 'request' (against "<method> <URL> <status or failure>") and `pattern` a RegExp.
 */
export function watch(page, report, allowed = []) {
  const isAllowed = (kind, text) => allowed.some((a) => a.kind === kind && a.pattern.test(text));
  const failed = (entry) => {
    const text = `${entry.method} ${entry.url} ${entry.status ?? entry.failure}`;
    if (!isAllowed('request', text)) report.failedRequests.push(entry);
  };
  page.on('requestfailed', (request) => {
    failed({ method: request.method(), url: request.url(), failure: request.failure()?.errorText });
  });
  page.on('response', (response) => {
    if (response.status() >= 400) {
      failed({ method: response.request().method(), url: response.url(), status: response.status() });
    }
  });
  page.on('console', (message) => {
    if (message.type() !== 'error') return;
    const text = message.text();
    const location = message.location();
    if (!isAllowed('console', `${text} ${location.url ?? ''}`)) report.consoleErrors.push({ text, location });
  });
  page.on('pageerror', (error) => {
    const text = `${error.name}: ${error.message}`;
    if (!isAllowed('console', text)) report.consoleErrors.push({ text, location: 'uncaught' });
  });
}

/** A full-page PNG under the artefacts folder; its path goes into the report. */
export async function screenshot(page, report, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  report.screenshots.push(path);
  return path;
}

/**
 * Pixel statistics of the largest visible canvas matching `selector`, read in the page:
 * {width, height, nonBlack, coloured, distinct, min, max} over its RGB values: `coloured`
 * counts pixels whose channels differ by more than 32 (none in a greyscale image), `distinct`
 * the colours, up to 4096. A drawn image has nonBlack > 0 and distinct > 1.
 */
export async function canvasStats(page, selector = 'canvas') {
  return page.evaluate((selector) => {
    const canvases = [...document.querySelectorAll(selector)].filter((c) => c.width > 0 && c.height > 0);
    if (!canvases.length) return null;
    const canvas = canvases.reduce((a, b) => (a.width * a.height >= b.width * b.height ? a : b));
    const { width, height } = canvas;
    const context = canvas.getContext('2d');
    if (!context) return { width, height, error: 'not a 2d canvas' };
    const data = context.getImageData(0, 0, width, height).data;
    let nonBlack = 0;
    let coloured = 0;
    let min = 255;
    let max = 0;
    const colours = new Set();
    for (let i = 0; i < data.length; i += 4) {
      const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
      if (r || g || b) nonBlack += 1;
      if (Math.max(r, g, b) - Math.min(r, g, b) > 32) coloured += 1;
      min = Math.min(min, r, g, b);
      max = Math.max(max, r, g, b);
      if (colours.size < 4096) colours.add((r << 16) | (g << 8) | b);
    }
    return { width, height, nonBlack, coloured, distinct: colours.size, min, max };
  }, selector);
}

/** Waits until a canvas matching `selector` shows more than one colour (something was drawn). */
export async function waitForDrawnCanvas(page, selector = 'canvas', timeout = 60000) {
  await page.waitForFunction(
    (selector) =>
      [...document.querySelectorAll(selector)].some((canvas) => {
        if (!canvas.width || !canvas.height) return false;
        const context = canvas.getContext('2d');
        if (!context) return false;
        const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
        for (let i = 4; i < data.length; i += 4) {
          if (data[i] !== data[0] || data[i + 1] !== data[1] || data[i + 2] !== data[2]) return true;
        }
        return false;
      }),
    selector,
    { timeout, polling: 250 },
  );
}
