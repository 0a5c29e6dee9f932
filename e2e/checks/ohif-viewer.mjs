// One study in OHIF's viewer: wait until its viewport canvas shows an image, then report the
// canvas's pixel statistics (read in the page) and take a screenshot.
import { canvasStats, screenshot, waitForDrawnCanvas } from '../harness.mjs';

const VIEWPORT = '.cornerstone-canvas';

export default async function viewer(page, { viewer, study, name }, report) {
  await page.goto(`${viewer}/viewer?StudyInstanceUIDs=${encodeURIComponent(study)}`);
  await waitForDrawnCanvas(page, VIEWPORT);
  await page.waitForLoadState('networkidle');
  report.results.canvas = await canvasStats(page, VIEWPORT);
  await screenshot(page, report, name);
}
