// Shared pieces of the headless-Chromium tests: a `palisade demo` per test group, its
// policy and operators, browser contexts that record CSP violations and script errors,
// and waiting helpers that wait on real conditions (never fixed sleeps).

import { chromium } from 'playwright-core';
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const CHROMIUM = process.env.PALISADE_CHROMIUM || '/usr/bin/chromium';
export const STEP_TIMEOUT = 20_000;   // one real condition (an event over the network)
export const LOGIN_TIMEOUT = 45_000;  // argon2id on a busy 2-core machine
export const DEMO_TIMEOUT = 60_000;   // demo.json must appear within this

export function assert(cond, why) {
  if (!cond) throw new Error(why);
}

export function oneLine(err) {
  const text = err && err.message ? err.message : String(err);
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('='.repeat(5)))
    .slice(0, 4)
    .join(' | ');
}

export function escapeRe(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Poll a condition until it holds (real condition, bounded time). */
export async function until(what, fn, timeout = STEP_TIMEOUT, interval = 100) {
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
        (last instanceof Error ? ` (last error: ${oneLine(last)})` : (last !== undefined && last !== false && last !== null ? ` (last: ${JSON.stringify(last)})` : '')));
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

/** Wait until `locator` is visible and its text matches `re`; on timeout say what it showed. */
export async function waitText(locator, re, what, timeout = STEP_TIMEOUT) {
  try {
    await locator.filter({ hasText: re }).first().waitFor({ state: 'visible', timeout });
  } catch {
    let got;
    try {
      const n = await locator.count();
      const texts = [];
      for (let i = 0; i < Math.min(n, 4); i++) texts.push((await locator.nth(i).textContent({ timeout: 1000 })) ?? '');
      got = n === 0 ? '(element not found)' : JSON.stringify(texts.length === 1 ? texts[0] : texts);
    } catch {
      got = '(element not found)';
    }
    throw new Error(`${what}: expected text ${re}, got ${got}`);
  }
}

export async function waitVisible(locator, what, timeout = STEP_TIMEOUT) {
  try {
    await locator.first().waitFor({ state: 'visible', timeout });
  } catch {
    throw new Error(`${what}: not visible within ${timeout} ms`);
  }
}

export async function waitHidden(locator, what, timeout = STEP_TIMEOUT) {
  try {
    await locator.first().waitFor({ state: 'hidden', timeout });
  } catch {
    throw new Error(`${what}: still visible after ${timeout} ms`);
  }
}

/* ---------------- TOTP (RFC 6238, SHA-1, 6 digits, 30 s) ---------------- */

export function base32Decode(s) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0;
  let value = 0;
  const out = [];
  for (const ch of s.toUpperCase().replace(/[\s=-]/g, '')) {
    const i = alphabet.indexOf(ch);
    if (i < 0) throw new Error(`not base32: ${ch}`);
    value = (value << 5) | i;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 255);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

export function totpAt(secret, step) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const h = crypto.createHmac('sha1', base32Decode(secret)).update(counter).digest();
  const o = h[h.length - 1] & 15;
  return String((h.readUInt32BE(o) & 0x7fffffff) % 1_000_000).padStart(6, '0');
}

export function totpStep(ms = Date.now()) {
  return Math.floor(ms / 1000 / 30);
}

/* ---------------- the daemon ---------------- */

let liveDemos = new Set();

function killAll() {
  for (const d of liveDemos) d.signal('SIGKILL');
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    killAll();
    process.exit(130);
  });
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export class Demo {
  constructor(bin) {
    this.bin = bin;
    this.proc = null;
    this.exited = null;
    this.info = null;
    this.dir = null;
    this.logPath = null;
  }

  async start() {
    assert(fs.existsSync(this.bin), `binary not found: ${this.bin}`);
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'palisade-e2e-'));
    this.logPath = `${this.dir}.log`;
    const log = fs.openSync(this.logPath, 'w', 0o600);
    this.proc = spawn(this.bin, ['demo', '--dir', this.dir], {
      stdio: ['ignore', log, log],
      detached: true, // own process group, so everything it starts is stopped with it
      env: { ...process.env, RUST_BACKTRACE: '1' },
    });
    fs.closeSync(log);
    liveDemos.add(this);
    this.proc.on('exit', (code, signal) => { this.exited = { code, signal }; });
    this.proc.on('error', (err) => { this.exited = { code: null, signal: null, error: err.message }; });
    this.info = await this.waitForDemoJson();
    return this.info;
  }

  async waitForDemoJson() {
    const file = path.join(this.dir, 'demo.json');
    const deadline = Date.now() + DEMO_TIMEOUT;
    let lastErr = 'not written yet';
    for (;;) {
      if (this.exited) {
        throw new Error(`palisade demo exited early (${JSON.stringify(this.exited)}); log: ${this.logTail(8)}`);
      }
      try {
        const parsed = JSON.parse(fs.readFileSync(file, 'utf8'));
        const need = ['visitor_url', 'operator_url', 'demo_page_url', 'operator_user', 'operator_password',
          'auth_string', 'visitor_pin', 'operator_pin', 'config', 'policy_dir', 'state_dir', 'pid'];
        const missing = need.filter((k) => parsed[k] === undefined || parsed[k] === null || parsed[k] === '');
        if (missing.length === 0) return parsed;
        lastErr = `missing keys: ${missing.join(', ')}`;
      } catch (e) {
        lastErr = e.code === 'ENOENT' ? 'not written yet' : e.message;
      }
      if (Date.now() > deadline) {
        throw new Error(`demo.json not ready within ${DEMO_TIMEOUT / 1000} s (${lastErr}); log: ${this.logTail(8)}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  logText() {
    try {
      return fs.readFileSync(this.logPath, 'utf8');
    } catch {
      return '';
    }
  }

  logTail(n) {
    const lines = this.logText().trim().split('\n');
    return lines.slice(-n).join(' / ') || '(no log)';
  }

  policyFile(name) {
    return path.join(this.info.policy_dir, name);
  }

  /** Replace keys of a policy file (`key = value` lines, TOML values given as text). */
  editPolicy(file, edits, sectionEdits = {}) {
    const p = this.policyFile(file);
    let text = fs.readFileSync(p, 'utf8');
    const apply = (body, key, value) => {
      const re = new RegExp(`^${escapeRe(key)}\\s*=.*$`, 'm');
      if (re.test(body)) return body.replace(re, `${key} = ${value}`);
      return null;
    };
    for (const [k, v] of Object.entries(edits)) {
      const top = text.split(/^\[/m)[0];
      const rest = text.slice(top.length);
      const changed = apply(top, k, v);
      text = changed !== null ? changed + rest : `${k} = ${v}\n` + text;
    }
    for (const [section, kv] of Object.entries(sectionEdits)) {
      const header = `[${section}]`;
      const at = text.indexOf(header);
      assert(at >= 0, `${file} has no ${header}`);
      const start = at + header.length;
      const next = text.indexOf('\n[', start);
      const end = next < 0 ? text.length : next;
      let body = text.slice(start, end);
      for (const [k, v] of Object.entries(kv)) {
        const changed = apply(body, k, v);
        body = changed !== null ? changed : `\n${k} = ${v}` + body;
      }
      text = text.slice(0, start) + body + text.slice(end);
    }
    // policy files must not be writable by others; keep the mode the demo gave them
    const mode = fs.statSync(p).mode & 0o777;
    fs.writeFileSync(p, text, { mode });
    fs.chmodSync(p, mode);
  }

  /** SIGHUP the daemon and wait until it announced the new policy (or refused it). */
  async reload() {
    const count = (re) => (this.logText().match(re) || []).length;
    const loaded = /policy_loaded/g;
    const refused = /policy_reload_refused|reload refused/g;
    // Older demos wrote demo.json a moment before they listened for SIGHUP (which would
    // then end the process); the banner's last line came after that. Wait for it briefly.
    await until('the demo banner', () => /Everything \(credentials too\) is in/.test(this.logText()), 3_000, 50)
      .catch(() => {});
    const before = count(loaded);
    const refusedBefore = count(refused);
    process.kill(this.info.pid, 'SIGHUP');
    await until('the daemon to reload its policy', () => {
      if (this.exited || !alive(this.info.pid)) {
        throw new Error(`the daemon ended on SIGHUP: ${this.logTail(3)}`);
      }
      if (count(refused) > refusedBefore) {
        throw new Error(`reload refused: ${this.logTail(4)}`);
      }
      return count(loaded) > before;
    }, 15_000);
  }

  /** `palisade operator add` with the password on stdin. */
  addOperator(username, { role = 'operator', display = username, departments = [], password } = {}) {
    const pw = password || `pw-${crypto.randomBytes(9).toString('base64url')}`;
    const args = ['operator', 'add', username, '--config', this.info.config, '--role', role, '--display-name', display];
    if (departments.length) args.push('--departments', departments.join(','));
    const r = spawnSync(this.bin, args, { input: `${pw}\n`, encoding: 'utf8', timeout: 60_000 });
    if (r.status !== 0) {
      throw new Error(`operator add ${username} failed (${r.status}): ${(r.stderr || r.stdout || '').trim().split('\n').slice(-2).join(' / ')}`);
    }
    return { username, password: pw, display, role };
  }

  signal(sig) {
    if (this.proc && this.proc.pid && !this.exited) {
      try { process.kill(-this.proc.pid, sig); } catch { /* group gone */ }
      try { process.kill(this.proc.pid, sig); } catch { /* gone */ }
    }
    const pid = this.info && Number.isInteger(this.info.pid) ? this.info.pid : null;
    if (pid && pid > 1 && (!this.proc || pid !== this.proc.pid) && alive(pid)) {
      try { process.kill(pid, sig); } catch { /* gone */ }
    }
  }

  async stop({ keep = false } = {}) {
    this.signal('SIGTERM');
    const deadline = Date.now() + 10_000;
    const pid = this.info && Number.isInteger(this.info.pid) ? this.info.pid : null;
    while (Date.now() < deadline) {
      if ((!this.proc || this.exited) && (!pid || !alive(pid))) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    if (!this.exited) this.signal('SIGKILL');
    liveDemos.delete(this);
    if (!keep && this.dir) {
      fs.rmSync(this.dir, { recursive: true, force: true });
      fs.rmSync(this.logPath, { force: true });
    }
  }
}

/* ---------------- the browser ---------------- */

export async function launchBrowser(pins) {
  assert(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing (apt-get install chromium)`);
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 60_000,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      `--ignore-certificate-errors-spki-list=${[...new Set(pins.map((p) => p.replace(/^sha256\//, '')))].join(',')}`,
    ],
  });
}

/**
 * Records CSP violations, uncaught script errors and console errors of every page of
 * every context made through it. `expect(re)` whitelists console errors a test provokes
 * on purpose (a wrong password, a forbidden request).
 */
export class Watch {
  constructor() {
    this.violations = [];
    this.pageErrors = [];
    this.consoleErrors = [];
    this.expected = [
      /status of 401 .*\/api\/v1\/operator\/me\b/, // not signed in yet
      /\/favicon\.ico/,
    ];
  }

  expect(re) {
    this.expected.push(re);
  }

  async context(browser, label, viewport = { width: 1280, height: 800 }, extra = {}) {
    const ctx = await browser.newContext({ viewport, locale: 'en-US', serviceWorkers: 'block', acceptDownloads: true, ...extra });
    ctx.setDefaultTimeout(STEP_TIMEOUT);
    await ctx.exposeBinding('__palisadeReportViolation', (source, v) => {
      this.violations.push({ context: label, frame: source.frame ? source.frame.url() : '?', ...v });
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
    ctx.on('page', (page) => this.watchPage(page, label));
    return ctx;
  }

  watchPage(page, label) {
    page.on('pageerror', (err) => this.pageErrors.push(`${label}: ${err.message}`));
    page.on('console', (msg) => {
      if (msg.type() !== 'error') return;
      const text = msg.text();
      const url = (msg.location() && msg.location().url) || '';
      if (/Content[- ]Security[- ]Policy|Refused to (load|execute|apply|frame|connect)/i.test(text)) {
        this.violations.push({ context: label, console: text, url });
        return;
      }
      const line = `${text} ${url}`;
      if (this.expected.some((re) => re.test(line))) return;
      this.consoleErrors.push(`${label}: ${text}${url ? ` (${url})` : ''}`);
    });
  }

  /** Throws when anything went wrong in any page so far. */
  check() {
    assert(this.violations.length === 0, `CSP violations: ${JSON.stringify(this.violations).slice(0, 600)}`);
    assert(this.pageErrors.length === 0, `script errors: ${this.pageErrors.join(' ; ').slice(0, 600)}`);
    assert(this.consoleErrors.length === 0, `console errors: ${this.consoleErrors.join(' ; ').slice(0, 600)}`);
  }
}

/** window.__xss and recorded CSP violations in every frame of a page */
export async function frameChecks(page) {
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

export async function assertNoXss(pages) {
  for (const [label, page] of pages) {
    for (const f of await frameChecks(page)) {
      if (f.error) continue; // a frame that navigated away meanwhile
      assert(f.xss === null, `window.__xss = ${f.xss} in ${label} frame ${f.url}`);
      assert(!f.csp, `${f.csp} CSP violation(s) recorded in ${label} frame ${f.url}`);
    }
  }
}
