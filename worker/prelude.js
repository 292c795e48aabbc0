// signfeed pre-request script shim: the `os` API plus the few browser globals vendor scripts use.
// Evaluated once per engine context, as a module (so its stack frames never carry the user's file name),
// before any user code. One context then serves many runs, so the shim also hardens it: every intrinsic
// is frozen and every global binding locked, and each run ends by deleting the globals it added.
(function () {
  'use strict';
  const G = globalThis;
  // dukpy re-installs `call_python` and `dukpy` on the global object before every eval, so deleting
  // them is not enough: non-configurable accessors that read as undefined swallow the re-install,
  // and the only reference to the host function left is this closure.
  const host = G.call_python;
  for (const name of ['call_python', 'dukpy']) {
    Object.defineProperty(G, name, { get() { return undefined; }, set(_) {}, enumerable: false, configurable: false });
  }

  // Primordials captured now, before anything user-supplied can exist: the shim must never hand `host`
  // to a user-supplied function. (The hardening below freezes the builtins too; this does not rely on it.)
  const { stringify, parse } = JSON;
  const { defineProperty, freeze, getPrototypeOf, getOwnPropertyDescriptor, isExtensible } = Object;
  const keysOf = Object.keys;
  const { ownKeys, apply, construct, deleteProperty } = Reflect;
  const reflectDefine = Reflect.defineProperty;
  const fnToString = Function.prototype.toString;
  const promiseThen = Promise.prototype.then;
  const ObjectProto = Object.prototype;
  const SafeSet = Set;
  const SafeMap = Map;
  const SafeProxy = Proxy;
  const Prom = Promise;
  const Err = Error;
  const DOMErr = DOMException;
  const Str = String;
  const fromCharCode = String.fromCharCode;
  const encodeComponent = encodeURIComponent;
  const decodeComponent = decodeURIComponent;

  // Fixed arity rather than spread: spreading would run the (patchable) array iterator.
  function call(name, a, b, c) {
    const reply = host(name, a, b, c);
    if (reply && reply.error !== undefined) throw new Err(reply.error);
    return reply ? reply.ok : undefined;
  }

  function isPlainObject(value) {
    if (value === null || typeof value !== 'object') return false;
    const proto = getPrototypeOf(value);
    return proto === Object.prototype || proto === null;
  }

  // ---- console: lines go straight to the host so they survive a failing run ----
  function show(value) {
    if (typeof value === 'string') return value;
    if (value instanceof Err) return value.name + ': ' + value.message;
    if (value === undefined || typeof value === 'function' || typeof value === 'symbol') return Str(value);
    try {
      const text = stringify(value);
      return text === undefined ? Str(value) : text;
    } catch (_) {
      return Str(value);
    }
  }
  function logger(level) {
    return function (...args) {
      const parts = [];
      for (let i = 0; i < args.length; i++) parts[i] = show(args[i]);
      call('sf_console', level, parts.join(' '));
    };
  }
  const console = freeze({
    log: logger('log'), info: logger('info'), warn: logger('warn'), error: logger('error'), debug: logger('log'),
  });

  // ---- form encoding (application/x-www-form-urlencoded, as URLSearchParams serialises) ----
  function formEncode(text) {
    return encodeComponent(Str(text).toWellFormed())
      .replace(/[!'()~]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase())
      .replace(/%20/g, '+');
  }
  function formDecode(text) {
    const spaced = text.replace(/\+/g, ' ');
    try {
      return decodeComponent(spaced);
    } catch (_) {
      return spaced;
    }
  }

  class URLSearchParams {
    #list = [];
    constructor(init) {
      if (init === undefined || init === null) return;
      if (init instanceof URLSearchParams) {
        for (const pair of init.#list) this.#list.push([pair[0], pair[1]]);
      } else if (typeof init === 'object' && typeof init[Symbol.iterator] === 'function') {
        for (const pair of init) {
          if (pair === null || typeof pair !== 'object' || pair.length !== 2) {
            throw new TypeError('URLSearchParams: each pair must have exactly two items');
          }
          this.#list.push([Str(pair[0]), Str(pair[1])]);
        }
      } else if (typeof init === 'object') {
        for (const key of keysOf(init)) this.#list.push([key, Str(init[key])]);
      } else {
        this.#parse(Str(init));
      }
    }
    #parse(text) {
      const query = text.startsWith('?') ? text.slice(1) : text;
      for (const piece of query.split('&')) {
        if (piece === '') continue;
        const at = piece.indexOf('=');
        const name = at < 0 ? piece : piece.slice(0, at);
        const value = at < 0 ? '' : piece.slice(at + 1);
        this.#list.push([formDecode(name), formDecode(value)]);
      }
    }
    get size() { return this.#list.length; }
    append(name, value) { this.#list.push([Str(name), Str(value)]); }
    delete(name) { this.#list = this.#list.filter((pair) => pair[0] !== Str(name)); }
    get(name) {
      const pair = this.#list.find((p) => p[0] === Str(name));
      return pair ? pair[1] : null;
    }
    getAll(name) { return this.#list.filter((p) => p[0] === Str(name)).map((p) => p[1]); }
    has(name) { return this.#list.some((p) => p[0] === Str(name)); }
    set(name, value) {
      const key = Str(name);
      const at = this.#list.findIndex((p) => p[0] === key);
      if (at < 0) {
        this.#list.push([key, Str(value)]);
        return;
      }
      this.#list[at] = [key, Str(value)];
      this.#list = this.#list.filter((p, i) => i <= at || p[0] !== key);
    }
    sort() { this.#list.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)); }
    forEach(fn, thisArg) { for (const [k, v] of this.#list) fn.call(thisArg, v, k, this); }
    *entries() { for (const [k, v] of this.#list) yield [k, v]; }
    *keys() { for (const pair of this.#list) yield pair[0]; }
    *values() { for (const pair of this.#list) yield pair[1]; }
    [Symbol.iterator]() { return this.entries(); }
    toString() { return this.#list.map((p) => formEncode(p[0]) + '=' + formEncode(p[1])).join('&'); }
  }

  // ---- base64 with browser semantics: Latin-1 strings only ----
  const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  function btoa(input) {
    const text = Str(input);
    let out = '';
    for (let i = 0; i < text.length; i += 3) {
      const a = text.charCodeAt(i), b = text.charCodeAt(i + 1), c = text.charCodeAt(i + 2);
      if (a > 0xff || b > 0xff || c > 0xff) {
        throw new DOMErr('btoa: the string contains characters outside of the Latin1 range', 'InvalidCharacterError');
      }
      const n = (a << 16) | ((b || 0) << 8) | (c || 0);
      out += ALPHABET[n >> 18] + ALPHABET[(n >> 12) & 63];
      out += i + 1 < text.length ? ALPHABET[(n >> 6) & 63] : '=';
      out += i + 2 < text.length ? ALPHABET[n & 63] : '=';
    }
    return out;
  }
  function atob(input) {
    let text = Str(input).replace(/[\t\n\f\r ]/g, '');
    if (text.length % 4 === 0) text = text.replace(/==?$/, '');
    if (text.length % 4 === 1 || /[^A-Za-z0-9+/]/.test(text)) {
      throw new DOMErr('atob: the string to be decoded is not correctly encoded', 'InvalidCharacterError');
    }
    let out = '', bits = 0, count = 0;
    for (let i = 0; i < text.length; i++) {
      bits = (bits << 6) | ALPHABET.indexOf(text[i]);
      count += 6;
      if (count >= 8) {
        count -= 8;
        out += fromCharCode((bits >> count) & 0xff);
      }
    }
    return out;
  }

  // ---- timers ----
  // Virtual time: nothing outside the script can happen while it waits (requests are synchronous
  // host calls), so the host fires due timers back to back in due-time order instead of sleeping.
  // Date.now() still reports real time.
  let timers = [];
  let timerSeq = 0;
  let virtualNow = 0;
  function setTimeout(fn, delay, ...args) {
    if (typeof fn !== 'function') throw new TypeError('setTimeout: the callback must be a function');
    const id = ++timerSeq;
    const wait = Number(delay) > 0 ? Number(delay) : 0;
    timers.push({ id, due: virtualNow + wait, fn, args });
    return id;
  }
  function clearTimeout(id) {
    timers = timers.filter((t) => t.id !== id);
  }
  function fireNextTimer() {
    if (timers.length === 0) return false;
    let next = 0;
    for (let i = 1; i < timers.length; i++) {
      const t = timers[i], best = timers[next];
      if (t.due < best.due || (t.due === best.due && t.id < best.id)) next = i;
    }
    const timer = timers[next];
    timers.splice(next, 1);
    virtualNow = timer.due;
    timer.fn(...timer.args);
    return true;
  }

  // ---- HTTP through the host ----
  function findHeader(headers, name) {
    for (const key of keysOf(headers)) if (key.toLowerCase() === name) return key;
    return undefined;
  }
  function stringMap(source, what) {
    const out = {};
    if (source === undefined || source === null) return out;
    if (source instanceof URLSearchParams) {
      for (const [k, v] of source) out[k] = v;
      return out;
    }
    if (typeof source !== 'object') throw new TypeError(what + ' must be an object');
    for (const key of keysOf(source)) {
      if (source[key] !== undefined && source[key] !== null) out[key] = Str(source[key]);
    }
    return out;
  }
  function encodeObjectBody(data, headers) {
    const typeKey = findHeader(headers, 'content-type');
    const type = typeKey === undefined ? '' : headers[typeKey].toLowerCase();
    const formish = typeKey === undefined || type.includes('x-www-form-urlencoded');
    if (formish && isPlainObject(data)) {
      if (typeKey === undefined) headers['content-type'] = 'application/x-www-form-urlencoded';
      const parts = [];
      for (const key of keysOf(data)) {
        const value = data[key];
        if (value !== undefined) parts.push(formEncode(key) + '=' + formEncode(value === null ? '' : value));
      }
      return parts.join('&');
    }
    if (typeKey === undefined) headers['content-type'] = 'application/json';
    return stringify(data);
  }
  function encodeBody(data, headers) {
    if (data === undefined || data === null) return null;
    if (typeof data === 'string') return data;
    if (data instanceof URLSearchParams) {
      if (findHeader(headers, 'content-type') === undefined) {
        headers['content-type'] = 'application/x-www-form-urlencoded';
      }
      return data.toString();
    }
    if (typeof data === 'object') return encodeObjectBody(data, headers);
    return Str(data);
  }
  function parseData(text) {
    const clean = text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
    try {
      return parse(clean);
    } catch (_) {
      return text;
    }
  }
  function snippet(text) {
    const flat = text.replace(/\s+/g, ' ').trim();
    return flat.length > 200 ? flat.slice(0, 200) + '…' : flat;
  }
  function settle(reply) {
    const headers = {};
    for (const key of keysOf(reply.headers)) headers[key.toLowerCase()] = reply.headers[key];
    const response = { status: reply.status, headers, data: parseData(reply.text) };
    if (reply.status >= 200 && reply.status < 300) return response;
    const error = new Err('Request failed with status ' + reply.status + ': ' + snippet(reply.text));
    error.response = response;
    throw error;
  }
  function sendRequest(config) {
    if (config === null || typeof config !== 'object') throw new TypeError('os.request needs a config object');
    const headers = stringMap(config.headers, 'headers');
    const body = encodeBody(config.data, headers);
    const timeout = Number(config.timeout) > 0 ? Number(config.timeout) / 1000 : null;
    const reply = call('sf_host', 'http', {
      method: Str(config.method || 'GET').toUpperCase(),
      url: Str(config.url),
      headers,
      params: stringMap(config.params, 'params'),
      body,
      timeout,
    });
    return settle(reply);
  }
  // Requests run synchronously inside the executor; a failure becomes a rejection, as with axios.
  function request(config) {
    return new Prom((resolve) => resolve(sendRequest(config)));
  }
  function getRequest(url, config) {
    return request({ ...(config || {}), method: 'GET', url });
  }
  function postRequest(url, data, config) {
    return request({ ...(config || {}), method: 'POST', url, data });
  }

  // Accessors whose setters throw, rather than frozen data properties: user code runs in sloppy mode,
  // where writing a frozen property fails silently, and overwriting the API should be a clear error.
  function readOnly(name, members) {
    const out = {};
    for (const key of keysOf(members)) {
      const value = members[key];
      defineProperty(out, key, {
        get() { return value; },
        set(_) { throw new TypeError(name + '.' + key + ' is read-only'); },
        enumerable: true,
        configurable: false,
      });
    }
    return freeze(out);
  }

  const os = readOnly('os', {
    request,
    getRequest,
    postRequest,
    context: readOnly('os.context', {
      get: (path) => call('sf_context', 'get', Str(path)),
      set: (path, value) => {
        call('sf_context', 'set', Str(path), value === undefined ? null : value);
      },
    }),
    auth: readOnly('os.auth', {
      token: (name) => new Prom((resolve) => resolve(call('sf_host', 'auth_token', { name: Str(name) }).token)),
    }),
  });

  // ---- runs ----
  // The host evaluates `__signfeed.run(<length>, async () => {<user code>\n});` as a classic script (the
  // prefix sits on the user's first line, so line numbers stay the user's). A top-level `const` or
  // `function` is then local to the arrow, not a global. Code that closes the arrow early could
  // declare global lexical bindings, which nothing can delete: the arrow's expected source length comes
  // first in the script, where user code cannot change it, so a shorter arrow exposes that, and the
  // host discards the context after the run.
  let active = false;
  let finished = false;
  let baseline = new SafeSet();
  let globalProto = null;

  function markDirty() {
    call('sf_dirty');
  }

  function run(length, fn) {
    if (active || typeof fn !== 'function' || apply(fnToString, fn, []).length !== length) markDirty();
    active = true;
    finished = false;
    timers = [];
    timerSeq = 0;
    virtualNow = 0;
    // The rejection handler rethrows, so a failing script leaves this chain rejected and unhandled, and the
    // engine reports it (with the script's own stack) like any other unhandled rejection.
    apply(promiseThen, fn(), [() => { finished = true; }, rethrowReadably]);
    return status;
  }

  // A thrown plain object would read "[object Object]": say what it holds. (Errors keep their stack and so the
  // user's line; a thrown string or number already reads as itself.)
  function rethrowReadably(reason) {
    if (reason !== null && typeof reason === 'object' && !(reason instanceof Err)) throw new Err(show(reason));
    throw reason;
  }

  // Delete what the run added to globalThis; built-in globals are locked, so a count tells.
  function end() {
    active = false;
    const keys = ownKeys(G);
    if (keys.length !== baseline.size) {
      for (const key of keys) {
        if (!baseline.has(key) && !deleteProperty(G, key)) markDirty();
      }
    }
    if (getPrototypeOf(G) !== globalProto || !isExtensible(G)) markDirty();
  }

  // The engine serialises an eval's completion value after draining its jobs, so this reports the
  // state the run settled in: "timers" (fire the next one), "done" or "pending" (awaits forever).
  const status = freeze({
    toJSON() {
      if (timers.length > 0) return 'timers';
      end();
      return finished ? 'done' : 'pending';
    },
  });

  function tick() {
    fireNextTimer();
    return status;
  }

  // ---- install globals ----
  defineProperty(G, 'os', {
    get() { return os; },
    set(_) { throw new TypeError('os is read-only'); },
    enumerable: false,
    configurable: false,
  });
  const shared = { console, URLSearchParams, btoa, atob, setTimeout, clearTimeout };
  for (const name of keysOf(shared)) {
    defineProperty(G, name, { value: shared[name], writable: true, enumerable: false, configurable: true });
  }
  // The host drives runs and timers through this; a script calling it can only hurt its own run.
  defineProperty(G, '__signfeed', { value: freeze({ run, tick }), writable: false, configurable: false });

  // A FinalizationRegistry callback can fire during a later run; a run that creates one gets a fresh
  // context afterwards.
  if (typeof FinalizationRegistry === 'function') {
    const Registry = FinalizationRegistry;
    const handler = freeze({
      construct(target, args, newTarget) {
        markDirty();
        return construct(target, args, newTarget);
      },
    });
    const guarded = new SafeProxy(Registry, handler);
    defineProperty(Registry.prototype, 'constructor', { value: guarded });
    defineProperty(G, 'FinalizationRegistry', { value: guarded });
  }

  // ---- hardening ----
  // Frozen, a property that ordinary code assigns on its own objects makes that assignment fail when
  // the object merely inherits it (the "override mistake": `Foo.prototype.constructor = Foo`,
  // `this.name = 'ApiError'` in an Error subclass). These few become accessors whose setter defines
  // the property on the receiver, and does nothing when the receiver is frozen (an intrinsic itself).
  // One getter/setter pair per name, not per property: the engine walks every live object twice per
  // evaluation, so each closure kept here costs every later run.
  const overridable = [
    [ObjectProto, ['constructor', 'toString', 'toLocaleString', 'valueOf', 'hasOwnProperty', 'isPrototypeOf',
      'propertyIsEnumerable']],
    [Function.prototype, ['toString']],
    [Err.prototype, ['toString']],
  ];
  const errors = [Err, EvalError, RangeError, ReferenceError, SyntaxError, TypeError, URIError, AggregateError];
  if (typeof InternalError === 'function') errors.push(InternalError);  // QuickJS's own (too much recursion)
  for (const E of errors) overridable.push([E.prototype, ['constructor', 'name', 'message']]);
  const tamed = new SafeMap();

  function tame(obj, key) {
    let entry = tamed.get(key);
    if (entry === undefined) {
      const homes = new SafeMap();
      entry = {
        homes,
        get() {
          // The first intrinsic on the receiver's chain that holds the name is the one being read.
          for (let o = this; o !== undefined && o !== null; o = getPrototypeOf(o)) {
            const value = homes.get(o);
            if (value !== undefined) return value;
          }
          return undefined;
        },
        set(value) {
          if ((typeof this === 'object' && this !== null) || typeof this === 'function') {
            reflectDefine(this, key, { value, writable: true, enumerable: true, configurable: true });
          }
        },
      };
      tamed.set(key, entry);
    }
    const desc = getOwnPropertyDescriptor(obj, key);
    entry.homes.set(obj, desc.value);
    defineProperty(obj, key, { get: entry.get, set: entry.set, enumerable: desc.enumerable, configurable: false });
  }

  // Freeze everything reachable from the roots through properties and prototypes, except globalThis.
  function harden(roots) {
    const seen = new SafeSet();
    seen.add(G);
    const stack = roots;
    while (stack.length > 0) {
      const obj = stack.pop();
      if ((typeof obj !== 'object' || obj === null) && typeof obj !== 'function') continue;
      if (seen.has(obj)) continue;
      seen.add(obj);
      for (const key of ownKeys(obj)) {
        const desc = getOwnPropertyDescriptor(obj, key);
        if ('value' in desc) {
          stack.push(desc.value);
        } else {
          stack.push(desc.get, desc.set);
        }
      }
      freeze(obj);
      stack.push(getPrototypeOf(obj));
    }
  }

  for (const [obj, keys] of overridable) {
    for (const key of keys) tame(obj, key);
  }

  // These two are setters on the Error constructor that change how the engine builds every later
  // stack trace (a hook that would see later runs' errors); pin them to their defaults as plain data.
  for (const key of ['prepareStackTrace', 'stackTraceLimit']) {
    const desc = getOwnPropertyDescriptor(Err, key);
    if (desc !== undefined && desc.set !== undefined) {
      const value = apply(desc.get, Err, []);
      defineProperty(Err, key, { value, writable: false, enumerable: desc.enumerable, configurable: false });
    }
  }

  const roots = [];
  for (const key of ownKeys(G)) {
    const desc = getOwnPropertyDescriptor(G, key);
    roots.push(desc.value, desc.get, desc.set);
  }
  // Intrinsics that no global names: the async function, generator and iterator prototypes.
  roots.push(
    async function () {},
    function* () {},
    async function* () {},
    (function* () {})(),
    (async function* () {})(),
    [][Symbol.iterator](),
    ''[Symbol.iterator](),
    new Map()[Symbol.iterator](),
    new Set()[Symbol.iterator](),
    /x/g[Symbol.matchAll](''),
  );
  if (typeof Iterator === 'function') {
    roots.push(Iterator.from({ next() { return { done: true }; } }), [].values().map((x) => x));
  }
  harden(roots);

  // Lock every global binding that exists now, so a script can neither replace a built-in for the
  // runs after it nor remove one (which also keeps the count in end() meaningful).
  for (const key of ownKeys(G)) {
    const desc = getOwnPropertyDescriptor(G, key);
    if (desc.configurable || desc.writable) {
      defineProperty(G, key, 'value' in desc ? { writable: false, configurable: false } : { configurable: false });
    }
  }
  baseline = new SafeSet(ownKeys(G));
  globalProto = getPrototypeOf(G);
})();
