// Drives the web console of a running `observers run` in Debian's Chromium (playwright-core,
// no browser download). Started by the observers-cli integration test `console`, which prepares
// the instance: a webhook observer whose receiver failed until now, so one DLQ item is pending
// and the receiver succeeds from here on. Environment:
//   CONSOLE_URL   the ops server, e.g. http://127.0.0.1:9464
//   OPS_TOKEN     the instance's OBSERVERS_OPS_TOKEN
//   ENTITY_ID     the entity of the failed delivery (entity type Order)
//   LISTENER_ID   the instance's listener id
//   CHROMIUM      the browser executable
//   SHOTS         the directory screenshots go to
// Every wait has a deadline (Playwright's timeouts); exit status 0 means every check passed.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const base = env('CONSOLE_URL');
const token = env('OPS_TOKEN');
const entity = env('ENTITY_ID');
const listener = env('LISTENER_ID');
const shots = env('SHOTS');
mkdirSync(shots, { recursive: true });

const TIMEOUT = 30_000;
const step = (what) => console.log(`console test: ${what}`);

async function expectText(locator, re, what) {
  await locator.filter({ hasText: re }).first().waitFor({ timeout: TIMEOUT }).catch((e) => {
    throw new Error(`${what}: ${re} did not appear: ${e.message}`);
  });
}

async function noHorizontalScroll(page, what) {
  const over = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (over > 1) throw new Error(`${what}: the page is ${over}px wider than the viewport`);
}

const browser = await chromium.launch({
  executablePath: env('CHROMIUM'),
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
try {
  const external = [];
  const desktop = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  desktop.setDefaultTimeout(TIMEOUT);
  const page = await desktop.newPage();
  page.on('request', (r) => { if (!r.url().startsWith(base)) external.push(r.url()); });
  page.on('pageerror', (e) => { throw new Error(`script error in the page: ${e.message}`); });

  // Overview: the server has a token, so reading asks for it; a wrong one is refused.
  step('overview asks for the token; a wrong one is refused');
  await page.goto(`${base}/ui/`);
  await expectText(page.locator('#banner'), /needs the ops token/, 'overview without a token');
  await page.click('#banner-token');
  await page.fill('#token-input', `${token}-wrong`);
  await page.click('#token-save');
  await expectText(page.locator('#token-error'), /Refused: the ops server did not accept this token/, 'wrong token');
  if (await page.evaluate(() => sessionStorage.getItem('observers.ops-token'))) throw new Error('a refused token was kept');
  await page.fill('#token-input', token);
  await page.click('#token-save');
  await expectText(page.locator('#ov-listeners tbody tr'), new RegExp(listener), 'overview listeners');
  await expectText(page.locator('#ov-dlq'), /^1$/, 'overview DLQ count');
  // Live: the page refreshes itself (the "live" clock moves) without a reload.
  const first = await page.textContent('#live');
  await page.waitForFunction((t) => document.querySelector('#live').textContent !== t && /^live/.test(document.querySelector('#live').textContent), first, { timeout: TIMEOUT });
  // The process's own samples: the events/s chart draws a line once two intervals are in.
  await page.waitForFunction(() => /L/.test(document.querySelector('svg.chart path').getAttribute('d') || ''), null, { timeout: TIMEOUT });
  await page.screenshot({ path: join(shots, 'overview.png') });

  // Events: a deep link (reloaded), the failed delivery, then its detail.
  step('events: search, detail with matched observers and outcomes');
  await page.goto(`${base}/ui/events?entity_type=Order&entity_id=${entity}`);
  await expectText(page.locator('#ev-table tbody tr'), /1 failed/, 'events search');
  await page.screenshot({ path: join(shots, 'events.png') });
  await page.locator('#ev-table tbody tr').filter({ hasText: /1 failed/ }).first().locator('a').click();
  await expectText(page.locator('#evd-actions'), /failed/, 'event detail actions');
  await expectText(page.locator('#evd'), /orders-to-erp/, 'event detail observers');
  await page.reload();
  await expectText(page.locator('#evd-actions'), /failed/, 'event detail after a reload');
  await page.screenshot({ path: join(shots, 'event.png'), fullPage: true });

  // Dead letters: the list, the item (payload, error, attempts).
  step('dead letters: list and item');
  await page.goto(`${base}/ui/dlq`);
  const row = page.locator('#dlq-table tbody tr').filter({ hasText: `Order:${entity}` });
  await row.first().waitFor();
  await expectText(row, /pending/, 'DLQ row');
  await page.screenshot({ path: join(shots, 'dlq.png') });
  await row.first().locator('a').click();
  await expectText(page.locator('#dlqd-error'), /503/, 'DLQ item error');
  await expectText(page.locator('#dlqd'), /orders-to-erp/, 'DLQ item observer');
  await page.reload();
  await expectText(page.locator('#dlqd-status'), /pending/, 'DLQ item after a reload');

  // Retry with a wrong token: refused, nothing retried.
  step('retry with a wrong token is refused');
  await page.click('#token-button');
  await page.click('#token-forget');
  await page.click('#dlqd-retry');
  await page.click('#confirm-ok');
  await page.fill('#token-input', 'not-the-token');
  await page.click('#token-save');
  await expectText(page.locator('#token-error'), /Refused/, 'retry with a wrong token');
  await page.click('#token-cancel');
  const direct = await page.evaluate(async () => (await fetch('/api/ui/dlq/retry', {
    method: 'POST', headers: { 'Content-Type': 'application/json', Authorization: 'Bearer not-the-token' }, body: JSON.stringify({ ids: [1] }),
  })).status);
  if (direct !== 401) throw new Error(`retry with a wrong token answered ${direct}, not 401`);

  // Retry with the right token: delivered, and the page shows it without a reload.
  step('retry with the right token delivers');
  await page.click('#dlqd-retry');
  await expectText(page.locator('#confirm-text'), /again/, 'retry confirmation');
  await page.click('#confirm-ok');
  await page.fill('#token-input', token);
  await page.click('#token-save');
  // The dialog only checked the token; the retry is sent with it.
  await expectText(page.locator('#dlqd-notice'), /Delivered/, 'retry outcome');
  await expectText(page.locator('#dlqd-status'), /resolved/, 'DLQ item resolved');
  await page.screenshot({ path: join(shots, 'dlq-item.png'), fullPage: true });

  // Jobs.
  step('jobs');
  await page.goto(`${base}/ui/jobs`);
  await expectText(page.locator('#jobs-stats'), /pending/, 'job stats');
  await expectText(page.locator('#jobs-table tbody'), /no failed jobs|failed/, 'failed jobs');
  await page.screenshot({ path: join(shots, 'jobs.png') });

  if (external.length) throw new Error(`requests left the ops server: ${external.join(', ')}`);

  // A phone: the token kept for this tab only (a new tab asks again), pages fit the width.
  step('phone viewport');
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
  phone.setDefaultTimeout(TIMEOUT);
  const mobile = await phone.newPage();
  await mobile.goto(`${base}/ui/dlq?status=all`);
  await expectText(mobile.locator('#banner'), /needs the ops token/, 'a new tab has no token');
  await mobile.click('#banner-token');
  await mobile.fill('#token-input', token);
  await mobile.click('#token-save');
  await expectText(mobile.locator('#dlq-table tbody tr'), /resolved/, 'phone DLQ');
  await noHorizontalScroll(mobile, 'phone DLQ');
  await mobile.screenshot({ path: join(shots, 'phone-dlq.png') });
  await mobile.goto(`${base}/ui/`);
  await expectText(mobile.locator('#ov-listeners tbody tr'), new RegExp(listener), 'phone overview');
  await noHorizontalScroll(mobile, 'phone overview');
  await mobile.screenshot({ path: join(shots, 'phone-overview.png') });
  step('all checks passed');
} finally {
  await browser.close();
}
