// OHIF's study list: wait for every expected patient name, then report the names the list
// shows (its first column) and take a screenshot.
import { screenshot } from '../harness.mjs';

export default async function studyList(page, { viewer, patients }, report) {
  await page.goto(`${viewer}/`);
  for (const name of patients) await page.getByText(name, { exact: true }).waitFor();
  await page.waitForLoadState('networkidle');
  report.results.patients = await studyListPatients(page);
  await screenshot(page, report, 'ohif-study-list');
}

/** The Patient column of the study list's rows (the filter row has no text there). */
export async function studyListPatients(page) {
  const cells = await page.locator('tbody tr td:first-child').allInnerTexts();
  return cells.map((text) => text.trim()).filter(Boolean);
}
