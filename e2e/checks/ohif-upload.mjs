// OHIF's Upload dialog in the study list: choose `file`, wait for OHIF's STOW-RS request and
// its "completed" message, close the dialog and wait for `patient` in the refreshed list.
import { screenshot } from '../harness.mjs';
import { studyListPatients } from './ohif-study-list.mjs';

export default async function upload(page, { viewer, file, patient }, report) {
  await page.goto(`${viewer}/`);
  await page.getByText('Upload', { exact: true }).click();
  const stow = page.waitForResponse(
    (response) => response.request().method() === 'POST' && new URL(response.url()).pathname.endsWith('/studies'),
  );
  await page.locator('input[type=file]:not([webkitdirectory])').setInputFiles(file);
  const response = await stow;
  report.results.stowStatus = response.status();
  report.results.stowResponse = await response.json();
  await page.getByText('1 file completed.').waitFor();
  await screenshot(page, report, 'ohif-upload');
  // The dialog's "Close" button (its corner cross, also named Close, comes second).
  await page.getByRole('dialog').getByRole('button', { name: 'Close', exact: true }).first().click();
  await page.getByText(patient, { exact: true }).waitFor();
  await page.waitForLoadState('networkidle');
  report.results.patients = await studyListPatients(page);
  await screenshot(page, report, 'ohif-study-list-after-upload');
}
