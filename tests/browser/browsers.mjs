// The browsers every shared test body runs in: Debian's Chromium (playwright-core) and
// Debian's Firefox ESR (puppeteer-core over WebDriver BiDi; playwright-core needs its own
// patched Firefox). A test body is written once against the small part of playwright's
// Page API the tests use; for Firefox, `FirefoxPage` gives that API over puppeteer's.
//
// `STOREPULSE_BROWSERS=chromium` (or `firefox`) runs one of them only.
import puppeteer from 'puppeteer-core';
import { test } from 'node:test';
import { launch as launchChromium } from './support.mjs';

/// Which browsers run (default: both).
export const browserNames = (process.env.STOREPULSE_BROWSERS ?? 'chromium,firefox')
  .split(',').map((b) => b.trim()).filter(Boolean);

/// One `test` per browser for `body(launch, name)`: "title (chromium)", "title (firefox)".
export function inEveryBrowser(title, body, options = {}) {
  for (const name of browserNames) {
    test(`${title} (${name})`, options, () => body(() => launchNamed(name), name));
  }
}

/// A headless browser by name, with playwright's `Browser` API (the part the tests use).
export async function launchNamed(name) {
  if (name === 'chromium') return launchChromium();
  if (name !== 'firefox') throw new Error(`unknown browser ${name} (chromium, firefox)`);
  const browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: '/usr/bin/firefox-esr',
    headless: true,
    acceptInsecureCerts: true,
  });
  return new FirefoxBrowser(browser);
}

/// Counts the EventSources a page opens (each `new EventSource`; the browser's own
/// reconnects of one are not new ones) in `window.__eventSources`, from before its scripts
/// run: `await countEventSources(page)` before `page.goto`.
export async function countEventSources(page) {
  await page.addInitScript(() => {
    const Original = window.EventSource;
    window.__eventSources = 0;
    window.EventSource = function EventSource(url, init) {
      window.__eventSources += 1;
      return new Original(url, init);
    };
    window.EventSource.prototype = Original.prototype;
    for (const key of ['CONNECTING', 'OPEN', 'CLOSED']) window.EventSource[key] = Original[key];
  });
}

class FirefoxBrowser {
  constructor(browser) { this.browser = browser; }

  async newContext(options = {}) {
    return new FirefoxContext(await this.browser.createBrowserContext(), options);
  }

  async newPage(options = {}) {
    return (await this.newContext(options)).newPage();
  }

  async close() { await this.browser.close(); }
}

class FirefoxContext {
  constructor(context, options) {
    this.context = context;
    this.options = options;
  }

  async newPage() {
    const page = await this.context.newPage();
    const viewport = this.options.viewport ?? { width: 1280, height: 720 };
    await page.setViewport({ ...viewport, deviceScaleFactor: this.options.deviceScaleFactor ?? 1 });
    return new FirefoxPage(page);
  }
}

/// playwright's Page methods the tests use, over puppeteer's Page.
class FirefoxPage {
  constructor(page) { this.page = page; }

  goto(url) { return this.page.goto(url); }

  reload() { return this.page.reload(); }

  close() { return this.page.close(); }

  screenshot(options) { return this.page.screenshot(options); }

  click(selector) { return this.page.click(selector); }

  $$(selector) { return this.page.$$(selector); }

  $eval(selector, fn, arg) { return this.page.$eval(selector, fn, arg); }

  $$eval(selector, fn, arg) { return this.page.$$eval(selector, fn, arg); }

  selectOption(selector, value) { return this.page.select(selector, value); }

  addInitScript(fn) { return this.page.evaluateOnNewDocument(fn); }

  /// The value `fn(arg)` returns in the page, carried as JSON text made in the page: over
  /// BiDi an object that appears twice in a value (the page shares objects between a store
  /// and the rollup) comes back as null the second time.
  async evaluate(fn, arg) {
    // An expression (evaluated by the driver, so the page's CSP does not forbid it).
    const text = await this.page.evaluate(`(async () => {
      const value = await (${fn.toString()})(${arg === undefined ? '' : JSON.stringify(arg)});
      return value === undefined ? '__undefined__' : JSON.stringify(value);
    })()`);
    return text === '__undefined__' ? undefined : JSON.parse(text);
  }

  textContent(selector) { return this.page.$eval(selector, (e) => e.textContent); }

  getAttribute(selector, name) { return this.page.$eval(selector, (e, n) => e.getAttribute(n), name); }

  async isVisible(selector) {
    return this.page.evaluate((s) => {
      const element = document.querySelector(s);
      if (!element) return false;
      const box = element.getBoundingClientRect();
      return box.width > 0 && box.height > 0 && getComputedStyle(element).visibility !== 'hidden';
    }, selector);
  }

  async isHidden(selector) { return !(await this.isVisible(selector)); }

  fill(selector, value) {
    return this.page.$eval(selector, (e, v) => {
      e.value = v;
      e.dispatchEvent(new Event('input', { bubbles: true }));
    }, value);
  }

  waitForSelector(selector, options = {}) {
    return this.page.waitForSelector(selector, options.state === 'hidden' ? { hidden: true } : { visible: true });
  }

  on(event, handler) {
    if (event === 'console') return this.page.on('console', (m) => handler({ type: () => m.type(), text: () => m.text() }));
    return this.page.on(event, handler);
  }
}
