#!/usr/bin/env node
// Real-browser end-to-end test: widget on a customer page, chat page in its iframe,
// operator console, two chats at once, hostile visitor strings, CSP.
// (The feature scenarios of issue 5 are in e2e.mjs, run by scripts/e2e-browser.)
//
// usage: node tests/browser/chat-flow.mjs --bin PATH_TO_palisade [--screenshots DIR] [--keep]
//
// Starts `palisade demo --dir <fresh temp dir>` itself, drives the system Chromium
// (/usr/bin/chromium) through playwright-core, and always stops the daemon at the end.
// Prints `ok <step>` per step, `FAIL <step>: why` on failure, then `N passed, M failed`.

import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const CHROMIUM = process.env.PALISADE_CHROMIUM || '/usr/bin/chromium';
const STEP_TIMEOUT = 20_000;   // one real condition (an event over the network)
const LOGIN_TIMEOUT = 45_000;  // argon2id on a busy 2-core machine
const DEMO_TIMEOUT = 60_000;   // demo.json must appear within this

/* ---------------- arguments ---------------- */

function parseArgs(argv) {
  const out = { bin: null, screenshots: 'target/screenshots', keep: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--bin') out.bin = argv[++i];
    else if (a.startsWith('--bin=')) out.bin = a.slice(6);
    else if (a === '--screenshots') out.screenshots = argv[++i];
    else if (a.startsWith('--screenshots=')) out.screenshots = a.slice(14);
    else if (a === '--keep') out.keep = true;
    else if (a === '-h' || a === '--help') {
      console.log('usage: node tests/browser/chat-flow.mjs --bin PATH_TO_palisade [--screenshots DIR] [--keep]');
      process.exit(0);
    } else {
      console.error(`unknown argument: ${a}`);
      process.exit(2);
    }
  }
  if (!out.bin) {
    console.error('usage: node tests/browser/chat-flow.mjs --bin PATH_TO_palisade [--screenshots DIR] [--keep]');
    process.exit(2);
  }
  out.bin = path.resolve(out.bin);
  out.screenshots = path.resolve(out.screenshots);
  return out;
}

const args = parseArgs(process.argv.slice(2));

/* ---------------- step bookkeeping ---------------- */

let passed = 0;
let failed = 0;

class StepFailed extends Error {}

function oneLine(err) {
  const text = err && err.message ? err.message : String(err);
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('='.repeat(5)))
    .slice(0, 4)
    .join(' | ');
}

async function step(name, fn) {
  try {
    await fn();
  } catch (err) {
    failed++;
    console.log(`FAIL ${name}: ${oneLine(err)}`);
    throw new StepFailed(name);
  }
  passed++;
  console.log(`ok ${name}`);
}

function assert(cond, why) {
  if (!cond) throw new Error(why);
}

/** Poll a condition until it holds (real condition, bounded time). */
async function until(what, fn, timeout = STEP_TIMEOUT) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}` +
        (last instanceof Error ? ` (last error: ${oneLine(last)})` : ''));
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Wait until `locator` is visible and its text matches `re`; on timeout say what it showed. */
async function waitText(locator, re, what, timeout = STEP_TIMEOUT) {
  try {
    await locator.filter({ hasText: re }).first().waitFor({ state: 'visible', timeout });
  } catch (err) {
    let got;
    try {
      got = JSON.stringify((await locator.first().textContent({ timeout: 1000 })) ?? '');
    } catch {
      got = '(element not found)';
    }
    throw new Error(`${what}: expected text ${re}, got ${got}`);
  }
}

async function waitVisible(locator, what, timeout = STEP_TIMEOUT) {
  try {
    await locator.first().waitFor({ state: 'visible', timeout });
  } catch {
    throw new Error(`${what}: not visible within ${timeout} ms`);
  }
}

/* ---------------- the daemon ---------------- */

let daemon = null;       // ChildProcess of `palisade demo`
let daemonExited = null; // { code, signal } once it ended
let demo = null;         // parsed demo.json
let workDir = null;
let logPath = null;

function startDaemon() {
  assert(fs.existsSync(args.bin), `binary not found: ${args.bin}`);
  workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'palisade-browser-'));
  logPath = `${workDir}.log`;
  const log = fs.openSync(logPath, 'w', 0o600);
  daemon = spawn(args.bin, ['demo', '--dir', workDir], {
    stdio: ['ignore', log, log],
    detached: true, // own process group, so everything it starts is stopped with it
    env: { ...process.env, RUST_BACKTRACE: '1' },
  });
  fs.closeSync(log);
  daemon.on('exit', (code, signal) => {
    daemonExited = { code, signal };
  });
  daemon.on('error', (err) => {
    daemonExited = { code: null, signal: null, error: err.message };
  });
}

async function waitForDemoJson() {
  const file = path.join(workDir, 'demo.json');
  const deadline = Date.now() + DEMO_TIMEOUT;
  let lastErr = 'not written yet';
  for (;;) {
    if (daemonExited) {
      throw new Error(`palisade demo exited early (${JSON.stringify(daemonExited)}); log: ${logTail(8)}`);
    }
    try {
      const text = fs.readFileSync(file, 'utf8');
      const parsed = JSON.parse(text);
      const need = ['visitor_url', 'operator_url', 'demo_page_url', 'operator_user', 'operator_password',
        'auth_string', 'visitor_pin', 'operator_pin', 'config', 'policy_dir', 'state_dir', 'pid'];
      const missing = need.filter((k) => parsed[k] === undefined || parsed[k] === null || parsed[k] === '');
      if (missing.length === 0) return parsed;
      lastErr = `missing keys: ${missing.join(', ')}`;
    } catch (e) {
      lastErr = e.code === 'ENOENT' ? 'not written yet' : e.message;
    }
    if (Date.now() > deadline) {
      throw new Error(`demo.json not ready within ${DEMO_TIMEOUT / 1000} s (${lastErr}); log: ${logTail(8)}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

function logTail(n) {
  try {
    const lines = fs.readFileSync(logPath, 'utf8').trim().split('\n');
    return lines.slice(-n).join(' / ');
  } catch {
    return '(no log)';
  }
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function signalDaemon(sig) {
  if (daemon && daemon.pid && !daemonExited) {
    try { process.kill(-daemon.pid, sig); } catch { /* group already gone */ }
    try { process.kill(daemon.pid, sig); } catch { /* already gone */ }
  }
  // demo.json's pid: the serving process, if the demo command started a separate one.
  const pid = demo && Number.isInteger(demo.pid) ? demo.pid : null;
  if (pid && pid > 1 && (!daemon || pid !== daemon.pid) && alive(pid)) {
    try { process.kill(pid, sig); } catch { /* gone */ }
  }
}

async function stopDaemon() {
  signalDaemon('SIGTERM');
  const deadline = Date.now() + 10_000;
  const pid = demo && Number.isInteger(demo.pid) ? demo.pid : null;
  while (Date.now() < deadline) {
    const mainGone = !daemon || daemonExited;
    const pidGone = !pid || !alive(pid);
    if (mainGone && pidGone) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  signalDaemon('SIGKILL');
}

// Never leave the daemon running, whatever happens.
process.on('exit', () => signalDaemon('SIGKILL'));
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    signalDaemon('SIGKILL');
    process.exit(130);
  });
}

/* ---------------- browser bookkeeping ---------------- */

const violations = [];   // CSP violations reported from any frame of any page
const pageErrors = [];   // uncaught exceptions
const consoleErrors = []; // console.error / failed loads, filtered below

// Network failures the flow provokes on purpose (Chromium logs them as console errors).
function expectedConsoleError(text, url) {
  const status = /status of (\d{3})/.exec(text);
  if (!status) return false;
  const code = Number(status[1]);
  if (code === 401 && /\/api\/v1\/operator\/(me|login)$/.test(url || '')) return true; // not signed in / wrong secret
  if (/\/favicon\.ico$/.test(url || '')) return true; // the browser's own request, not the page's
  return false;
}

async function newContext(browser, label, viewport) {
  const ctx = await browser.newContext({ viewport, locale: 'en-US', serviceWorkers: 'block' });
  ctx.setDefaultTimeout(STEP_TIMEOUT);
  await ctx.exposeBinding('__palisadeReportViolation', (source, v) => {
    violations.push({ context: label, frame: source.frame ? source.frame.url() : '?', ...v });
  });
  await ctx.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      const v = {
        directive: e.violatedDirective || e.effectiveDirective,
        blocked: e.blockedURI,
        source: e.sourceFile,
        line: e.lineNumber,
        sample: e.sample,
        page: location.href,
      };
      try { window.__palisadeReportViolation(v); } catch { /* binding not ready */ }
      (window.__cspViolations = window.__cspViolations || []).push(v);
    });
  });
  ctx.on('page', (page) => watchPage(page, label));
  return ctx;
}

function watchPage(page, label) {
  page.on('pageerror', (err) => pageErrors.push(`${label}: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const text = msg.text();
    const url = (msg.location() && msg.location().url) || '';
    if (/Content[- ]Security[- ]Policy|Refused to (load|execute|apply|frame|connect)/i.test(text)) {
      violations.push({ context: label, console: text, url });
      return;
    }
    if (!expectedConsoleError(text, url)) consoleErrors.push(`${label}: ${text}${url ? ` (${url})` : ''}`);
  });
}

/** window.__xss and CSP arrays in every frame of a page */
async function frameChecks(page) {
  const out = [];
  for (const f of page.frames()) {
    try {
      const r = await f.evaluate(() => ({
        xss: typeof window.__xss === 'undefined' ? null : String(window.__xss),
        csp: (window.__cspViolations || []).length,
      }));
      out.push({ url: f.url(), ...r });
    } catch (e) {
      out.push({ url: f.url(), error: e.message });
    }
  }
  return out;
}

async function chatFrame(page) {
  const handle = await page.waitForSelector('#palisade-chat-frame', { state: 'attached' });
  const frame = await handle.contentFrame();
  assert(frame, 'chat iframe has no frame');
  return frame;
}

/* ---------------- the flow ---------------- */

const V1 = 'Alice Example';
const Q1 = 'Do you ship the Widget Pro XL to Norway?';
const V2 = '<img src=x onerror="window.__xss=1">';
const Q2 = '<script>window.__xss=2</script>Can I pay by invoice?';
const V2_MSG = '<b>bold</b><img src=x onerror="window.__xss=3"> & "quotes"';
const MSG1 = 'Hello, is the XL waterproof?';
const REPLY1 = 'Hi Alice! Yes, the XL is rated IP67.';

let browser = null;

async function main() {
  fs.mkdirSync(args.screenshots, { recursive: true });

  await step('daemon demo starts and writes demo.json', async () => {
    startDaemon();
    demo = await waitForDemoJson();
    for (const k of ['visitor_pin', 'operator_pin']) {
      assert(/^sha256\/[A-Za-z0-9+/]+=*$/.test(demo[k]), `${k} is not sha256/BASE64: ${demo[k]}`);
    }
  });

  const pins = [...new Set([demo.visitor_pin, demo.operator_pin].map((p) => p.replace(/^sha256\//, '')))];

  await step('chromium launches', async () => {
    assert(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing (apt-get install chromium)`);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      timeout: 60_000,
      args: [
        '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
        `--ignore-certificate-errors-spki-list=${pins.join(',')}`,
      ],
    });
  });

  const opCtx = await newContext(browser, 'operator', { width: 1440, height: 900 });
  const op = await opCtx.newPage();

  // An operator is online first: with nobody online the widget offers "leave a message".
  await step('operator logs in with username, password and authentication string', async () => {
    const res = await op.goto(demo.operator_url, { waitUntil: 'load' });
    assert(res && res.ok(), `console answered ${res && res.status()}`);
    await waitVisible(op.locator('#login-form'), 'login form');
    await op.getByLabel('Username').fill(String(demo.operator_user));
    await op.getByLabel('Password', { exact: true }).fill(String(demo.operator_password));
    await op.getByLabel('Authentication string').fill(String(demo.auth_string));
    await op.locator('#login-btn').click();
    await waitVisible(op.locator('#app-view'), 'console after login', LOGIN_TIMEOUT);
    await waitText(op.locator('#conn-state'), /Live/, 'event stream state');
  });

  const visitorCtx = await newContext(browser, 'visitor1', { width: 1280, height: 800 });
  const v1 = await visitorCtx.newPage();
  let chat1; // Frame of visitor 1's chat iframe

  await step('visitor opens the demo page and sees the chat button', async () => {
    const res = await v1.goto(demo.demo_page_url, { waitUntil: 'load' });
    assert(res && res.ok(), `demo page answered ${res && res.status()}`);
    await waitVisible(v1.locator('#palisade-chat-button'), '#palisade-chat-button');
  });

  await step('widget creates the chat iframe hidden at page load', async () => {
    const frame = v1.locator('#palisade-chat-frame');
    await frame.waitFor({ state: 'attached' });
    assert(await frame.isHidden(), 'the chat iframe is visible before the button was clicked');
    await waitText(v1.locator('#palisade-chat-button'), /^Chat with us$/, 'button text with an operator online');
  });

  await step('widget opens the chat iframe with the pre-chat form', async () => {
    await v1.locator('#palisade-chat-button').click();
    await waitVisible(v1.locator('#palisade-chat-frame'), 'iframe #palisade-chat-frame');
    const title = await v1.locator('#palisade-chat-frame').getAttribute('title');
    assert(title === 'Live chat', `iframe title is ${JSON.stringify(title)}`);
    const src = await v1.locator('#palisade-chat-frame').getAttribute('src');
    assert(src === new URL('/chat', demo.visitor_url).href, `iframe src ${src} is not ${new URL('/chat', demo.visitor_url).href}`);
    chat1 = await chatFrame(v1);
    await waitVisible(chat1.locator('#prechat-form'), 'pre-chat form in the iframe');
  });

  await step('visitor submits the pre-chat form and waits in the queue', async () => {
    await chat1.locator('#f-name').fill(V1);
    await chat1.locator('#f-question').fill(Q1);
    await chat1.locator('#start-btn').click();
    await waitText(chat1.locator('#chat-status'), /Waiting for an operator/, 'visitor status');
    await waitText(chat1.locator('#chat-status'), /you are number \d+ in the queue/, 'visitor queue position');
  });

  const q1 = op.locator('#queue-list .queue-item', { hasText: V1 });

  await step('operator sees the waiting chat in the queue', async () => {
    await waitVisible(q1, `queue entry for ${V1}`);
    await waitText(q1.locator('.queue-question'), new RegExp(escapeRe(Q1)), 'queued question');
    await waitText(q1.locator('.queue-wait'), /waiting \d+/, 'waiting time');
  });

  const panel1 = op.locator('.chat-panel', { has: op.locator('.chat-name', { hasText: V1 }) });

  await step('operator accepts the chat', async () => {
    await q1.locator('.accept-btn').click();
    await waitVisible(panel1, `chat panel for ${V1}`);
    await waitText(panel1.locator('.state'), /Active/, 'panel state');
    await until(`queue entry for ${V1} to disappear`, async () => (await q1.count()) === 0);
  });

  await step('visitor sees "You are chatting with <operator>"', async () => {
    await waitText(chat1.locator('#chat-status'), /You are chatting with \S/, 'visitor status');
  });

  await step('visitor typing shows in the console', async () => {
    await chat1.locator('#msg-input').pressSequentially(MSG1, { delay: 15 });
    await waitText(panel1.locator('.typing'), new RegExp(`${escapeRe(V1)} is typing`), 'console typing indicator');
  });

  await step('visitor message (Enter) reaches the operator exactly once', async () => {
    await chat1.locator('#msg-input').press('Enter');
    const inConsole = panel1.locator('.msg.from-visitor .msg-text', { hasText: MSG1 });
    await waitVisible(inConsole, 'visitor message in the console');
    await until('visitor message shown once in the console', async () => (await inConsole.count()) === 1);
    await until('visitor message shown once, delivered, in the chat page', async () =>
      (await chat1.locator('.msg.from-visitor:not(.pending):not(.failed) .msg-text', { hasText: MSG1 }).count()) === 1 &&
      (await chat1.locator('.msg.from-visitor .msg-text', { hasText: MSG1 }).count()) === 1);
  });

  await step('operator typing shows in the chat page', async () => {
    await panel1.locator('textarea.msg-input').pressSequentially(REPLY1, { delay: 15 });
    await waitText(chat1.locator('#typing'), /is typing/, 'visitor typing indicator');
  });

  await step('operator reply reaches the visitor exactly once', async () => {
    await panel1.locator('.send-btn').click();
    const inChat = chat1.locator('.msg.from-operator .msg-text', { hasText: REPLY1 });
    await waitVisible(inChat, 'operator reply in the chat page');
    await until('reply shown once in the chat page', async () => (await inChat.count()) === 1);
    await until('reply shown once, delivered, in the console', async () =>
      (await panel1.locator('.msg.from-operator .msg-text', { hasText: REPLY1 }).count()) === 1 &&
      (await panel1.locator('.msg.from-operator.pending, .msg.failed').count()) === 0);
  });

  await step('screenshot of the demo page with the open widget', async () => {
    await v1.screenshot({ path: path.join(args.screenshots, 'demo-page-widget.png') });
  });

  await step('chat page survives a reload (sessionStorage token, transcript, no duplicates)', async () => {
    const res = await chat1.goto(new URL('/chat', demo.visitor_url).href, { waitUntil: 'load' });
    assert(res && res.ok(), `chat page reload answered ${res && res.status()}`);
    chat1 = await chatFrame(v1);
    await waitText(chat1.locator('#chat-status'), /You are chatting with \S/, 'status after reload');
    await waitVisible(chat1.locator('.msg.from-operator .msg-text', { hasText: REPLY1 }), 'reply after reload');
    await until('each message exactly once after reload', async () =>
      (await chat1.locator('.msg-text', { hasText: MSG1 }).count()) === 1 &&
      (await chat1.locator('.msg-text', { hasText: REPLY1 }).count()) === 1 &&
      (await chat1.locator('.msg-text', { hasText: Q1 }).count()) <= 1);
  });

  // a second visitor, with markup in every field
  const v2Ctx = await newContext(browser, 'visitor2', { width: 1280, height: 800 });
  const v2 = await v2Ctx.newPage();
  let chat2;

  await step('second visitor (hostile name) starts a chat', async () => {
    const res = await v2.goto(demo.demo_page_url, { waitUntil: 'load' });
    assert(res && res.ok(), `demo page answered ${res && res.status()}`);
    await v2.locator('#palisade-chat-button').click();
    chat2 = await chatFrame(v2);
    await waitVisible(chat2.locator('#prechat-form'), 'pre-chat form');
    await chat2.locator('#f-name').fill(V2);
    await chat2.locator('#f-question').fill(Q2);
    await chat2.locator('#start-btn').click();
    await waitText(chat2.locator('#chat-status'), /you are number \d+ in the queue/, 'second visitor queue position');
  });

  await step('widget button shows the online state (postMessage, exact origin)', async () => {
    await waitText(v2.locator('#palisade-chat-button'), /^Chat with us$/, 'button text with an operator online');
  });

  const q2 = op.locator('#queue-list .queue-item', { hasText: V2 });
  const panel2 = op.locator('.chat-panel', { has: op.locator('.chat-name', { hasText: V2 }) });

  await step('operator accepts the second chat: two chats at once', async () => {
    await waitVisible(q2, 'queue entry for the second visitor');
    await q2.locator('.accept-btn').click();
    await waitVisible(panel2, 'second chat panel');
    await until('two active chat panels', async () =>
      (await op.locator('.chat-panel').count()) === 2 &&
      (await op.locator('.chat-panel .state', { hasText: 'Active' }).count()) === 2);
    await waitText(chat2.locator('#chat-status'), /You are chatting with \S/, 'second visitor status');
  });

  await step('hostile visitor strings are shown as literal text, never executed', async () => {
    await chat2.locator('#msg-input').fill(V2_MSG);
    await chat2.locator('#send-btn').click();
    const msg = panel2.locator('.msg.from-visitor .msg-text', { hasText: 'bold' });
    await waitVisible(msg, 'hostile message in the console');
    const name = await panel2.locator('.chat-name').textContent();
    assert(name === V2, `panel name is ${JSON.stringify(name)}, expected the literal ${JSON.stringify(V2)}`);
    const q = await panel2.locator('.chat-question').textContent();
    assert(q === Q2, `panel question is ${JSON.stringify(q)}, expected the literal ${JSON.stringify(Q2)}`);
    const text = await msg.first().textContent();
    assert(text === V2_MSG, `message is ${JSON.stringify(text)}, expected the literal ${JSON.stringify(V2_MSG)}`);
    const started = await panel2.locator('.msg.from-visitor .msg-author').first().textContent();
    assert(started === V2, `author shown as ${JSON.stringify(started)}`);
    const imgs = await op.locator('img:not(#enrol-qr), script:not([src]), b').count();
    assert(imgs === 0, `${imgs} element(s) from visitor markup exist in the console`);
    const chatImgs = await chat2.locator('#messages img, #messages b').count();
    assert(chatImgs === 0, `${chatImgs} element(s) from visitor markup exist in the chat page`);
    for (const [label, page] of [['console', op], ['visitor1', v1], ['visitor2', v2]]) {
      for (const f of await frameChecks(page)) {
        assert(!f.error, `${label} frame ${f.url}: ${f.error}`);
        assert(f.xss === null, `window.__xss = ${f.xss} in ${label} frame ${f.url}`);
      }
    }
  });

  await step('screenshot of the console with two chats', async () => {
    await op.screenshot({ path: path.join(args.screenshots, 'console-two-chats.png') });
  });

  await step('a wrong authentication string shows "Invalid credentials"', async () => {
    const badCtx = await newContext(browser, 'intruder', { width: 1280, height: 800 });
    try {
      const bad = await badCtx.newPage();
      await bad.goto(demo.operator_url, { waitUntil: 'load' });
      await waitVisible(bad.locator('#login-form'), 'login form');
      await bad.getByLabel('Username').fill(String(demo.operator_user));
      await bad.getByLabel('Password', { exact: true }).fill(String(demo.operator_password));
      await bad.getByLabel('Authentication string').fill(`wrong-${demo.auth_string}`);
      await bad.locator('#login-btn').click();
      await waitText(bad.locator('#login-error'), /^Invalid credentials$/, 'login error', LOGIN_TIMEOUT);
      assert(await bad.locator('#app-view').isHidden(), 'console shown after a failed login');
    } finally {
      await badCtx.close();
    }
  });

  await step('operator ends the first chat; the visitor sees "Chat ended"', async () => {
    await panel1.locator('.end-btn').click();
    await waitText(panel1.locator('.state'), /Ended/, 'panel state');
    await waitVisible(chat1.locator('#ended-box'), 'ended box in the chat page');
    await waitText(chat1.locator('#chat-status'), /Chat ended/, 'visitor status');
    assert(await chat1.locator('#compose').isHidden(), 'composer still shown after the chat ended');
    // the other chat is unaffected
    await waitText(panel2.locator('.state'), /Active/, 'second chat state');
  });

  await step('visitor ends the second chat; the console shows it ended', async () => {
    await chat2.locator('#end-btn').click();
    await waitVisible(chat2.locator('#ended-box'), 'ended box for the second visitor');
    await waitText(panel2.locator('.state'), /Ended/, 'second panel state');
    await waitVisible(panel2.locator('.msg.system', { hasText: 'The visitor ended the chat' }), 'ended notice in the console');
  });

  await step('operator logs out', async () => {
    await op.locator('#logout-btn').click();
    await waitVisible(op.locator('#login-form'), 'login form after logout');
    const r = await op.evaluate(async () => (await fetch('/api/v1/operator/me', { cache: 'no-store' })).status);
    assert(r === 401, `GET /api/v1/operator/me after logout answered ${r}, expected 401`);
  });

  await step('no CSP violation, no script error, no unexpected console error', async () => {
    for (const [label, page] of [['console', op], ['visitor1', v1], ['visitor2', v2]]) {
      for (const f of await frameChecks(page)) {
        assert(f.xss === null, `window.__xss = ${f.xss} in ${label} frame ${f.url}`);
        assert(!f.csp, `${f.csp} CSP violation(s) recorded in ${label} frame ${f.url}`);
      }
    }
    assert(violations.length === 0, `CSP violations: ${JSON.stringify(violations)}`);
    assert(pageErrors.length === 0, `script errors: ${pageErrors.join(' ; ')}`);
    assert(consoleErrors.length === 0, `console errors: ${consoleErrors.join(' ; ')}`);
  });
}

function escapeRe(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

async function failureArtefacts() {
  if (!browser) return;
  try {
    let i = 0;
    for (const ctx of browser.contexts()) {
      for (const page of ctx.pages()) {
        i++;
        await page.screenshot({ path: path.join(args.screenshots, `failure-${i}.png`), timeout: 5000 }).catch(() => {});
      }
    }
    if (i) console.log(`# failure screenshots in ${args.screenshots}/failure-*.png`);
  } catch { /* best effort */ }
}

let exitCode = 0;
try {
  await main();
} catch (err) {
  if (!(err instanceof StepFailed)) {
    failed++;
    console.log(`FAIL unexpected error: ${oneLine(err)}`);
  }
  exitCode = 1;
  await failureArtefacts();
  if (violations.length) console.log(`# CSP violations: ${JSON.stringify(violations)}`);
  if (pageErrors.length) console.log(`# script errors: ${pageErrors.join(' ; ')}`);
  if (consoleErrors.length) console.log(`# console errors: ${consoleErrors.join(' ; ')}`);
  if (logPath) console.log(`# daemon log (${logPath}), last lines: ${logTail(15)}`);
} finally {
  if (browser) await browser.close().catch(() => {});
  await stopDaemon();
  if (workDir && exitCode === 0 && !args.keep) {
    fs.rmSync(workDir, { recursive: true, force: true });
    fs.rmSync(logPath, { force: true });
  } else if (workDir) {
    console.log(`# demo dir kept: ${workDir}`);
  }
}
if (failed > 0) exitCode = 1;
console.log(`${passed} passed, ${failed} failed`);
process.exit(exitCode);
