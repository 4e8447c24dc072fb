#!/usr/bin/env node
// Stored-XSS attack in a real browser: every payload of xss-payloads.mjs, sent through
// every visitor-controlled field (pre-chat form, messages, page URL/title/referrer, user
// agent, rating comment, offline message), viewed in every view that shows the field: the
// operator console's visitor list, queue, chat panels (live and restored from a snapshot),
// typing indicator, rating line and inbox, the chat page inside the widget on the
// customer's page, the visitor and operator transcript JSON, and the visitor's HTML
// transcript download, each opened in the browser. Nothing may execute, no element may
// come from a payload, every field must read back literally, and no CSP violation may occur.
//
// The operator logs in first: the demo policy takes no chat while nobody is online.
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
const BATCH = 4; // the demo policy's max_chats_per_operator
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
        resolve({ status: res.statusCode, headers: res.headers, json, text });
      });
    });
    req.on('timeout', () => req.destroy(new Error('request timeout')));
    req.on('error', reject);
    if (data) req.write(data);
    req.end();
  });
}

/** A page-view call: the server allows 120 a minute per address, so wait out a 429. */
async function pageCall(p, body, headers) {
  const deadline = Date.now() + 70_000;
  for (;;) {
    const r = await call('POST', demo.visitor_url, p, body, headers);
    if (r.status !== 429 || Date.now() > deadline) return r;
    await sleep(1000);
  }
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
      // A frame whose document never came (a blocked javascript: URL) never answers.
      const v = await Promise.race([
        f.evaluate(() => (typeof window.__xss === 'undefined' ? null : String(window.__xss))),
        sleep(2000).then(() => null),
      ]);
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

/** Does some element under `container` show `want` as `spec` says (see FIELDS)? */
async function hasText(frame, container, spec, want) {
  return frame.evaluate(([c, s, w]) => {
    const root = document.querySelector(c);
    if (!root) return false;
    const fill = (t) => t.replace('%', () => w);
    return [...root.querySelectorAll(s.sel)].some((e) => {
      if (s.attr) return e.getAttribute(s.attr) === w;
      const text = e.textContent;
      if (s.has) return text.includes(fill(s.has));
      if (s.ends) return text.endsWith(fill(s.ends));
      if (s.rest) {
        const head = e.firstElementChild ? e.firstElementChild.textContent : null;
        return head !== null && text.startsWith(head) && text.slice(head.length) === fill(s.rest);
      }
      return text === w;
    });
  }, [container, typeof spec === 'string' ? { sel: spec } : spec, want]);
}

/** Elements inside the elements that show a field of these views (they hold text only). */
async function heldElements(frame, root, keys) {
  const sels = [...new Set(keys.flatMap((k) => shown(k).map((f) => (typeof f.shown[k] === 'string' ? f.shown[k] : f.shown[k].sel))))];
  return frame.evaluate(([r, ss]) => {
    const el = document.querySelector(r);
    if (!el) return [`(no ${r})`];
    return ss.flatMap((s) => [...el.querySelectorAll(s)].flatMap((e) => [...e.querySelectorAll('*')].map((x) => `${s} > ${x.tagName}`)));
  }, [root, sels]);
}

function shown(viewKey) {
  return FIELDS.filter((f) => f.shown[viewKey]);
}

/** The fields shown in a view that this chat's payload actually got into. */
function shownFor(c, viewKey) {
  return shown(viewKey).filter((f) => c.carried.has(f.field));
}

function fieldNames(keys) {
  return [...new Set(keys.flatMap((k) => shown(k).map((f) => f.field)))].join(',');
}

/** Run `fn` until it holds or `timeout` passes (its checks are then recorded by the caller). */
async function settle(fn, timeout = 10_000) {
  await until('settled', fn, timeout).catch(() => {});
}

function short(p) {
  return JSON.stringify(p.length > 40 ? `${p.slice(0, 40)}…` : p);
}

/* ---------- the attack ---------- */

async function main() {
  startDaemon();
  demo = await waitDemo();
  CA = fs.readFileSync(demo.ca_certificate);

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
    await attack(browser);
  } finally {
    await browser.close().catch(() => {});
  }
}

/** Every payload through every field: one visitor, one chat and one offline message each. */
async function plant() {
  const chats = [];
  for (const [i, [cls, p]] of PAYLOADS.entries()) {
    const carried = new Set();
    const refuse = async (r, what, fields) => {
      if (r.status >= 200 && r.status < 300) { fields.forEach((f) => carried.add(f.field)); return; }
      if (r.status !== 400) throw new Error(`payload ${i} (${cls}) ${short(p)}: ${what} answered ${r.status}: ${r.text.slice(0, 120)}`);
    };
    // The visitor arrives: the first page view carries the referrer, the user agent, and
    // for even payloads the page; odd payloads send their page in a later page view.
    const helloFields = FIELDS.filter((f) => f.hello || f.headers || (f.page && i % 2 === 0));
    const pageFields = FIELDS.filter((f) => f.page && i % 2 === 1);
    const hello = { url: 'https://shop.example/', title: 'Shop', referrer: '' };
    const headers = {};
    for (const f of helloFields) {
      if (f.hello) Object.assign(hello, f.hello(p));
      if (f.page) Object.assign(hello, f.page(p));
      if (f.headers) Object.assign(headers, f.headers(p));
    }
    let h = await pageCall('/api/v1/visitor/hello', hello, headers);
    await refuse(h, 'hello', helloFields);
    if (h.status === 400) h = await pageCall('/api/v1/visitor/hello', { url: 'https://shop.example/' }, {});
    if (h.status !== 200 || !h.json || !h.json.visitor_token) throw new Error(`payload ${i}: hello answered ${h.status}: ${h.text.slice(0, 120)}`);
    const visitorAuth = { Authorization: `Bearer ${h.json.visitor_token}` };
    if (pageFields.length) {
      const view = { url: 'https://shop.example/next', title: 'Next', referrer: '' };
      for (const f of pageFields) Object.assign(view, f.page(p));
      await refuse(await pageCall('/api/v1/visitor/pageview', view, visitorAuth), 'pageview', pageFields);
    }

    // The chat, tied to the visitor by the visitor token.
    const body = { name: `Visitor ${i}`, question: `Question ${i}` };
    const startFields = FIELDS.filter((f) => f.start);
    for (const f of startFields) Object.assign(body, f.start(p));
    const r = await call('POST', demo.visitor_url, '/api/v1/visitor/chats', body, visitorAuth);
    if (r.status !== 201) throw new Error(`payload ${i} (${cls}) ${short(p)}: chat start answered ${r.status}: ${r.text}`);
    startFields.forEach((f) => carried.add(f.field));
    const v = new Visitor(r.json.token);
    for (const f of FIELDS.filter((x) => x.send)) {
      try {
        await f.send(v, p);
        carried.add(f.field);
      } catch (e) {
        if (!/answered 400/.test(e.message)) throw e;
      }
    }

    // Leave-a-message, from the same visitor.
    const offline = { name: `Offline ${i}`, email: `offline${i}@xss.example`, message: `Message ${i}` };
    const offlineFields = FIELDS.filter((f) => f.offline);
    for (const f of offlineFields) Object.assign(offline, f.offline(p));
    const o = await call('POST', demo.visitor_url, '/api/v1/visitor/offline-message', offline, visitorAuth);
    await refuse(o, 'offline-message', offlineFields);

    const expect = {};
    for (const f of FIELDS) expect[f.field] = f.kept(p);
    chats.push({ i, cls, p, id: r.json.chat_id, token: r.json.token, v, expect, carried, offlineId: o.json && o.json.id });
  }
  return chats;
}

async function attack(browser) {
  // The operator logs in first: nobody online, no chat (the demo does not queue then).
  const opCtx = await newContext(browser, 'operator');
  const op = await opCtx.newPage();
  await op.goto(demo.operator_url, { waitUntil: 'load' });
  await op.getByLabel('Username').fill(String(demo.operator_user));
  await op.getByLabel('Password', { exact: true }).fill(String(demo.operator_password));
  await op.getByLabel('Authentication string').fill(String(demo.auth_string));
  await op.locator('#login-btn').click();
  await op.locator('#app-view').waitFor({ state: 'visible', timeout: 45_000 });
  await until('console live', async () => (await op.locator('#conn-state').textContent()) === 'Live');

  // 1. Plant the corpus.
  const chats = await plant();
  const N = chats.length;
  const classes = new Set(PAYLOADS.map(([c]) => c));
  check('corpus', N >= 50, `only ${N} payloads`);
  // How many payloads each field carried (the rating comment is known after the chats end).
  const corpusFigures = () => {
    const carriedBy = FIELDS.map((f) => [f.field, chats.filter((c) => c.carried.has(f.field)).length]);
    view('corpus').figures = `payloads=${N} classes=${classes.size} carried=${carriedBy.map(([f, n]) => `${f}:${n}`).join(',')}`;
    return carriedBy;
  };
  corpusFigures();

  // 2. The visitor list ("who's on"): every visitor with their page, referrer and browser.
  const listed = await op.evaluate(() => fetch('/api/v1/operator/visitors').then((r) => r.json()));
  const visitorOf = new Map((listed.visitors || []).filter((x) => x.chat_id !== undefined && x.chat_id !== null).map((x) => [x.chat_id, x.visitor_id]));
  const rowChecks = async (record) => {
    let all = true;
    for (const c of chats) {
      const vid = visitorOf.get(c.id);
      if (record) check('console-visitors', vid !== undefined, `payload ${c.i}: chat ${c.id} has no visitor on the list`);
      if (vid === undefined) { all = false; continue; }
      for (const key of ['visitors', 'visitorsAttr']) {
        for (const f of shownFor(c, key)) {
          const ok = await hasText(op.mainFrame(), `#visitors-body tr.visitor-row[data-visitor-id="${vid}"]`, f.shown[key], c.expect[f.field]);
          if (record) check('console-visitors', ok, `payload ${c.i} (${c.cls}) ${short(c.p)} in ${f.field} (${key}): not shown literally`);
          all &&= ok;
        }
      }
    }
    return all;
  };
  await settle(() => rowChecks(false));
  await rowChecks(true);
  const vTags = await foreignTags(op.mainFrame(), '#visitors-body', ['TR', 'TD', 'SPAN', 'BUTTON']);
  check('console-visitors', vTags.length === 0, `elements from payloads in the visitor list: ${vTags.slice(0, 5)}`);
  const vHeld = await heldElements(op.mainFrame(), '#visitors-body', ['visitors', 'visitorsAttr']);
  check('console-visitors', vHeld.length === 0, `elements inside field texts of the visitor list: ${vHeld.slice(0, 5)}`);
  view('console-visitors').figures = `visitors=${visitorOf.size} fields=${fieldNames(['visitors', 'visitorsAttr'])}`;
  await shot(op, 'xss-console-visitors.png');

  // 3. The waiting queue: every chat waits there with its name and question.
  await until(`${N} queued chats`, async () => (await op.locator('#queue-list .queue-item').count()) === N);
  for (const c of chats) {
    for (const f of shownFor(c, 'queue')) {
      const ok = await hasText(op.mainFrame(), `#queue-list .queue-item[data-chat-id="${c.id}"]`, f.shown.queue, c.expect[f.field]);
      check('console-queue', ok, `payload ${c.i} (${c.cls}) ${short(c.p)} in ${f.field}: not shown literally`);
    }
  }
  const qTags = await foreignTags(op.mainFrame(), '#queue-list', ['LI', 'SPAN', 'P', 'DIV', 'BUTTON']);
  check('console-queue', qTags.length === 0, `elements from payloads in the queue: ${qTags.slice(0, 5)}`);
  view('console-queue').figures = `chats=${N} fields=${fieldNames(['queue'])}`;

  // 4. The inbox: every offline message.
  await op.locator('#tab-inbox').click();
  const inboxChecks = async (record) => {
    let all = true;
    for (const c of chats) {
      for (const f of shownFor(c, 'inbox')) {
        const ok = await hasText(op.mainFrame(), `#inbox-list .inbox-item[data-message-id="${c.offlineId}"]`, f.shown.inbox, c.expect[f.field]);
        if (record) check('console-inbox', ok, `payload ${c.i} (${c.cls}) ${short(c.p)} in ${f.field}: not shown literally`);
        all &&= ok;
      }
    }
    return all;
  };
  await settle(() => inboxChecks(false));
  await inboxChecks(true);
  const iTags = await foreignTags(op.mainFrame(), '#inbox-list', ['LI', 'DIV', 'STRONG', 'SPAN', 'P', 'A', 'BUTTON']);
  check('console-inbox', iTags.length === 0, `elements from payloads in the inbox: ${iTags.slice(0, 5)}`);
  const iHeld = await heldElements(op.mainFrame(), '#inbox-list', ['inbox']);
  check('console-inbox', iHeld.length === 0, `elements inside field texts of the inbox: ${iHeld.slice(0, 5)}`);
  const hrefs = await op.evaluate(() => [...document.querySelectorAll('#inbox-list [href]')].map((e) => e.getAttribute('href')).filter((h) => !h.startsWith('mailto:')));
  check('console-inbox', hrefs.length === 0, `links that are not mailto: in the inbox: ${hrefs.slice(0, 3)}`);
  view('console-inbox').figures = `messages=${chats.filter((c) => c.offlineId !== undefined).length} fields=${fieldNames(['inbox'])}`;
  await shot(op, 'xss-console-inbox.png');
  await op.locator('#tab-work').click();

  // The panels' own controls (canned picker, transfer and wrap-up forms) include inputs and
  // selects: besides the tag list, no element may sit inside an element showing a field.
  const panelTags = ['SECTION', 'HEADER', 'DIV', 'H3', 'SPAN', 'P', 'OL', 'UL', 'LI', 'FORM', 'LABEL', 'TEXTAREA', 'INPUT',
    'SELECT', 'OPTGROUP', 'OPTION', 'BUTTON', 'TIME'];
  const panelKeys = ['panel', 'panelAuthor', 'panelMessage', 'typing', 'rating'];
  const panelChecks = async (viewName, batch) => {
    for (const c of batch) {
      const panel = `.chat-panel[data-chat-id="${c.id}"]`;
      const msgs = 1 + (c.carried.has('message') ? 1 : 0);
      await until(`panel of chat ${c.id} with its messages`, async () =>
        (await op.locator(`${panel} .msg.from-visitor`).count()) >= msgs, PER_CHAT).catch((e) => check(viewName, false, e.message));
      for (const key of ['panel', 'panelAuthor', 'panelMessage']) {
        for (const f of shownFor(c, key)) {
          const ok = await hasText(op.mainFrame(), panel, f.shown[key], c.expect[f.field]);
          check(viewName, ok, `payload ${c.i} (${c.cls}) ${short(c.p)} in ${f.field} (${key}): not shown literally`);
        }
      }
    }
    const tags = await foreignTags(op.mainFrame(), '#chat-panels', panelTags);
    check(viewName, tags.length === 0, `elements from payloads in the chat panels: ${tags.slice(0, 5)}`);
    const held = await heldElements(op.mainFrame(), '#chat-panels', panelKeys);
    check(viewName, held.length === 0, `elements inside field texts of the chat panels: ${held.slice(0, 5)}`);
  };

  const visCtx = await newContext(browser, 'visitor');
  const widget = await visCtx.newPage();
  const jsonCtx = await newContext(browser, 'transcript');
  const vjson = await jsonCtx.newPage();
  const vhtml = await jsonCtx.newPage();
  const ojson = await opCtx.newPage();
  const jsonTags = ['PRE', 'DIV', 'SPAN', 'LABEL', 'INPUT', 'BODY', 'HEAD', 'STYLE', 'META'];

  for (let b = 0; b < N; b += BATCH) {
    const batch = chats.slice(b, b + BATCH);
    // 5. Accept them: live chat panels.
    const statuses = await op.evaluate(async (ids) => Promise.all(ids.map((id) =>
      fetch(`/api/v1/operator/chats/${id}/accept`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' })
        .then((r) => r.status))), batch.map((c) => c.id));
    check('console-chat-panels', statuses.every((s) => s === 200), `accept answered ${statuses}`);
    await panelChecks('console-chat-panels', batch);
    if (b === 0) await shot(op, 'xss-console-panels.png');

    // 6. The typing indicator names the visitor.
    for (const c of batch) {
      await c.v.post('/api/v1/visitor/typing', { typing: true });
      for (const f of shownFor(c, 'typing')) {
        const want = `${c.expect[f.field]} is typing…`;
        const ok = await until('typing indicator', () => hasText(op.mainFrame(), `.chat-panel[data-chat-id="${c.id}"]`, f.shown.typing, want), 5000).catch(() => false);
        check('console-typing', ok, `payload ${c.i} (${c.cls}) ${short(c.p)} in ${f.field}: typing indicator not literal`);
      }
    }

    // 7. The console restored from a snapshot (reload).
    await op.reload({ waitUntil: 'load' });
    await until('console live after reload', async () => (await op.locator('#conn-state').textContent()) === 'Live');
    await panelChecks('console-snapshot', batch);

    // 8. The chat page, inside the widget on the customer's page (one page load per batch).
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
      const msgs = 1 + (c.carried.has('message') ? 1 : 0);
      await until(`chat page of chat ${c.id} with its transcript`, async () =>
        (await frame.locator('#messages .msg.from-visitor').count()) >= msgs, PER_CHAT).catch((e) => check('chat-page-widget', false, e.message));
      for (const f of shownFor(c, 'chat')) {
        const ok = await hasText(frame, '#messages', f.shown.chat, c.expect[f.field]);
        check('chat-page-widget', ok, `payload ${c.i} (${c.cls}) ${short(c.p)} in ${f.field}: not shown literally in the chat page`);
      }
      const tags = await foreignTags(frame, '#messages', ['LI', 'SPAN', 'P', 'TIME']);
      check('chat-page-widget', tags.length === 0, `elements from payload ${c.i} in the chat page: ${tags.slice(0, 5)}`);
      const flags = await xssFlags(widget);
      check('chat-page-widget', flags.length === 0, `payload ${c.i} executed: ${flags}`);
      if (c.i === 0) await shot(widget, 'xss-widget-chat.png');
    }

    // 9. The visitors leave and rate the chat: the rating line in the operator's panel.
    for (const c of batch) await c.v.post('/api/v1/visitor/end', {});
    await until('batch ended', async () => (await op.locator('.chat-panel.ended').count()) >= batch.length);
    for (const c of batch) {
      const rating = { rating: 1 + (c.i % 5) };
      const rateFields = FIELDS.filter((f) => f.rate);
      for (const f of rateFields) Object.assign(rating, f.rate(c.p));
      const r = await call('POST', demo.visitor_url, '/api/v1/visitor/rating', rating, { Authorization: `Bearer ${c.token}` });
      if (r.status === 204) rateFields.forEach((f) => c.carried.add(f.field));
      else check('console-rating', r.status === 400, `payload ${c.i}: rating answered ${r.status}: ${r.text.slice(0, 120)}`);
    }
    for (const c of batch) {
      const panel = `.chat-panel[data-chat-id="${c.id}"]`;
      if (!shownFor(c, 'rating').length) continue;
      await until(`rating line of chat ${c.id}`, async () => (await op.locator(`${panel} .rating-line:not([hidden])`).count()) > 0, PER_CHAT)
        .catch((e) => check('console-rating', false, e.message));
      for (const f of shownFor(c, 'rating')) {
        const ok = await hasText(op.mainFrame(), panel, f.shown.rating, c.expect[f.field]);
        check('console-rating', ok, `payload ${c.i} (${c.cls}) ${short(c.p)} in ${f.field}: rating line not literal`);
      }
    }
    const rTags = await foreignTags(op.mainFrame(), '#chat-panels', panelTags);
    check('console-rating', rTags.length === 0, `elements from payloads in the rated chat panels: ${rTags.slice(0, 5)}`);
    const rHeld = await heldElements(op.mainFrame(), '#chat-panels', panelKeys);
    check('console-rating', rHeld.length === 0, `elements inside field texts of the rated chat panels: ${rHeld.slice(0, 5)}`);
    if (b === 0) await shot(op, 'xss-console-rating.png');

    // 10. The transcripts, opened as documents in the browser.
    for (const c of batch) {
      await vjson.setExtraHTTPHeaders({ Authorization: `Bearer ${c.token}` });
      await checkJson('visitor-transcript-json', vjson, new URL('/api/v1/visitor/transcript', demo.visitor_url).href, c, 'json', jsonTags);
      await checkJson('operator-transcript-json', ojson, new URL(`/api/v1/operator/chats/${c.id}/transcript`, demo.operator_url).href, c, 'operatorJson', jsonTags);
      await checkHtml('visitor-transcript-html', vhtml, c);
    }

    // Done with this batch: the operator closes the panels.
    for (let k = 0; k < BATCH && (await op.locator('.chat-panel.ended .dismiss-btn').count()) > 0; k++) {
      await op.locator('.chat-panel.ended .dismiss-btn').first().click();
    }
  }
  for (const [f, n] of corpusFigures()) check('corpus', n >= 0.9 * N, `only ${n} of ${N} payloads got into ${f} (the rest refused with 400)`);
  view('console-chat-panels').figures = `chats=${N} fields=${fieldNames(['panel', 'panelAuthor', 'panelMessage'])}`;
  view('console-snapshot').figures = view('console-chat-panels').figures;
  view('console-typing').figures = `chats=${N} fields=${fieldNames(['typing'])}`;
  view('console-rating').figures = `chats=${N} rated=${chats.filter((c) => c.carried.has('rating_comment')).length} fields=${fieldNames(['rating'])}`;
  view('chat-page-widget').figures = `chats=${N} fields=${fieldNames(['chat'])}`;
  view('visitor-transcript-json').figures = `chats=${N} fields=${fieldNames(['json'])}`;
  view('operator-transcript-json').figures = `chats=${N} fields=${fieldNames(['json', 'operatorJson'])}`;
  view('visitor-transcript-html').figures = `chats=${N} fields=${fieldNames(['html'])}`;

  // 11. Nothing ran anywhere, and the CSP never had to stop anything.
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
    const obj = doc[first];
    if (obj && typeof obj === 'object' && !Array.isArray(obj)) return [obj[rest]];
    return events.filter((e) => e.kind === first).map((e) => e[rest]);
  };
  for (const f of FIELDS) {
    if (!c.carried.has(f.field)) continue;
    for (const k of [key, key === 'operatorJson' ? 'json' : null].filter(Boolean)) {
      if (!f.shown[k]) continue;
      const values = get(f.shown[k]);
      check(viewName, values.includes(c.expect[f.field]), `payload ${c.i} (${c.cls}) ${short(c.p)} in ${f.field}: ${JSON.stringify(values).slice(0, 80)}`);
    }
  }
  const flags = await xssFlags(page);
  check(viewName, flags.length === 0, `payload ${c.i} executed in the ${viewName} document: ${flags}`);
}

/** The HTML transcript download: an attachment the visitor opens in a browser. Its
 * headers are checked as served; the document is then shown with those headers less
 * Content-Disposition (which would make the browser save it instead). */
const HTML_TAGS = ['HTML', 'HEAD', 'META', 'TITLE', 'BODY', 'H1', 'P', 'OL', 'LI', 'STRONG'];
async function checkHtml(viewName, page, c) {
  const url = new URL('/api/v1/visitor/transcript.html', demo.visitor_url).href;
  const r = await call('GET', demo.visitor_url, url, undefined, { Authorization: `Bearer ${c.token}` });
  check(viewName, r.status === 200, `${url} answered ${r.status}`);
  const h = r.headers;
  check(viewName, /^text\/html\b/.test(h['content-type'] || ''), `content-type ${h['content-type']}`);
  check(viewName, /default-src 'none'/.test(h['content-security-policy'] || ''), `CSP ${h['content-security-policy']}`);
  check(viewName, /^attachment\b/.test(h['content-disposition'] || ''), `content-disposition ${h['content-disposition']}`);
  check(viewName, h['x-content-type-options'] === 'nosniff', `x-content-type-options ${h['x-content-type-options']}`);
  const headers = {};
  for (const [k, v] of Object.entries(h)) if (k !== 'content-disposition') headers[k] = Array.isArray(v) ? v.join(', ') : String(v);
  await page.route(url, (route) => route.fulfill({ status: r.status, headers, body: r.text }));
  try {
    await page.goto(url, { waitUntil: 'load' });
  } finally {
    await page.unroute(url);
  }
  const found = await page.evaluate((ok) => {
    const all = [...document.querySelectorAll('*')];
    return {
      tags: all.map((e) => e.tagName).filter((t) => !ok.includes(t)),
      attrs: all.flatMap((e) => [...e.attributes].map((a) => `${e.tagName}[${a.name}]`)).filter((a) => a !== 'HTML[lang]' && a !== 'META[charset]'),
    };
  }, HTML_TAGS);
  check(viewName, found.tags.length === 0, `elements from payload ${c.i} in the HTML transcript: ${found.tags.slice(0, 5)}`);
  check(viewName, found.attrs.length === 0, `attributes from payload ${c.i} in the HTML transcript: ${found.attrs.slice(0, 5)}`);
  for (const f of FIELDS) {
    if (!f.shown.html || !c.carried.has(f.field)) continue;
    const ok = await hasText(page.mainFrame(), 'body', f.shown.html, c.expect[f.field]);
    check(viewName, ok, `payload ${c.i} (${c.cls}) ${short(c.p)} in ${f.field}: not shown literally`);
  }
  const flags = await xssFlags(page);
  check(viewName, flags.length === 0, `payload ${c.i} executed in the HTML transcript: ${flags}`);
  if (c.i === 0) await shot(page, 'xss-transcript-html.png');
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
  const order = ['corpus', 'console-visitors', 'console-queue', 'console-inbox', 'console-chat-panels', 'console-snapshot',
    'console-typing', 'console-rating', 'chat-page-widget', 'visitor-transcript-json', 'operator-transcript-json',
    'visitor-transcript-html', 'no-execution', 'csp-clean'];
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
