#!/usr/bin/env node
// Stored-XSS attack in a real browser: every payload of xss-payloads.mjs, sent through
// every visitor-controlled field, viewed in every view that shows the field: the operator
// console's queue, its chat panels (live and restored from a snapshot), the typing
// indicator, the chat page inside the widget on the customer's page, and the visitor and
// operator transcript JSON opened in the browser. Nothing may execute, no element may come
// from a payload, every field must read back literally, and no CSP violation may occur.
//
// usage: node tests/browser/xss.mjs --bin PATH_TO_palisade [--keep] [--screenshots DIR]
// Prints `ok xss/<view> <figures>` or `FAIL xss/<view>: why` per view, then
// `N passed, M failed`.

import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { PAYLOADS, FIELDS } from './xss-payloads.mjs';

const CHROMIUM = process.env.PALISADE_CHROMIUM || '/usr/bin/chromium';
const STEP = 20_000;
const TOTAL = 8 * 60_000;
const BATCH = 8; // an operator holds at most 8 chats at once
const PER_CHAT = 5_000; // one chat's messages arriving in a view

const args = { bin: null, keep: false, screenshots: null };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (a === '--bin') args.bin = path.resolve(process.argv[++i]);
  else if (a === '--keep') args.keep = true;
  else if (a === '--screenshots') args.screenshots = path.resolve(process.argv[++i]);
  else { console.error(`unknown argument ${a}`); process.exit(2); }
}
if (!args.bin) { console.error('usage: xss.mjs --bin PATH'); process.exit(2); }

/* ---------- results ---------- */

const views = new Map(); // view -> { checks, problems: [] }
function view(name) {
  if (!views.has(name)) views.set(name, { checks: 0, problems: [], figures: '' });
  return views.get(name);
}
function check(name, ok, why) {
  const v = view(name);
  v.checks++;
  if (!ok) v.problems.push(why);
}

/* ---------- the daemon ---------- */

let daemon = null;
let exited = null;
let demo = null;
const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'palisade-xss-'));
const logPath = `${workDir}.log`;

function startDaemon() {
  const log = fs.openSync(logPath, 'w', 0o600);
  daemon = spawn(args.bin, ['demo', '--dir', workDir], { stdio: ['ignore', log, log], detached: true });
  fs.closeSync(log);
  daemon.on('exit', (code, signal) => { exited = { code, signal }; });
}

async function waitDemo() {
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (exited) throw new Error(`palisade demo exited: ${JSON.stringify(exited)}`);
    try {
      return JSON.parse(fs.readFileSync(path.join(workDir, 'demo.json'), 'utf8'));
    } catch { /* not yet */ }
    if (Date.now() > deadline) throw new Error('demo.json did not appear within 60 s');
    await sleep(100);
  }
}

function stopDaemon() {
  if (daemon && !exited) {
    try { process.kill(-daemon.pid, 'SIGTERM'); } catch { /* gone */ }
  }
}
process.on('exit', () => { if (daemon && !exited) { try { process.kill(-daemon.pid, 'SIGKILL'); } catch { /* gone */ } } });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, fn, timeout = STEP) {
  const deadline = Date.now() + timeout;
  let last = null;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) { last = e; }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? ` (${last.message})` : ''}`);
    await sleep(100);
  }
}

/* ---------- the visitor API, over TLS with the demo CA ---------- */

let CA = null;
function call(method, base, p, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
    const u = new URL(p, base);
    const h = { ...headers };
    if (data) { h['Content-Type'] = 'application/json'; h['Content-Length'] = data.length; }
    const req = https.request(u, { method, ca: CA, headers: h, timeout: 10_000 }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json = null;
        try { json = JSON.parse(text); } catch { /* not JSON */ }
        resolve({ status: res.statusCode, json, text });
      });
    });
    req.on('timeout', () => req.destroy(new Error('request timeout')));
    req.on('error', reject);
    if (data) req.write(data);
    req.end();
  });
}

class Visitor {
  constructor(token) { this.token = token; }
  async post(p, body) {
    const r = await call('POST', demo.visitor_url, p, body, { Authorization: `Bearer ${this.token}` });
    if (r.status >= 300) throw new Error(`POST ${p} answered ${r.status}: ${r.text.slice(0, 120)}`);
    return r;
  }
}

/* ---------- the browser ---------- */

const violations = [];
const dialogs = [];
const beacons = [];
const pageErrors = [];

async function newContext(browser, label) {
  const ctx = await browser.newContext({ viewport: { width: 1440, height: 900 }, serviceWorkers: 'block' });
  ctx.setDefaultTimeout(STEP);
  await ctx.exposeBinding('__reportViolation', (src, v) => violations.push({ label, frame: src.frame ? src.frame.url() : '?', ...v }));
  await ctx.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      const v = { directive: e.violatedDirective, blocked: e.blockedURI, sample: e.sample, page: location.href };
      try { window.__reportViolation(v); } catch { /* not ready */ }
    });
  });
  ctx.on('request', (r) => { if (/xss-beacon/.test(r.url())) beacons.push(`${label}: ${r.url()}`); });
  ctx.on('page', (page) => {
    page.on('dialog', (d) => { dialogs.push(`${label}: ${d.type()} ${d.message()}`); d.dismiss().catch(() => {}); });
    page.on('pageerror', (e) => pageErrors.push(`${label}: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) violations.push({ label, console: m.text() });
    });
  });
  return ctx;
}

/** window.__xss in every frame of a page (null when never set). */
async function xssFlags(page) {
  const out = [];
  for (const f of page.frames()) {
    try {
      const v = await f.evaluate(() => (typeof window.__xss === 'undefined' ? null : String(window.__xss)));
      if (v !== null) out.push(`${f.url()}: __xss=${v}`);
    } catch { /* navigating */ }
  }
  return out;
}

/** Tags under `root` that are not in `allowed` (an element made from a payload). */
async function foreignTags(frame, root, allowed) {
  return frame.evaluate(([sel, ok]) => {
    const r = document.querySelector(sel);
    if (!r) return [`(no ${sel})`];
    return [...r.querySelectorAll('*')].map((e) => e.tagName).filter((t) => !ok.includes(t));
  }, [root, allowed]);
}

/** Does some element matching `selector` under `container` read exactly `want`? */
async function hasText(frame, container, selector, want) {
  return frame.evaluate(([c, s, w]) => {
    const root = document.querySelector(c);
    if (!root) return false;
    return [...root.querySelectorAll(s)].some((e) => e.textContent === w);
  }, [container, selector, want]);
}

function shown(viewKey) {
  return FIELDS.filter((f) => f.shown[viewKey]);
}

function short(p) {
  return JSON.stringify(p.length > 40 ? `${p.slice(0, 40)}…` : p);
}

/* ---------- the attack ---------- */

async function main() {
  startDaemon();
  demo = await waitDemo();
  CA = fs.readFileSync(demo.ca_certificate);

  // 1. Every payload through every field: one chat per payload.
  const chats = [];
  for (const [i, [cls, p]] of PAYLOADS.entries()) {
    const body = { name: `Visitor ${i}`, question: `Question ${i}` };
    for (const f of FIELDS) if (f.start) Object.assign(body, f.start(p));
    const r = await call('POST', demo.visitor_url, '/api/v1/visitor/chats', body);
    if (r.status !== 201) throw new Error(`payload ${i} (${cls}) ${short(p)}: chat start answered ${r.status}: ${r.text}`);
    const v = new Visitor(r.json.token);
    for (const f of FIELDS) if (f.send) await f.send(v, p);
    const expect = {};
    for (const f of FIELDS) expect[f.field] = f.kept(p);
    chats.push({ i, cls, p, id: r.json.chat_id, token: r.json.token, v, expect });
  }
  const classes = new Set(PAYLOADS.map(([c]) => c));
  view('corpus').figures = `payloads=${PAYLOADS.length} classes=${classes.size} fields=${FIELDS.map((f) => f.field).join(',')}`;
  check('corpus', PAYLOADS.length >= 50, `only ${PAYLOADS.length} payloads`);

  const pins = [...new Set([demo.visitor_pin, demo.operator_pin].map((p) => p.replace(/^sha256\//, '')))];
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 60_000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      `--ignore-certificate-errors-spki-list=${pins.join(',')}`],
  });
  try {
    await attack(browser, chats);
  } finally {
    await browser.close().catch(() => {});
  }
}

async function attack(browser, chats) {
  const opCtx = await newContext(browser, 'operator');
  const op = await opCtx.newPage();
  await op.goto(demo.operator_url, { waitUntil: 'load' });
  await op.getByLabel('Username').fill(String(demo.operator_user));
  await op.getByLabel('Password', { exact: true }).fill(String(demo.operator_password));
  await op.getByLabel('Authentication string').fill(String(demo.auth_string));
  await op.locator('#login-btn').click();
  await op.locator('#app-view').waitFor({ state: 'visible', timeout: 45_000 });
  await until('console live', async () => (await op.locator('#conn-state').textContent()) === 'Live');

  // 2. The waiting queue: every chat waits there with its name and question.
  await until(`${chats.length} queued chats`, async () => (await op.locator('#queue-list .queue-item').count()) === chats.length);
  for (const c of chats) {
    for (const f of shown('queue')) {
      const ok = await hasText(op.mainFrame(), `#queue-list .queue-item[data-chat-id="${c.id}"]`, f.shown.queue, c.expect[f.field]);
      check('console-queue', ok, `payload ${c.i} (${c.cls}) ${short(c.p)} in ${f.field}: not shown literally`);
    }
  }
  const qTags = await foreignTags(op.mainFrame(), '#queue-list', ['LI', 'SPAN', 'P', 'DIV', 'BUTTON']);
  check('console-queue', qTags.length === 0, `elements from payloads in the queue: ${qTags.slice(0, 5)}`);
  view('console-queue').figures = `chats=${chats.length} fields=${shown('queue').map((f) => f.field).join(',')}`;

  const panelTags = ['SECTION', 'HEADER', 'DIV', 'H3', 'SPAN', 'P', 'OL', 'LI', 'FORM', 'LABEL', 'TEXTAREA', 'BUTTON', 'TIME'];
  const panelChecks = async (viewName, batch) => {
    for (const c of batch) {
      const panel = `.chat-panel[data-chat-id="${c.id}"]`;
      await until(`panel of chat ${c.id} with its messages`, async () =>
        (await op.locator(`${panel} .msg.from-visitor`).count()) >= 2, PER_CHAT).catch((e) => check(viewName, false, e.message));
      for (const key of ['panel', 'panelAuthor', 'panelMessage']) {
        for (const f of shown(key)) {
          const ok = await hasText(op.mainFrame(), panel, f.shown[key], c.expect[f.field]);
          check(viewName, ok, `payload ${c.i} (${c.cls}) ${short(c.p)} in ${f.field} (${key}): not shown literally`);
        }
      }
    }
    const tags = await foreignTags(op.mainFrame(), '#chat-panels', panelTags);
    check(viewName, tags.length === 0, `elements from payloads in the chat panels: ${tags.slice(0, 5)}`);
  };

  const visCtx = await newContext(browser, 'visitor');
  const widget = await visCtx.newPage();
  const jsonCtx = await newContext(browser, 'transcript');
  const vjson = await jsonCtx.newPage();
  const ojson = await opCtx.newPage();
  const jsonTags = ['PRE', 'DIV', 'SPAN', 'LABEL', 'INPUT', 'BODY', 'HEAD', 'STYLE', 'META'];

  for (let b = 0; b < chats.length; b += BATCH) {
    const batch = chats.slice(b, b + BATCH);
    // 3. Accept them: live chat panels.
    const statuses = await op.evaluate(async (ids) => Promise.all(ids.map((id) =>
      fetch(`/api/v1/operator/chats/${id}/accept`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' })
        .then((r) => r.status))), batch.map((c) => c.id));
    check('console-chat-panels', statuses.every((s) => s === 200), `accept answered ${statuses}`);
    await panelChecks('console-chat-panels', batch);
    if (b === 0) await shot(op, 'xss-console-panels.png');

    // 4. The typing indicator names the visitor.
    for (const c of batch) {
      await c.v.post('/api/v1/visitor/typing', { typing: true });
      for (const f of shown('typing')) {
        const want = `${c.expect[f.field]} is typing…`;
        const ok = await until('typing indicator', () => hasText(op.mainFrame(), `.chat-panel[data-chat-id="${c.id}"]`, f.shown.typing, want), 5000).catch(() => false);
        check('console-typing', ok, `payload ${c.i} (${c.cls}) ${short(c.p)} in ${f.field}: typing indicator not literal`);
      }
    }

    // 5. The console restored from a snapshot (reload).
    await op.reload({ waitUntil: 'load' });
    await until('console live after reload', async () => (await op.locator('#conn-state').textContent()) === 'Live');
    await panelChecks('console-snapshot', batch);

    // 6. The chat page, inside the widget on the customer's page (one page load per batch).
    await widget.goto(demo.demo_page_url, { waitUntil: 'load' });
    await widget.locator('#palisade-chat-button').click();
    const handle = await widget.waitForSelector('#palisade-chat-frame', { state: 'attached' });
    const frame = await handle.contentFrame();
    await frame.waitForSelector('#view-prechat:not([hidden]), #view-chat:not([hidden])');
    for (const c of batch) {
      // The chat page keeps its token in (partitioned) sessionStorage: hand it this chat's.
      await frame.evaluate((s) => sessionStorage.setItem('palisade.visitor.chat', s),
        JSON.stringify({ token: c.token, chat_id: c.id, name: c.expect.name }));
      await frame.goto(new URL('/chat', demo.visitor_url).href, { waitUntil: 'load' });
      await until(`chat page of chat ${c.id} with its transcript`, async () =>
        (await frame.locator('#messages .msg.from-visitor').count()) >= 2, PER_CHAT).catch((e) => check('chat-page-widget', false, e.message));
      for (const f of shown('chat')) {
        const ok = await hasText(frame, '#messages', f.shown.chat, c.expect[f.field]);
        check('chat-page-widget', ok, `payload ${c.i} (${c.cls}) ${short(c.p)} in ${f.field}: not shown literally in the chat page`);
      }
      const tags = await foreignTags(frame, '#messages', ['LI', 'SPAN', 'P', 'TIME']);
      check('chat-page-widget', tags.length === 0, `elements from payload ${c.i} in the chat page: ${tags.slice(0, 5)}`);
      const flags = await xssFlags(widget);
      check('chat-page-widget', flags.length === 0, `payload ${c.i} executed: ${flags}`);
      if (c.i === 0) await shot(widget, 'xss-widget-chat.png');

      // 7. The transcripts, opened as documents in the browser.
      await vjson.setExtraHTTPHeaders({ Authorization: `Bearer ${c.token}` });
      await checkJson('visitor-transcript-json', vjson, new URL('/api/v1/visitor/transcript', demo.visitor_url).href, c, 'json', jsonTags);
      await checkJson('operator-transcript-json', ojson, new URL(`/api/v1/operator/chats/${c.id}/transcript`, demo.operator_url).href, c, 'operatorJson', jsonTags);
    }
    // Done with this batch: the visitors leave, the operator closes the panels.
    for (const c of batch) await c.v.post('/api/v1/visitor/end', {});
    await until('batch ended', async () => (await op.locator('.chat-panel.ended').count()) >= batch.length);
    for (let k = 0; k < BATCH && (await op.locator('.chat-panel.ended .dismiss-btn').count()) > 0; k++) {
      await op.locator('.chat-panel.ended .dismiss-btn').first().click();
    }
  }
  const n = chats.length;
  view('console-chat-panels').figures = `chats=${n} fields=${[...new Set(['panel', 'panelAuthor', 'panelMessage'].flatMap((k) => shown(k).map((f) => f.field)))].join(',')}`;
  view('console-snapshot').figures = view('console-chat-panels').figures;
  view('console-typing').figures = `chats=${n} fields=${shown('typing').map((f) => f.field).join(',')}`;
  view('chat-page-widget').figures = `chats=${n} fields=${shown('chat').map((f) => f.field).join(',')}`;
  view('visitor-transcript-json').figures = `chats=${n} fields=${shown('json').map((f) => f.field).join(',')}`;
  view('operator-transcript-json').figures = `chats=${n} fields=${[...new Set([...shown('json'), ...shown('operatorJson')].map((f) => f.field))].join(',')}`;

  // 8. Nothing ran anywhere, and the CSP never had to stop anything.
  for (const ctx of [opCtx, visCtx, jsonCtx]) {
    for (const page of ctx.pages()) {
      const flags = await xssFlags(page);
      check('no-execution', flags.length === 0, `executed: ${flags}`);
    }
  }
  check('no-execution', dialogs.length === 0, `dialogs: ${dialogs.slice(0, 3)}`);
  check('no-execution', beacons.length === 0, `beacon requests: ${beacons.slice(0, 3)}`);
  view('no-execution').figures = `dialogs=${dialogs.length} beacons=${beacons.length} xss_flags=0`;
  check('csp-clean', violations.length === 0, `CSP violations: ${JSON.stringify(violations.slice(0, 3))}`);
  check('csp-clean', pageErrors.length === 0, `script errors: ${pageErrors.slice(0, 3)}`);
  view('csp-clean').figures = `violations=${violations.length} page_errors=${pageErrors.length}`;
}

async function shot(page, name) {
  if (!args.screenshots) return;
  fs.mkdirSync(args.screenshots, { recursive: true });
  await page.screenshot({ path: path.join(args.screenshots, name) }).catch(() => {});
}

/** Open a transcript as a document: it must render as inert text holding the literal values. */
async function checkJson(viewName, page, url, c, key, allowed) {
  const res = await page.goto(url, { waitUntil: 'load' });
  check(viewName, res && res.status() === 200, `${url} answered ${res && res.status()}`);
  const ct = res ? res.headers()['content-type'] || '' : '';
  check(viewName, ct.startsWith('application/json'), `content-type ${ct}`);
  const csp = res ? res.headers()['content-security-policy'] || '' : '';
  check(viewName, /default-src 'none'/.test(csp), `CSP ${csp}`);
  const tags = await page.evaluate((ok) => [...document.querySelectorAll('*')].map((e) => e.tagName).filter((t) => !ok.includes(t) && t !== 'HTML'), allowed);
  check(viewName, tags.length === 0, `elements in the ${viewName} document: ${tags.slice(0, 5)}`);
  let doc = null;
  try { doc = JSON.parse(await page.evaluate(() => document.body.innerText)); } catch (e) { check(viewName, false, `not JSON as shown: ${e.message}`); return; }
  const events = Array.isArray(doc.events) ? doc.events : [];
  const get = (pathSpec) => {
    const [first, rest] = pathSpec.split('.');
    if (!rest) {
      if (first === 'author') return events.filter((e) => e.from === 'visitor').map((e) => e.author);
      return [doc[first]];
    }
    return events.filter((e) => e.kind === first).map((e) => e[rest]);
  };
  for (const f of FIELDS) {
    for (const k of [key, key === 'operatorJson' ? 'json' : null].filter(Boolean)) {
      if (!f.shown[k]) continue;
      const values = get(f.shown[k]);
      check(viewName, values.includes(c.expect[f.field]), `payload ${c.i} (${c.cls}) ${short(c.p)} in ${f.field}: ${JSON.stringify(values).slice(0, 80)}`);
    }
  }
  const flags = await xssFlags(page);
  check(viewName, flags.length === 0, `payload ${c.i} executed in the ${viewName} document: ${flags}`);
}

/* ---------- run ---------- */

let failedHard = null;
const timer = setTimeout(() => { failedHard = `did not finish within ${TOTAL / 1000} s`; finish(); }, TOTAL);
try {
  await main();
} catch (e) {
  failedHard = e && e.message ? e.message.split('\n')[0] : String(e);
}
finish();

function finish() {
  clearTimeout(timer);
  let passed = 0;
  let failed = 0;
  const order = ['corpus', 'console-queue', 'console-chat-panels', 'console-snapshot', 'console-typing', 'chat-page-widget',
    'visitor-transcript-json', 'operator-transcript-json', 'no-execution', 'csp-clean'];
  for (const name of order) {
    const v = views.get(name);
    if (!v || v.checks === 0) {
      failed++;
      console.log(`FAIL xss/${name}: not checked${failedHard ? ` (${failedHard})` : ''}`);
      continue;
    }
    if (v.problems.length) {
      failed++;
      console.log(`FAIL xss/${name}: ${v.problems.length} of ${v.checks} checks failed; first: ${v.problems[0]}`);
    } else {
      passed++;
      console.log(`ok xss/${name} ${v.figures} checks=${v.checks}`.trim());
    }
  }
  if (failedHard && [...views.values()].every((v) => v.checks > 0)) {
    failed++;
    console.log(`FAIL xss/run: ${failedHard}`);
  }
  stopDaemon();
  if (failed === 0 && !args.keep) {
    fs.rmSync(workDir, { recursive: true, force: true });
    fs.rmSync(logPath, { force: true });
  } else {
    console.log(`# demo dir kept: ${workDir} (log ${logPath})`);
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}
