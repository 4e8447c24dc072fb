#!/usr/bin/env node
// Real-browser end-to-end scenarios of the everyday live-chat features: the widget on a
// customer page (visitors, each in its own browser context) and the operator console
// (each operator in its own context), driven through headless Chromium.
//
// usage: node tests/browser/e2e.mjs --bin PATH_TO_palisade [--screenshots DIR] [--docs DIR | --no-docs]
//                                    [--only a,b] [--keep]
//
// Every scenario gets a fresh `palisade demo` (its own policy, operators and database) and
// a fresh browser, so one failure does not cascade. Prints `ok <scenario>` or
// `FAIL <scenario>: why` per scenario, then `N passed, M failed`; exits non-zero on a FAIL.
// Screenshots go to --screenshots (default target/screenshots); the best console and widget
// pictures are copied to --docs (default docs/screenshots) as console.png and widget.png
// (not with --no-docs); --keep keeps every demo directory; --only runs the named scenarios.

import fs from 'node:fs';
import path from 'node:path';
import {
  Demo, Watch, launchBrowser, assert, oneLine, escapeRe, until, waitText, waitVisible, waitHidden,
  assertNoXss, totpAt, totpStep, STEP_TIMEOUT, LOGIN_TIMEOUT,
} from './lib.mjs';

const SCENARIO_TIMEOUT = 180_000;
const UPDATE_BUDGET_MS = 2_000; // "the console shows it within 2 seconds"

/* ---------------- arguments ---------------- */

function parseArgs(argv) {
  const out = { bin: null, screenshots: 'target/screenshots', docs: 'docs/screenshots', only: null, keep: false };
  const usage = 'usage: node tests/browser/e2e.mjs --bin PATH_TO_palisade [--screenshots DIR] [--docs DIR | --no-docs] [--only a,b] [--keep]';
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = (name) => (a.includes('=') ? a.slice(a.indexOf('=') + 1) : argv[++i]);
    if (a === '--bin' || a.startsWith('--bin=')) out.bin = val();
    else if (a === '--screenshots' || a.startsWith('--screenshots=')) out.screenshots = val();
    else if (a === '--docs' || a.startsWith('--docs=')) out.docs = val();
    else if (a === '--no-docs') out.docs = null;
    else if (a === '--only' || a.startsWith('--only=')) out.only = val().split(',').map((s) => s.trim()).filter(Boolean);
    else if (a === '--keep') out.keep = true;
    else if (a === '-h' || a === '--help') {
      console.log(usage);
      process.exit(0);
    } else {
      console.error(`unknown argument: ${a}\n${usage}`);
      process.exit(2);
    }
  }
  if (!out.bin) {
    console.error(usage);
    process.exit(2);
  }
  out.bin = path.resolve(out.bin);
  out.screenshots = path.resolve(out.screenshots);
  if (out.docs) out.docs = path.resolve(out.docs);
  return out;
}

const args = parseArgs(process.argv.slice(2));
fs.mkdirSync(args.screenshots, { recursive: true });

const exact = (s) => new RegExp(`^\\s*${escapeRe(s)}\\s*$`);

/* ---------------- a visitor: the demo page with the widget ---------------- */

class Visitor {
  constructor(t, label, page) {
    this.t = t;
    this.label = label;
    this.page = page;
  }

  get button() { return this.page.locator('#palisade-chat-button'); }
  get iframe() { return this.page.locator('#palisade-chat-frame'); }

  /** The chat page inside the iframe (fetched anew: it may have reloaded). */
  async frame() {
    const handle = await this.page.waitForSelector('#palisade-chat-frame', { state: 'attached' });
    const f = await handle.contentFrame();
    assert(f, 'chat iframe has no frame');
    await f.waitForSelector('#view-loading', { state: 'hidden', timeout: STEP_TIMEOUT });
    return f;
  }

  async navigate(pathname, title) {
    await this.page.evaluate(([p, tt]) => {
      if (tt !== null) document.title = tt;
      history.pushState({}, '', p);
    }, [pathname, title === undefined ? null : title]);
  }

  async open() {
    if (!(await this.iframe.isVisible())) await this.button.click();
    await waitVisible(this.iframe, `${this.label}: chat panel`);
    return this.frame();
  }

  async minimise() {
    const f = await this.frame();
    await f.locator('#close-btn').click();
    await waitHidden(this.iframe, `${this.label}: chat panel after minimising`);
  }

  async fillPrechat({ name, question, email, department }) {
    const f = await this.open();
    await waitVisible(f.locator('#prechat-form'), `${this.label}: pre-chat form`);
    if (name !== undefined) await f.locator('#f-name').fill(name);
    if (email !== undefined) await f.locator('#f-email').fill(email);
    if (department !== undefined) await f.locator('#f-department').selectOption(department);
    if (question !== undefined) await f.locator('#f-question').fill(question);
    return f;
  }

  /** Fill the pre-chat form and start; resolves once the conversation view shows. */
  async startChat(fields) {
    const f = await this.fillPrechat(fields);
    await f.locator('#start-btn').click();
    await waitVisible(f.locator('#view-chat'), `${this.label}: conversation after starting`);
    return f;
  }

  async say(text) {
    const f = await this.frame();
    await f.locator('#msg-input').fill(text);
    await f.locator('#msg-input').press('Enter');
    await until(`${this.label}: "${text}" sent`, async () =>
      (await f.locator('.msg.from-visitor[data-id] .msg-text', { hasText: text }).count()) === 1);
  }

  async status(re, what = 'chat status') {
    const f = await this.frame();
    await waitText(f.locator('#chat-status'), re, `${this.label}: ${what}`);
  }

  async sees(text, what) {
    const f = await this.frame();
    await waitVisible(f.locator('#messages .msg', { hasText: text }), `${this.label}: ${what || JSON.stringify(text)}`);
  }

  async chatToken() {
    const f = await this.frame();
    return f.evaluate(() => JSON.parse(sessionStorage.getItem('palisade.visitor.chat') || 'null'));
  }
}

/* ---------------- an operator: the console ---------------- */

class Console {
  constructor(t, label, page, creds) {
    this.t = t;
    this.label = label;
    this.page = page;
    this.creds = creds;
  }

  queueItem(name) {
    return this.page.locator('#queue-list .queue-item', { has: this.page.locator('.queue-name', { hasText: exact(name) }) });
  }

  panel(name) {
    return this.page.locator('#chat-panels .chat-panel', { has: this.page.locator('.chat-name', { hasText: exact(name) }) });
  }

  monitorPanel(name) {
    return this.page.locator('#monitor-panels .chat-panel', { has: this.page.locator('.chat-name', { hasText: exact(name) }) });
  }

  visitorRow(text) {
    return this.page.locator('#visitors-body tr.visitor-row', { hasText: text });
  }

  async tab(name) {
    await this.page.locator(`#tab-${name}`).click();
    await waitVisible(this.page.locator(`#view-${name}`), `${this.label}: ${name} view`);
  }

  async accept(name) {
    const q = this.queueItem(name);
    await waitVisible(q, `${this.label}: queue entry for ${name}`);
    await q.locator('.accept-btn').click();
    await waitVisible(this.panel(name), `${this.label}: chat panel for ${name}`);
    await waitText(this.panel(name).locator('.state'), /Active/, `${this.label}: panel state`);
  }

  async reply(name, text) {
    const p = this.panel(name);
    await p.locator('.msg-input').fill(text);
    await p.locator('.send-btn').click();
    await until(`${this.label}: reply "${text}" stored`, async () =>
      (await p.locator('.msg.from-operator[data-id] .msg-text', { hasText: text }).count()) === 1);
  }

  async setPresence(value) {
    await this.page.locator('#presence-select').selectOption(value);
    await until(`${this.label}: presence ${value}`, async () =>
      (await this.page.locator('#presence-dot').getAttribute('class')).includes(value) &&
      !(await this.page.locator('#presence-select').isDisabled()));
  }

  async api(method, url, body) {
    return this.page.evaluate(async ([m, u, b]) => {
      const init = { method: m, headers: { Accept: 'application/json' }, credentials: 'same-origin' };
      if (b !== null) {
        init.headers['Content-Type'] = 'application/json';
        init.body = JSON.stringify(b);
      }
      const r = await fetch(u, init);
      let data = null;
      try { data = await r.json(); } catch { /* not JSON */ }
      return { status: r.status, data };
    }, [method, url, body === undefined ? null : body]);
  }
}

/* ---------------- one scenario's world ---------------- */

class World {
  constructor(name) {
    this.name = name;
    this.demo = new Demo(args.bin);
    this.watch = new Watch();
    this.browser = null;
    this.pages = [];
    this.info = null;
  }

  /** chat: chat.toml top-level keys; prechat: its [prechat] keys; accounts: accounts.toml keys. */
  async setup({ chat, prechat, accounts } = {}) {
    this.info = await this.demo.start();
    if (chat || prechat) this.demo.editPolicy('chat.toml', chat || {}, prechat ? { prechat } : {});
    if (accounts) this.demo.editPolicy('accounts.toml', accounts);
    if (chat || prechat || accounts) await this.demo.reload();
    this.browser = await launchBrowser([this.info.visitor_pin, this.info.operator_pin]);
    this.admin = {
      username: String(this.info.operator_user),
      password: String(this.info.operator_password),
      display: 'Demo Operator',
      role: 'admin',
    };
  }

  addOperator(username, opts) {
    return this.demo.addOperator(username, opts);
  }

  async visitor(label, { referer, path: p, title, userAgent } = {}) {
    const ctx = await this.watch.context(this.browser, label, { width: 1280, height: 800 }, userAgent ? { userAgent } : {});
    const page = await ctx.newPage();
    this.pages.push([label, page]);
    const res = await page.goto(this.info.demo_page_url, { waitUntil: 'load', referer });
    assert(res && res.ok(), `${label}: demo page answered ${res && res.status()}`);
    await waitVisible(page.locator('#palisade-chat-button'), `${label}: chat button`);
    const v = new Visitor(this, label, page);
    if (p) await v.navigate(p, title);
    return v;
  }

  async console(label, creds = this.admin, { totp, expectEnrol = false } = {}) {
    const ctx = await this.watch.context(this.browser, label, { width: 1440, height: 900 });
    const page = await ctx.newPage();
    this.pages.push([label, page]);
    const c = new Console(this, label, page, creds);
    await login(this, page, creds, { totp });
    if (expectEnrol) {
      await waitVisible(page.locator('#enrol-view'), `${label}: enrolment after login`, LOGIN_TIMEOUT);
    } else {
      await waitVisible(page.locator('#app-view'), `${label}: console after login`, LOGIN_TIMEOUT);
      await waitText(page.locator('#conn-state'), /Live/, `${label}: event stream`);
    }
    return c;
  }

  async shot(page, file) {
    await page.screenshot({ path: path.join(args.screenshots, file) });
  }

  async failureShots() {
    let i = 0;
    for (const [label, page] of this.pages) {
      i++;
      await page.screenshot({ path: path.join(args.screenshots, `failure-${this.name}-${i}-${label}.png`), timeout: 5000 }).catch(() => {});
    }
  }

  async close(failed) {
    if (this.browser) await this.browser.close().catch(() => {});
    await this.demo.stop({ keep: failed || args.keep });
  }
}

async function login(w, page, creds, { totp } = {}) {
  const res = await page.goto(w.info.operator_url, { waitUntil: 'load' });
  assert(res && res.ok(), `console answered ${res && res.status()}`);
  await waitVisible(page.locator('#login-form'), 'login form');
  await page.locator('#login-username').fill(creds.username);
  await page.locator('#login-password').fill(creds.password);
  await page.locator('#login-auth').fill(String(w.info.auth_string));
  await page.locator('#login-totp').fill(totp || '');
  await page.locator('#login-btn').click();
}

/* ---------------- the scenarios ---------------- */

async function liveVisitors(w) {
  await w.setup({ chat: { visitor_idle_secs: '10' } });
  const op = await w.console('console');
  const v1 = await w.visitor('visitor1', { referer: 'https://search.example/?q=widgets' });
  const EVIL_UA = '<img src=x onerror="window.__xss=20">EvilBot/1.0';
  const v2 = await w.visitor('visitor2', { userAgent: EVIL_UA });
  const rows = op.page.locator('#visitors-body tr.visitor-row');
  await until('two visitors on the live list', async () => (await rows.count()) === 2);
  const row1 = op.visitorRow('search.example');
  await waitVisible(row1, 'the row of the visitor who came from search.example');
  await waitText(row1.locator('.v-title'), /Acme Widgets/, 'current page title');
  await waitText(row1.locator('.v-pages'), /^1$/, 'pages viewed');
  // visitor.toml keeps a truncated address by default (IPv4 /24)
  await waitText(row1.locator('.v-ip'), /^127\.0\.0\.0\/24$/, 'the minimised address');
  await waitText(row1.locator('.v-ua'), /Chrome \d+/, 'browser of the visitor');

  // the visitor token survives a reload (localStorage): same visitor, one more page view
  const row2 = op.page.locator('#visitors-body tr.visitor-row').filter({ hasNotText: 'search.example' });
  await waitText(row2.locator('.v-pages'), /^1$/, 'pages viewed by visitor 2');
  assert((await row2.locator('.v-ua').getAttribute('title')) === EVIL_UA, 'user agent not kept literally');
  await v2.page.reload({ waitUntil: 'load' });
  await waitText(row2.locator('.v-pages'), /^2$/, 'pages viewed by visitor 2 after a reload');
  assert((await rows.count()) === 2, 'a reload made a new visitor');

  // history navigation on the customer's page: the console follows within 2 seconds
  const t0 = Date.now();
  await v1.navigate('/products/pro-xl?from=nav', 'Widget Pro XL — Acme Widgets');
  await waitText(row1.locator('.v-url'), /\/products\/pro-xl/, 'current page after navigation', UPDATE_BUDGET_MS + 500);
  const took = Date.now() - t0;
  assert(took <= UPDATE_BUDGET_MS + 500, `the console showed the new page after ${took} ms`);
  await waitText(row1.locator('.v-title'), /Widget Pro XL/, 'title after navigation');
  await waitText(row1.locator('.v-pages'), /^2$/, 'pages viewed after navigation');

  // time on site ticks
  const before = await row1.locator('.v-onsite').textContent();
  await until('time on site to tick', async () => (await row1.locator('.v-onsite').textContent()) !== before, 3000);

  // visitor-controlled strings stay text
  const evil = '<img src=x onerror="window.__xss=7">Evil title';
  await v2.navigate('/search?q=<script>window.__xss=8</script>', evil);
  await waitVisible(op.visitorRow('Evil title'), 'the row with the hostile title');
  assert((await row2.locator('.v-title').textContent()) === evil, 'title not shown literally');
  assert((await op.page.locator('#visitors-body img, #visitors-body script').count()) === 0, 'markup from a visitor became elements');

  // chatting or not
  await waitText(row2.locator('.v-status'), /Browsing/, 'status before chatting');
  await v2.startChat({ name: 'Vera Visitor', question: 'Do you sell gift cards?' });
  await waitText(row2.locator('.v-status'), /^Waiting$/, 'status while the chat waits');
  await op.accept('Vera Visitor');
  await waitText(row2.locator('.v-status'), /^Chatting$/, 'status while chatting');
  await w.shot(op.page, 'console-visitors.png');

  // a visitor who leaves drops off the list after visitor_idle_secs
  await v1.page.context().close();
  await until('the visitor who left to drop off the list', async () => (await row1.count()) === 0, 30_000, 250);
  await assertNoXss(w.pages.filter(([l]) => l !== 'visitor1'));
}

async function invite(w) {
  await w.setup({ chat: { invite_timeout_secs: '10' } });
  const bob = w.addOperator('bob', { display: 'Bob Baker' });
  const op = await w.console('console');
  const bobC = await w.console('bob', bob);
  const v1 = await w.visitor('visitor1', { path: '/shop/one', title: 'Shop one' });
  const v2 = await w.visitor('visitor2', { path: '/shop/two', title: 'Shop two' });
  const v3 = await w.visitor('visitor3', { path: '/shop/three', title: 'Shop three' });
  const row1 = op.visitorRow('/shop/one');
  const row2 = op.visitorRow('/shop/two');
  const row3 = op.visitorRow('/shop/three');
  await waitVisible(row1, 'visitor 1 on the list');
  await waitVisible(row2, 'visitor 2 on the list');
  await waitVisible(row3, 'visitor 3 on the list');
  assert(!(await v1.iframe.isVisible()), 'the chat panel is open before any invitation');

  // visitor 3 is invited and does not answer: the invitation expires (invite_timeout_secs)
  await row3.locator('.invite-btn').click();
  await waitVisible(v3.iframe, 'visitor 3: panel opened by the invitation');
  const invitedAt = Date.now();

  const INVITE = 'Hi there! Looking for the perfect widget?';
  await op.page.locator('#invite-message').fill(INVITE);
  await row1.locator('.invite-btn').click();
  await waitText(row1.locator('.v-status'), /Invited/, 'row status after inviting');

  // the widget opens by itself and shows the invitation
  await waitVisible(v1.iframe, 'visitor 1: panel opened by the invitation');
  let f1 = await v1.frame();
  await waitVisible(f1.locator('#view-invite'), 'visitor 1: invitation');
  await waitText(f1.locator('#invite-text'), exact(INVITE), 'invitation message');
  await waitText(f1.locator('#invite-heading'), /Demo Operator/, 'who invites');
  await w.shot(v1.page, 'widget-invitation.png');

  await f1.locator('#invite-accept').click();
  await waitVisible(f1.locator('#view-chat'), 'visitor 1: conversation after accepting');
  await v1.status(/You are chatting with Demo Operator/);
  await waitText(row1.locator('.v-status'), /Chatting|Accepted/, 'row status after accepting');
  const panel = op.page.locator('#chat-panels .chat-panel').first();
  await waitVisible(panel, 'a chat panel for the accepted invitation');
  await v1.say('Yes please, which one is the quietest?');
  await waitVisible(panel.locator('.msg.from-visitor .msg-text', { hasText: 'quietest' }), 'visitor message in the console');
  assert((await bobC.page.locator('#chat-panels .chat-panel').count()) === 0, 'the accepted invitation reached another operator');
  await waitText(bobC.visitorRow('/shop/one').locator('.v-status'), /Chatting/, "the other operator's list shows the visitor chatting");
  await panel.locator('.msg-input').fill('The Widget Pro XL: half the noise.');
  await panel.locator('.send-btn').click();
  await v1.sees('half the noise', 'operator reply');

  // the second visitor declines: recorded, and shown in the console
  await row2.locator('.invite-btn').click();
  await waitVisible(v2.iframe, 'visitor 2: panel opened by the invitation');
  const f2 = await v2.frame();
  await waitVisible(f2.locator('#view-invite'), 'visitor 2: invitation');
  await f2.locator('#invite-decline').click();
  await waitHidden(v2.iframe, 'visitor 2: panel closes after declining');
  await waitText(row2.locator('.v-status'), /Declined/, 'row status after declining');

  await waitHidden(v3.iframe, 'visitor 3: the expired invitation closes', Math.max(1000, invitedAt + 25_000 - Date.now()));
  await waitText(row3.locator('.v-status'), /expired|Browsing/, 'row status after the invitation expired');
  await waitVisible(row3.locator('.invite-btn:not([disabled])'), 'invite possible again after expiry');
  await assertNoXss(w.pages);
}

async function prechat(w) {
  await w.setup({ prechat: { email: '"optional"', department: '"required"', question: '"required"' } });
  const op = await w.console('console');
  const v = await w.visitor('visitor');
  const f = await v.open();
  await waitVisible(f.locator('#prechat-form'), 'pre-chat form');
  // the form is built from /visitor/status: name required, email optional, department select
  await waitVisible(f.locator('#f-name'), 'name field');
  assert(await f.locator('#f-name').evaluate((e) => e.required), 'name is not required');
  await waitText(f.locator('label[for="f-email"]'), /optional/, 'email label');
  assert(!(await f.locator('#f-email').evaluate((e) => e.required)), 'email is required');
  const options = await f.locator('#f-department option').allTextContents();
  assert(JSON.stringify(options.slice(1)) === JSON.stringify(['Sales', 'Support']), `department options: ${JSON.stringify(options)}`);
  await waitVisible(f.locator('#f-question'), 'question field');
  await w.shot(v.page, 'widget-prechat.png');

  await f.locator('#start-btn').click();
  await waitText(f.locator('#prechat-error'), /name/i, 'error for a missing name');
  await f.locator('#f-name').fill('Petra Prechat');
  await f.locator('#f-question').fill('Which gasket fits the Pocket Widget?');
  await f.locator('#start-btn').click();
  await waitText(f.locator('#prechat-error'), /Department/, 'error for a missing department');
  await f.locator('#f-department').selectOption('Support');
  await f.locator('#f-email').fill('not-an-address');
  await f.locator('#start-btn').click();
  await waitText(f.locator('#prechat-error'), /valid email/, 'error for a bad email');
  await f.locator('#f-email').fill('petra@example.org');
  await f.locator('#start-btn').click();
  await waitVisible(f.locator('#view-chat'), 'conversation after the form');
  await v.status(/number 1 in the queue/);

  const q = op.queueItem('Petra Prechat');
  await waitVisible(q, 'queue entry');
  await waitText(q.locator('.tag'), /^Support$/, 'department in the queue');
  await op.accept('Petra Prechat');
  const p = op.panel('Petra Prechat');
  await waitText(p.locator('.chat-email'), /petra@example\.org/, 'email in the panel');
  await waitText(p.locator('.chat-department'), /^Support$/, 'department in the panel');
  await waitText(p.locator('.chat-question'), /gasket/, 'question in the panel');
  await v.status(/You are chatting with Demo Operator/);
}

async function queuePosition(w) {
  await w.setup({ chat: { routing: '"manual"' } });
  const op = await w.console('console');
  const vs = [];
  for (const [i, name] of ['Quinn One', 'Quinn Two', 'Quinn Three'].entries()) {
    const v = await w.visitor(`visitor${i + 1}`);
    await v.startChat({ name, question: `Question ${i + 1}` });
    await v.status(new RegExp(`number ${i + 1} in the queue`), 'queue position');
    vs.push(v);
  }
  await until('three chats waiting in the console, in arrival order', async () =>
    JSON.stringify(await op.page.locator('#queue-list .queue-name').allTextContents()) ===
    JSON.stringify(['Quinn One', 'Quinn Two', 'Quinn Three']));
  await waitText(op.page.locator('#queue-count'), /^3$/, 'queue count');

  await op.accept('Quinn One');
  await vs[0].status(/You are chatting with/);
  await vs[1].status(/number 1 in the queue/, 'position after the first was accepted');
  await vs[2].status(/number 2 in the queue/, 'position after the first was accepted');

  // the second visitor gives up while waiting
  const f2 = await vs[1].frame();
  await f2.locator('#end-btn').click();
  await waitVisible(f2.locator('#ended-box'), 'ended box of the visitor who gave up');
  await vs[2].status(/number 1 in the queue/, 'position after the one ahead left');
  await until('only the third visitor waiting', async () =>
    JSON.stringify(await op.page.locator('#queue-list .queue-name').allTextContents()) === JSON.stringify(['Quinn Three']));

  // the first visitor ends the chat: the operator sees it
  const f1 = await vs[0].frame();
  await f1.locator('#end-btn').click();
  await waitVisible(f1.locator('#ended-box'), 'ended box of the first visitor');
  const p1 = op.panel('Quinn One');
  await waitText(p1.locator('.state'), /Ended/, 'panel state after the visitor ended the chat');
  await waitVisible(p1.locator('.msg.system', { hasText: 'The visitor ended the chat' }), 'ended notice in the console');
}

async function routing(w) {
  await w.setup({ chat: { routing: '"auto"', max_chats_per_operator: '1', departments: '["Sales", "Support"]' } });
  w.watch.expect(/status of 409 .*\/api\/v1\/visitor\/chats/); // nobody of the department online
  const sam = w.addOperator('sam', { display: 'Sam Sales', departments: ['Sales'] });
  const sue = w.addOperator('sue', { display: 'Sue Support', departments: ['Support'] });
  const samC = await w.console('sam', sam);
  const sueC = await w.console('sue', sue);

  // auto-assignment by department, without anyone clicking Accept
  const a = await w.visitor('visitorA');
  await a.startChat({ name: 'Alice Sales', question: 'Bulk prices?', department: 'Sales' });
  await a.status(/You are chatting with Sam Sales/);
  await waitVisible(samC.panel('Alice Sales'), 'Sam got the Sales chat');
  const b = await w.visitor('visitorB');
  await b.startChat({ name: 'Bruno Support', question: 'My widget squeaks', department: 'Support' });
  await b.status(/You are chatting with Sue Support/);
  await waitVisible(sueC.panel('Bruno Support'), 'Sue got the Support chat');
  assert((await samC.panel('Bruno Support').count()) === 0, 'the Support chat reached Sam');

  // Sam is at his limit (1): the next Sales chat waits, and only Sales operators see it
  const c = await w.visitor('visitorC');
  await c.startChat({ name: 'Carla Sales', question: 'Do you invoice?', department: 'Sales' });
  await c.status(/number 1 in the queue/);
  await waitVisible(samC.queueItem('Carla Sales'), "the waiting Sales chat in Sam's queue");
  assert((await sueC.queueItem('Carla Sales').count()) === 0, "a Sales chat is in Sue's queue");

  // when Sam's chat ends, the waiting one is assigned to him
  await samC.panel('Alice Sales').locator('.end-btn').click();
  await c.status(/You are chatting with Sam Sales/, 'status once Sam is free');
  await waitVisible(samC.panel('Carla Sales'), 'Sam got the waiting chat');

  // presence: Sue goes away; Sam's console shows it; no Support chat is routed to her
  await sueC.setPresence('away');
  await waitText(samC.page.locator('#team-list .team-item[data-username="sue"] .team-presence'), /away/, "Sue's presence in Sam's console", 20_000);
  const d = await w.visitor('visitorD');
  const fd = await d.fillPrechat({ name: 'Dora Support', question: 'Anyone there?', department: 'Support' });
  await fd.locator('#start-btn').click();
  await waitVisible(fd.locator('#view-offline'), 'leave-a-message when nobody of the department is online');
  await waitText(fd.locator('#offline-error'), /no one is available/, 'the explanation');
  await sueC.setPresence('online');
  await waitText(samC.page.locator('#team-list .team-item[data-username="sue"] .team-presence'), /online/, "Sue back online in Sam's console", 20_000);
}

async function offlineMessage(w) {
  await w.setup();
  w.watch.expect(/status of 409 .*\/api\/v1\/visitor\/chats/);
  // nobody is signed in: the widget offers to leave a message
  const v = await w.visitor('visitor');
  await waitText(v.button, /^Leave a message$/, 'chat button while nobody is online');
  const f = await v.open();
  await waitVisible(f.locator('#offline-form'), 'leave-a-message form');
  const NAME = '<img src=x onerror="window.__xss=11">Olivia';
  const MSG = 'Please call me back about an order.\n<script>window.__xss=12</script>';
  await f.locator('#o-name').fill(NAME);
  await f.locator('#o-email').fill('olivia@example.org');
  await f.locator('#o-message').fill(MSG);
  await w.shot(v.page, 'widget-offline.png');
  await f.locator('#offline-send').click();
  await waitVisible(f.locator('#offline-done'), 'thank-you after sending');

  // an operator signs in: the inbox has it, with an unread badge
  const op = await w.console('console');
  await waitText(op.page.locator('#inbox-badge'), /^1$/, 'unread badge');
  await op.tab('inbox');
  const item = op.page.locator('#inbox-list .inbox-item').first();
  await waitVisible(item, 'inbox message');
  assert((await item.locator('.inbox-name').textContent()) === NAME, 'name not shown literally');
  assert((await item.locator('.inbox-message').textContent()) === MSG, 'message not shown literally');
  await waitText(item.locator('.inbox-email'), /olivia@example\.org/, 'email');
  await w.shot(op.page, 'console-inbox.png');
  assert((await op.page.locator('#inbox-list img, #inbox-list script').count()) === 0, 'markup became elements');
  const mailto = await item.locator('.reply-link').getAttribute('href');
  assert(mailto && mailto.startsWith('mailto:olivia%40example.org'), `reply link ${mailto}`);
  await item.locator('.mark-read-btn').click();
  await waitHidden(op.page.locator('#inbox-badge'), 'unread badge after reading');

  // an operator who is away does not count as online
  await op.setPresence('away');
  const v2 = await w.visitor('visitor2');
  await waitText(v2.button, /^Leave a message$/, 'chat button while the only operator is away');
  await op.setPresence('online');
  const f2 = await v2.open(); // opening the panel refreshes the status
  await waitVisible(f2.locator('#view-prechat'), 'pre-chat form once an operator is online');
  await waitText(v2.button, /^Chat with us$/, 'chat button once an operator is online');
  await assertNoXss(w.pages);
}

async function typing(w) {
  await w.setup();
  const op = await w.console('console');
  const v = await w.visitor('visitor');
  await v.startChat({ name: 'Tina Typing', question: 'Is the Classic in stock?' });
  await op.accept('Tina Typing');
  const p = op.panel('Tina Typing');
  let f = await v.frame();

  await f.locator('#msg-input').pressSequentially('Also, do you', { delay: 20 });
  await waitText(p.locator('.typing'), /Tina Typing is typing/, 'visitor typing in the console');
  await p.locator('.msg-input').pressSequentially('Let me check', { delay: 20 });
  await waitText(f.locator('#typing'), /Demo Operator is typing/, 'operator typing in the widget');

  // delivered / read: the console is on screen, so the visitor's message is read
  await f.locator('#msg-input').fill('Also, do you ship to Iceland?');
  await f.locator('#msg-input').press('Enter');
  await waitVisible(p.locator('.msg.from-visitor .msg-text', { hasText: 'Iceland' }), 'message in the console');
  await waitText(f.locator('.msg.from-visitor .receipt'), /^(Delivered|Read)$/, 'receipt under the visitor message');
  await waitText(f.locator('.msg.from-visitor .receipt'), /^Read$/, 'read receipt under the visitor message');
  assert((await f.locator('.receipt').count()) === 1, 'more than one receipt line in the widget');

  await op.reply('Tina Typing', 'Yes, the Classic ships to Iceland.');
  await v.sees('ships to Iceland');
  await waitText(p.locator('.msg.from-operator .receipt'), /^Read$/, 'read receipt in the console');
  await w.shot(v.page, 'widget-chat.png');

  // the visitor goes to another page of the site: the chat comes back open, nothing twice
  await v.page.reload({ waitUntil: 'load' });
  await waitVisible(v.iframe, 'the chat panel reopens by itself after a page load');
  f = await v.frame();
  await waitText(f.locator('#chat-status'), /You are chatting with Demo Operator/, 'status after a page load');
  await v.sees('ships to Iceland', 'the conversation after a page load');
  await until('each message once after a page load', async () =>
    (await f.locator('.msg-text', { hasText: 'ship to Iceland?' }).count()) === 1 &&
    (await f.locator('.msg-text', { hasText: 'ships to Iceland.' }).count()) === 1);

  // the visitor minimises the chat: the next reply is delivered, not read
  await v.minimise();
  await op.reply('Tina Typing', 'Anything else I can help with?');
  await waitText(p.locator('.msg.from-operator .receipt'), /^Delivered$/, 'delivered (not read) while minimised');
  await v.open();
  await waitText(p.locator('.msg.from-operator .receipt'), /^Read$/, 'read once the visitor opens the chat');
}

async function canned(w) {
  await w.setup();
  const olga = w.addOperator('olga', { display: 'Olga Operator' });
  const admin = await w.console('admin');
  await admin.tab('canned');
  await waitVisible(admin.page.locator('#canned-form'), 'canned form for an admin');
  const add = async (shortcut, title, text) => {
    await admin.page.locator('#canned-shortcut').fill(shortcut);
    await admin.page.locator('#canned-title').fill(title);
    await admin.page.locator('#canned-text').fill(text);
    await admin.page.locator('#canned-save').click();
    await waitVisible(admin.page.locator('#canned-body tr', { hasText: `/${shortcut}` }), `canned /${shortcut} listed`);
  };
  const HOURS = 'We are open 9:00–17:00 CET, Monday to Friday.';
  const SHIP = 'We ship worldwide within one business day; free over $50.';
  await add('hours', 'Opening hours', HOURS);
  await add('ship', 'Shipping', 'We ship worldwide.');
  await add('tmp', 'Temporary', 'delete me');
  // edit
  const shipRow = admin.page.locator('#canned-body tr', { hasText: '/ship' });
  await shipRow.locator('.canned-edit').click();
  await admin.page.locator('#canned-text').fill(SHIP);
  await admin.page.locator('#canned-save').click();
  await waitText(shipRow.locator('.canned-text-cell'), /free over \$50/, 'edited text');
  // delete (asks to confirm)
  const tmpRow = admin.page.locator('#canned-body tr', { hasText: '/tmp' });
  await tmpRow.locator('.canned-delete').click();
  await tmpRow.locator('.canned-delete', { hasText: 'Confirm' }).click();
  await until('canned /tmp deleted', async () => (await tmpRow.count()) === 0);

  // an operator sees them but cannot change them
  const op = await w.console('olga', olga);
  await op.tab('canned');
  await waitVisible(op.page.locator('#canned-body tr', { hasText: '/hours' }), 'canned list for an operator');
  assert(await op.page.locator('#canned-form').isHidden(), 'an operator sees the canned form');
  assert((await op.page.locator('#canned-body .canned-edit').count()) === 0, 'an operator sees edit buttons');
  await op.tab('work');

  const v = await w.visitor('visitor');
  await v.startChat({ name: 'Carl Canned', question: 'When are you open?' });
  await op.accept('Carl Canned');
  const input = op.panel('Carl Canned').locator('.msg-input');
  // /shortcut + Tab expands
  await input.pressSequentially('/hou', { delay: 20 });
  await waitVisible(op.panel('Carl Canned').locator('.canned-suggest .canned-option', { hasText: '/hours' }), 'suggestion for /hou');
  await input.press('Tab');
  assert((await input.inputValue()) === HOURS, `after Tab the reply is ${JSON.stringify(await input.inputValue())}`);
  await input.press('Enter');
  await v.sees('Monday to Friday', 'expanded canned response');
  // /shortcut + Enter expands (and does not send)
  await input.pressSequentially('/ship', { delay: 20 });
  await input.press('Enter');
  assert((await input.inputValue()) === SHIP, `after Enter the reply is ${JSON.stringify(await input.inputValue())}`);
  await input.fill('');
  // the picker, by search
  await op.panel('Carl Canned').locator('.canned-btn').click();
  const search = op.panel('Carl Canned').locator('.canned-search');
  await waitVisible(search, 'canned picker');
  await search.fill('free over');
  const picks = op.panel('Carl Canned').locator('.canned-pick');
  await until('one match in the picker', async () => (await picks.count()) === 1);
  await w.shot(op.page, 'console-canned-picker.png');
  await picks.first().click();
  assert((await input.inputValue()) === SHIP, `after picking the reply is ${JSON.stringify(await input.inputValue())}`);
  await op.panel('Carl Canned').locator('.send-btn').click();
  await v.sees('free over $50', 'picked canned response');
}

async function transfer(w) {
  await w.setup();
  const ann = w.addOperator('ann', { display: 'Ann Archer', departments: ['Sales'] });
  const bob = w.addOperator('bob', { display: 'Bob Baker' });
  const annC = await w.console('ann', ann);
  const bobC = await w.console('bob', bob);
  const v = await w.visitor('visitor');
  const NAME = 'Victor Transfer';
  await v.startChat({ name: NAME, question: 'Bulk discount?', department: 'Sales' });
  await annC.accept(NAME);
  await v.status(/You are chatting with Ann Archer/);
  await v.say('I need 500 units.');
  await annC.reply(NAME, 'Let me get my colleague Bob.');

  // to another operator, with a note
  const NOTE = 'VIP: wants 20% off 500 units';
  const p = annC.panel(NAME);
  await p.locator('.transfer-btn').click();
  await waitVisible(p.locator('.transfer-form'), 'transfer form');
  await until('Bob offered as a transfer target', async () =>
    (await p.locator('.transfer-target option[value="op:bob"]:not([disabled])').count()) === 1);
  await p.locator('.transfer-target').selectOption('op:bob');
  await p.locator('.transfer-note').fill(NOTE);
  await w.shot(annC.page, 'console-transfer.png');
  await p.locator('.transfer-go').click();
  await until("the chat left Ann's console", async () => (await annC.panel(NAME).count()) === 0);
  const bp = bobC.panel(NAME);
  await waitVisible(bp, "the chat in Bob's console");
  await waitVisible(bp.locator('.msg.transfer', { hasText: NOTE }), 'transfer note for Bob');
  await waitVisible(bp.locator('.msg-text', { hasText: '500 units' }), 'earlier messages for Bob');
  await v.sees('You are now chatting with Bob Baker', 'change of operator');
  await v.status(/You are chatting with Bob Baker/);
  await bobC.reply(NAME, 'Hi, Bob here. 15% is possible.');
  await v.sees('15% is possible');
  let f = await v.frame();
  assert(!(await f.locator('body').innerText()).includes('VIP'), 'the visitor sees the transfer note');

  // to a department: back in the queue, then picked up there
  await bp.locator('.transfer-btn').click();
  await until('Sales offered as a transfer target', async () =>
    (await bp.locator('.transfer-target option[value="dep:Sales"]').count()) === 1);
  await bp.locator('.transfer-target').selectOption('dep:Sales');
  await bp.locator('.transfer-note').fill('Back to sales for the quote');
  await bp.locator('.transfer-go').click();
  await until("the chat left Bob's console", async () => (await bobC.panel(NAME).count()) === 0);
  await v.status(/Waiting for an operator/, 'status after the transfer to a department');
  await annC.accept(NAME);
  await v.sees('You are now chatting with Ann Archer', 'change of operator after the department transfer');

  // the transcript keeps everything (the notes for operators only)
  const ap = annC.panel(NAME);
  await waitVisible(ap.locator('.msg.transfer', { hasText: NOTE }), 'first note in the transcript');
  await waitVisible(ap.locator('.msg.transfer', { hasText: 'Back to sales' }), 'second note in the transcript');
  await waitVisible(ap.locator('.msg-text', { hasText: '15% is possible' }), "Bob's message in the transcript");
  const tok = await v.chatToken();
  f = await v.frame();
  const vt = await f.evaluate(async (token) => {
    const r = await fetch('/api/v1/visitor/transcript', { headers: { Authorization: `Bearer ${token}` } });
    return r.text();
  }, tok.token);
  assert(vt.includes('15% is possible') && vt.includes('500 units'), 'the visitor transcript lacks messages');
  assert(!vt.includes('VIP') && !vt.includes('Back to sales'), 'the visitor transcript carries a transfer note');
  assert(!(await f.locator('body').innerText()).includes('Back to sales'), 'the visitor sees the second note');
}

async function monitorWhisper(w) {
  await w.setup();
  const ann = w.addOperator('ann', { display: 'Ann Archer' });
  const sue = w.addOperator('sue', { display: 'Sue Super', role: 'supervisor' });
  const annC = await w.console('ann', ann);
  const v = await w.visitor('visitor');
  const NAME = 'Mona Monitor';
  await v.startChat({ name: NAME, question: 'Can I return a widget?' });
  await annC.accept(NAME);
  await annC.reply(NAME, 'Of course, within 60 days.');

  const sueC = await w.console('sue', sue);
  await sueC.tab('live');
  const row = sueC.page.locator('#live-body tr', { hasText: NAME });
  await waitVisible(row, 'the chat in the live list');
  await waitText(row.locator('.live-operator'), /Ann Archer/, 'its operator');
  await row.locator('.monitor-btn').click();
  const mp = sueC.monitorPanel(NAME);
  await waitVisible(mp, 'monitor panel');
  await waitVisible(mp.locator('.msg-text', { hasText: 'within 60 days' }), 'earlier messages in the monitor panel');
  assert((await mp.locator('.msg-input, .send-btn').count()) === 0, 'the monitor panel can reply to the visitor');
  await v.say('Great, and the shipping back?');
  await waitVisible(mp.locator('.msg-text', { hasText: 'shipping back' }), 'a new message reaches the monitor panel');

  // whisper: the operator sees it, the visitor never does
  const WHISPER = 'Offer her a free return label';
  await mp.locator('.whisper-input').fill(WHISPER);
  await mp.locator('.whisper-btn').click();
  await waitVisible(annC.panel(NAME).locator('.msg.whisper', { hasText: WHISPER }), 'whisper in the operator console');
  await waitVisible(mp.locator('.msg.whisper', { hasText: WHISPER }), 'whisper in the monitor panel');
  await annC.reply(NAME, 'We send you a free return label.');
  await v.sees('free return label.');
  const f = await v.frame();
  assert(!(await f.locator('body').innerText()).includes(WHISPER), 'the visitor sees the whisper');
  await w.shot(sueC.page, 'console-monitor.png');

  // take over
  await mp.locator('.takeover-btn').click();
  await waitVisible(sueC.panel(NAME), "the chat in Sue's own chats");
  await until("the chat left Ann's console", async () => (await annC.panel(NAME).count()) === 0);
  await v.sees('You are now chatting with Sue Super', 'change of operator after the take-over');
  await sueC.reply(NAME, 'Hello, Sue here, I take it from here.');
  await v.sees('Sue here');
}

async function wrapupRatingTranscript(w) {
  await w.setup();
  const op = await w.console('console');
  const v = await w.visitor('visitor');
  const NAME = 'Rita Rating';
  await v.startChat({ name: NAME, question: 'Where is my order #1234?' });
  await op.accept(NAME);
  await v.say('It was due yesterday.');
  await op.reply(NAME, 'It left our warehouse today, sorry for the delay.');
  await v.sees('left our warehouse');
  const p = op.panel(NAME);
  await p.locator('.end-btn').click();
  await waitText(p.locator('.state'), /Ended/, 'panel state');

  // wrap-up: a category from the policy's list, and a note
  await waitVisible(p.locator('.wrapup-form'), 'wrap-up form');
  const cat = p.locator('select.wrapup-category');
  await waitVisible(cat, 'category list');
  const cats = await cat.locator('option').allTextContents();
  assert(cats.includes('Order question'), `categories offered: ${JSON.stringify(cats)}`);
  await cat.selectOption('Order question');
  await p.locator('.wrapup-note').fill('Late delivery, apologised');
  await w.shot(op.page, 'console-wrapup.png');
  await p.locator('.wrapup-save').click();
  await waitText(p.locator('.wrapup-done'), /Order question — Late delivery/, 'wrap-up saved');

  // the visitor rates the chat
  const f = await v.frame();
  await waitVisible(f.locator('#ended-box'), 'end of chat');
  await waitVisible(f.locator('#rating-form'), 'rating form');
  await f.locator('.star[data-value="4"]').click();
  const COMMENT = '<img src=x onerror="window.__xss=13">Quick and helpful';
  await f.locator('#rating-comment').fill(COMMENT);
  await w.shot(v.page, 'widget-rating.png');
  await f.locator('#rating-send').click();
  await waitVisible(f.locator('#rating-done'), 'thank-you after rating');
  await waitText(p.locator('.rating-line'), /4\/5/, 'rating in the console');
  assert((await p.locator('.rating-line').textContent()).includes(COMMENT), 'rating comment not shown literally');

  // the transcript: plain text and static HTML, downloaded through a Blob URL
  for (const [btn, ext] of [['#dl-txt', 'txt'], ['#dl-html', 'html']]) {
    const [dl] = await Promise.all([v.page.waitForEvent('download'), f.locator(btn).click()]);
    assert(dl.suggestedFilename().endsWith(`.${ext}`), `download name ${dl.suggestedFilename()}`);
    const file = await dl.path();
    const text = fs.readFileSync(file, 'utf8');
    assert(text.includes('left our warehouse') && text.includes('due yesterday'), `${ext} transcript lacks the messages`);
    assert(!text.includes('Late delivery'), `${ext} transcript carries the wrap-up note`);
    if (ext === 'html') assert(!/<script/i.test(text), 'the HTML transcript has a script');
    fs.copyFileSync(file, path.join(args.screenshots, `transcript.${ext}`));
  }
  await assertNoXss(w.pages);

  // after the chat the visitor is browsing again: shown so, and can be invited again
  const row = op.page.locator('#visitors-body tr.visitor-row').first();
  await waitText(row.locator('.v-status'), /^Browsing$/, 'the visitor is browsing again after the chat');
  await waitVisible(row.locator('.invite-btn:not([disabled])'), 'invite possible again after the chat');
}

async function stats(w) {
  await w.setup();
  const op = await w.console('console');
  const stat = (id) => op.page.locator(`#stat-${id}`);
  const v1 = await w.visitor('visitor1', { path: '/products/classic', title: 'The Classic Widget — Acme' });
  const v2 = await w.visitor('visitor2', { path: '/shipping', title: 'Shipping and returns — Acme' });
  const v3 = await w.visitor('visitor3', { referer: 'https://news.example/widgets-review' });
  const v4 = await w.visitor('visitor4', { path: '/products/pocket', title: 'Pocket Widget — Acme' });
  await waitText(stat('visitors'), /^4$/, 'visitors online');
  await waitText(stat('waiting'), /^0$/, 'waiting');

  await v1.startChat({ name: 'Stan Stats', question: 'Is the Classic dishwasher safe?' });
  await waitText(stat('waiting'), /^1$/, 'waiting after a chat starts');
  const lw = await stat('longest').textContent();
  await until('the longest wait to grow', async () => (await stat('longest').textContent()) !== lw, 6000);
  await op.accept('Stan Stats');
  await waitText(stat('active'), /^1$/, 'active after accepting');
  await waitText(stat('waiting'), /^0$/, 'waiting after accepting');
  await waitText(stat('today'), /^1$/, 'chats today');
  await v1.say('And the Pro XL?');
  await op.reply('Stan Stats', 'Both are dishwasher safe, top rack.');

  await v3.startChat({ name: 'Nora News', question: 'I read your review: is the Pocket Widget waterproof?' });
  await op.accept('Nora News');
  await waitText(stat('active'), /^2$/, 'two chats active');
  await op.reply('Nora News', 'Splash-proof, yes; not for diving.');
  await v3.sees('not for diving');

  // one waits and gives up: missed
  await v2.startChat({ name: 'Mia Missed', question: 'Can I return a used widget?' });
  await waitText(stat('waiting'), /^1$/, 'waiting for the third chat');
  await waitText(stat('today'), /^3$/, 'chats today after the third');
  await v4.navigate('/products/pocket/reviews', 'Pocket Widget reviews — Acme');
  await waitVisible(op.visitorRow('Pocket Widget reviews'), 'the browsing visitor on a new page');
  await w.shot(op.page, 'console-overview.png');
  const f2 = await v2.frame();
  await f2.locator('#end-btn').click();
  await waitText(stat('missed'), /^1$/, 'missed today');
  await waitText(stat('waiting'), /^0$/, 'waiting after the third left');

  // a rating moves the average
  await op.panel('Stan Stats').locator('.end-btn').click();
  await waitText(stat('active'), /^1$/, 'active after ending one');
  const f1 = await v1.frame();
  await waitVisible(f1.locator('#rating-form'), 'rating form');
  await f1.locator('.star[data-value="5"]').click();
  await f1.locator('#rating-send').click();
  await waitText(stat('rating'), /^5\.0/, 'average rating');
  await waitText(op.page.locator('#stat-rating-label'), /\(1\)/, 'number of ratings');
}

async function search(w) {
  await w.setup();
  const bob = w.addOperator('bob', { display: 'Bob Baker' });
  const admin = await w.console('admin');
  const bobC = await w.console('bob', bob);
  const chat = async (label, opC, name, dept, line) => {
    const v = await w.visitor(label);
    await v.startChat({ name, question: 'Hello', department: dept });
    await opC.accept(name);
    await v.say(line);
    await opC.reply(name, `Thanks, ${name.split(' ')[0]}.`);
    await opC.panel(name).locator('.end-btn').click();
    await waitText(opC.panel(name).locator('.state'), /Ended/, 'ended');
  };
  await chat('visitor1', admin, 'Sam Searcher', 'Sales', 'Is the purple widget available?');
  await chat('visitor2', bobC, 'Sarah Other', 'Support', 'My gasket is broken.');

  await admin.tab('search');
  const run = async (fill, expected, what) => {
    for (const sel of ['#s-q', '#s-name', '#s-from', '#s-to']) await admin.page.locator(sel).fill('');
    await admin.page.locator('#s-operator').selectOption('');
    await admin.page.locator('#s-department').selectOption('');
    await fill();
    await admin.page.locator('#search-btn').click();
    await until(`search by ${what}: ${JSON.stringify(expected)}`, async () => {
      if (!(await admin.page.locator('#search-summary').isVisible())) return false;
      const names = await admin.page.locator('#search-body .result-name').allTextContents();
      return JSON.stringify(names.sort()) === JSON.stringify([...expected].sort()) &&
        (expected.length > 0 || (await admin.page.locator('#search-summary').textContent()).includes('No transcripts'));
    });
  };
  const today = await admin.page.evaluate(() => {
    const d = new Date();
    return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;
  });
  const yesterday = await admin.page.evaluate(() => {
    const d = new Date(Date.now() - 86_400_000);
    return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;
  });
  await run(() => admin.page.locator('#s-q').fill('purple'), ['Sam Searcher'], 'text');
  await run(() => admin.page.locator('#s-name').fill('Sarah'), ['Sarah Other'], 'visitor name');
  await run(() => admin.page.locator('#s-operator').selectOption('bob'), ['Sarah Other'], 'operator');
  await run(() => admin.page.locator('#s-department').selectOption('Sales'), ['Sam Searcher'], 'department');
  await run(async () => {
    await admin.page.locator('#s-from').fill(today);
    await admin.page.locator('#s-to').fill(today);
  }, ['Sam Searcher', 'Sarah Other'], 'date range (today)');
  await run(async () => {
    await admin.page.locator('#s-from').fill(yesterday);
    await admin.page.locator('#s-to').fill(yesterday);
  }, [], 'date range (yesterday)');

  // a result opens the transcript
  await run(() => admin.page.locator('#s-q').fill('purple'), ['Sam Searcher'], 'text, again');
  await admin.page.locator('#search-body tr', { hasText: 'Sam Searcher' }).locator('.open-transcript').click();
  await waitVisible(admin.page.locator('#transcript-view'), 'transcript view');
  await waitVisible(admin.page.locator('#transcript-events .msg-text', { hasText: 'purple widget' }), 'the message in the transcript');
  await waitText(admin.page.locator('#transcript-title'), /Sam Searcher/, 'transcript title');
  await w.shot(admin.page, 'console-search.png');

  // an operator finds only their own chats
  await bobC.tab('search');
  await bobC.page.locator('#s-q').fill('purple');
  await bobC.page.locator('#search-btn').click();
  await waitText(bobC.page.locator('#search-summary'), /No transcripts/, "an operator searching someone else's chat");
}

async function roles(w) {
  await w.setup();
  w.watch.expect(/status of 403 /);
  const olga = w.addOperator('olga', { display: 'Olga Operator' });
  const sue = w.addOperator('sue', { display: 'Sue Super', role: 'supervisor' });
  const op = await w.console('olga', olga);
  await waitText(op.page.locator('#me-role'), /^operator$/, 'role shown');
  assert(await op.page.locator('#tab-live').isHidden(), 'an operator sees the Live chats tab');
  await op.tab('canned');
  assert(await op.page.locator('#canned-form').isHidden(), 'an operator sees the canned form');
  // the server enforces it anyway
  let r = await op.api('GET', '/api/v1/operator/live');
  assert(r.status === 403, `GET /live as an operator answered ${r.status}`);
  r = await op.api('POST', '/api/v1/operator/canned', { shortcut: 'x', title: 'x', text: 'x' });
  assert(r.status === 403, `POST /canned as an operator answered ${r.status}`);

  const sup = await w.console('sue', sue);
  await waitText(sup.page.locator('#me-role'), /^supervisor$/, 'role shown');
  await waitVisible(sup.page.locator('#tab-live'), 'Live chats tab for a supervisor');
  await sup.tab('canned');
  await waitVisible(sup.page.locator('#canned-form'), 'canned form for a supervisor');
  await sup.tab('live');
  await waitVisible(sup.page.locator('#live-table'), 'live chats for a supervisor');
  r = await sup.api('GET', '/api/v1/operator/live');
  assert(r.status === 200, `GET /live as a supervisor answered ${r.status}`);

  const admin = await w.console('admin');
  await waitText(admin.page.locator('#me-role'), /^admin$/, 'role shown');
  await waitVisible(admin.page.locator('#tab-live'), 'Live chats tab for an admin');
}

async function totp(w) {
  await w.setup();
  w.watch.expect(/status of 401 .*\/api\/v1\/operator\/login/);
  w.watch.expect(/status of 400 .*\/api\/v1\/operator\/totp\/confirm/);
  w.watch.expect(/status of 403 /);
  const op = await w.console('admin');
  await op.tab('account');
  await waitText(op.page.locator('#acct-totp'), /off/, 'two-factor off');
  await op.page.locator('#totp-enable').click();
  const enrol = async (page, shot) => {
    await waitVisible(page.locator('#enrol-scan'), 'QR code and secret');
    const src = await page.locator('#enrol-qr').getAttribute('src');
    assert(src && src.startsWith('data:image/svg+xml;base64,'), `QR src ${String(src).slice(0, 40)}`);
    assert(Buffer.from(src.split(',')[1], 'base64').toString('utf8').includes('<svg'), 'the QR image is not an SVG');
    await until('the QR image to render', () => page.locator('#enrol-qr').evaluate((i) => i.complete && i.naturalWidth > 0));
    assert((await page.locator('svg').count()) === 0, 'SVG markup was put into the page');
    if (shot) await w.shot(page, shot);
    const secret = await page.locator('#enrol-secret').getAttribute('data-secret');
    assert(/^[A-Z2-7]{16,}=*$/.test(secret), `secret ${secret}`);
    await page.locator('#enrol-code').fill(totpAt(secret, totpStep() - 5)); // an old code
    await page.locator('#enrol-confirm').click();
    await waitText(page.locator('#enrol-error'), /not right/, 'a wrong code is refused');
    const step = totpStep();
    await page.locator('#enrol-code').fill(totpAt(secret, step));
    await page.locator('#enrol-confirm').click();
    await waitVisible(page.locator('#enrol-done'), 'recovery codes');
    const codes = await page.locator('#recovery-codes li').allTextContents();
    assert(codes.length === 10, `${codes.length} recovery codes`);
    return { secret, step, codes };
  };
  const { secret, step, codes } = await enrol(op.page, 'console-totp-qr.png');
  await w.shot(op.page, 'console-totp-codes.png');
  await op.page.locator('#enrol-finish').click();
  await waitText(op.page.locator('#acct-totp'), /on/, 'two-factor on');
  await op.page.locator('#logout-btn').click();
  await waitVisible(op.page.locator('#login-form'), 'login form after logout');

  // without a code: refused; with the next code: in; with a recovery code: in
  await login(w, op.page, w.admin);
  await waitText(op.page.locator('#login-error'), /^Invalid credentials$/, 'login without a code', LOGIN_TIMEOUT);
  await login(w, op.page, w.admin, { totp: totpAt(secret, Math.max(step + 1, totpStep())) });
  await waitVisible(op.page.locator('#app-view'), 'console after login with a code', LOGIN_TIMEOUT);
  await op.page.locator('#logout-btn').click();
  await waitVisible(op.page.locator('#login-form'), 'login form after logout');
  await login(w, op.page, w.admin, { totp: codes[0] });
  await waitVisible(op.page.locator('#app-view'), 'console after login with a recovery code', LOGIN_TIMEOUT);

  // a role the policy makes use two factors goes straight to enrolment
  w.demo.editPolicy('accounts.toml', { totp_required_roles: '["supervisor"]' });
  await w.demo.reload();
  const sue = w.addOperator('sue', { display: 'Sue Super', role: 'supervisor' });
  const sup = await w.console('sue', sue, { expectEnrol: true });
  await waitVisible(sup.page.locator('#enrol-required'), 'the enrolment is required');
  assert(await sup.page.locator('#app-view').isHidden(), 'the console shows before enrolment');
  const r = await sup.api('GET', '/api/v1/operator/state');
  assert(r.status === 403 && r.data && r.data.enrol === true, `GET /state before enrolment: ${r.status} ${JSON.stringify(r.data)}`);
  await enrol(sup.page);
  await sup.page.locator('#enrol-finish').click();
  await waitVisible(sup.page.locator('#app-view'), 'console after the enrolment');
  await waitText(sup.page.locator('#conn-state'), /Live/, 'event stream after the enrolment');
}

const SCENARIOS = [
  ['live-visitors', liveVisitors],
  ['invite', invite],
  ['prechat', prechat],
  ['queue-position', queuePosition],
  ['routing', routing],
  ['offline-message', offlineMessage],
  ['typing', typing],
  ['canned', canned],
  ['transfer', transfer],
  ['monitor-whisper', monitorWhisper],
  ['wrapup-rating-transcript', wrapupRatingTranscript],
  ['stats', stats],
  ['search', search],
  ['roles', roles],
  ['totp', totp],
];

/* ---------------- run ---------------- */

function withTimeout(p, ms, what) {
  let timer;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms / 1000} s`)), ms); }),
  ]);
}

let passed = 0;
let failed = 0;
const okNames = new Set();
const unknown = (args.only || []).filter((n) => !SCENARIOS.some(([s]) => s === n));
if (unknown.length) {
  console.error(`unknown scenario(s): ${unknown.join(', ')}`);
  process.exit(2);
}
const started = Date.now();
for (const [name, fn] of SCENARIOS) {
  if (args.only && !args.only.includes(name)) continue;
  const w = new World(name);
  let bad = false;
  const t0 = Date.now();
  try {
    await withTimeout(fn(w), SCENARIO_TIMEOUT, name);
    w.watch.check();
    await assertNoXss(w.pages.filter(([, p]) => !p.isClosed()));
    passed++;
    okNames.add(name);
    console.log(`ok ${name}`);
  } catch (err) {
    bad = true;
    failed++;
    console.log(`FAIL ${name}: ${oneLine(err)}`);
    await w.failureShots();
    if (w.demo.logPath) console.log(`#   ${name}: demo dir kept: ${w.demo.dir}; daemon log: ${w.demo.logPath}`);
    if (w.watch.pageErrors.length) console.log(`#   script errors: ${w.watch.pageErrors.join(' ; ').slice(0, 400)}`);
    if (w.watch.consoleErrors.length) console.log(`#   console errors: ${w.watch.consoleErrors.join(' ; ').slice(0, 400)}`);
  } finally {
    await w.close(bad);
  }
  if (process.env.E2E_TIMING) console.log(`#   ${name}: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

// the README pictures: the console with visitors, chats and stats; the widget in a chat
const docs = [
  ['stats', 'console-overview.png', 'console.png'],
  ['typing', 'widget-chat.png', 'widget.png'],
];
for (const [scenario, from, to] of docs) {
  const src = path.join(args.screenshots, from);
  if (args.docs && okNames.has(scenario) && fs.existsSync(src)) {
    fs.mkdirSync(args.docs, { recursive: true });
    fs.copyFileSync(src, path.join(args.docs, to));
  }
}
console.log(`# screenshots in ${args.screenshots} (${((Date.now() - started) / 1000).toFixed(0)} s)`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed > 0 ? 1 : 0);
