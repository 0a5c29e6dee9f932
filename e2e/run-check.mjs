// node e2e/run-check.mjs <check> '<params JSON>': runs e2e/checks/<check>.mjs in a fresh
// chromium and prints its report as the last line of stdout (JSON). Exits 0 whenever the
// report was written, a failed check included (with a screenshot "<name>-failed"): the
// caller judges the report.
import { launch, screenshot, watch } from './harness.mjs';

const [check, json = '{}'] = process.argv.slice(2);
const params = JSON.parse(json);
const report = { check, ok: false, error: null, failedRequests: [], consoleErrors: [], screenshots: [], results: {} };
const { default: run, allowed = [] } = await import(`./checks/${check}.mjs`);
const browser = await launch();
try {
  watch(browser.page, report, allowed);
  await run(browser.page, params, report);
  report.ok = true;
} catch (error) {
  report.error = String(error?.stack ?? error);
  await screenshot(browser.page, report, `${params.name ?? check}-failed`).catch(() => {});
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
