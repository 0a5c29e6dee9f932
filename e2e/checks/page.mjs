// Any page: open `url`, wait until the network is quiet (and for `selector`, if given), take
// a screenshot named `name`, and report the answer's status, the title, the visible text and
// every image with its decoded size (0 when the browser could not decode it).
import { screenshot } from '../harness.mjs';

export const allowed = [
  {
    kind: 'console',
    pattern: /^Failed to load resource: the server responded with a status of 404 \([^)]*\) https?:\/\/[^/\s]+\/favicon\.ico$/,
    why: 'Chromium asks every origin for /favicon.ico by itself (on image documents too); dicomserver serves none',
  },
];

export default async function page(page, { url, name, selector }, report) {
  const response = await page.goto(url, { waitUntil: 'networkidle' });
  if (selector) await page.locator(selector).first().waitFor();
  report.results.status = response?.status() ?? null;
  report.results.contentType = response?.headers()['content-type'] ?? null;
  report.results.title = await page.title();
  report.results.text = await page.locator('body').innerText();
  report.results.images = await page.locator('img').evaluateAll((images) =>
    images.map((img) => ({ src: img.currentSrc, width: img.naturalWidth, height: img.naturalHeight })),
  );
  await screenshot(page, report, name);
}
