// weft.js: the loader, and the glue to the wasm module. The build wraps this
// file in one function scope, so nothing leaks into the page but
// `window.weft`. `weftHost` is what the Rust side imports (`src/browser.rs`)
// and `wasm` the module's exports, both in wasm-bindgen's ABI (see "The
// glue" below; the build gives them the shipped module's short names and
// checks that `weftHost` has each import). Rule: nothing here may throw into
// the host page, and no `weftHost` function may throw into the module.
//
// The split: Rust (`src/api.rs`, `src/tracker.rs`) decides what is recorded,
// held, queued, stored and sent; this file does the browser's side of it in
// the fewer bytes JavaScript needs: the script tag's options, the public
// methods, storage and the anonymous-ID cookie, the page's context, click
// and route capture, timers, fetch and sendBeacon.
var w = window;
var d = document;
var script = d.currentScript;
var data = (script && script.dataset) || {};
var src = script && script.src ? new URL(script.src, location.href) : null;
// The script's URL without `.js` (and query): its wasm and strict-CSP
// fallback are named after it (`x.wasm`, `x-fallback.js`), so the collector
// can serve the SDK under any name an operator picks (`script_path`).
var stem = src ? src.href.replace(/([?#].*)?$/, "").replace(/\.js$/, "") : "/weft";
// `data-endpoint` (relative to the script) names a batch endpoint of the
// operator's choosing (`ingest_path`); else `/v1/batch` on the host.
var endpoint = data.endpoint
  ? new URL(data.endpoint, src || location.href).href
  : (data.host || (src ? src.origin : location.origin)).replace(/\/+$/, "") + "/v1/batch";
var debug = data.debug === "true";
var report = function (...what) {
  if (debug) {
    try { console.warn("weft:", ...what); } catch (_) {}
  }
};
// A page whose own `<meta>` Content-Security-Policy leaves both
// 'wasm-unsafe-eval' and 'unsafe-eval' out of `script-src` (else
// `default-src`) cannot compile weft.wasm: the wasm is then not downloaded
// and the strict-CSP fallback (below) is loaded at once. A policy sent as
// an HTTP header cannot be read by a script; only trying to compile tells,
// and that logs a violation.
var cspBlocksWasm = false;
try {
  d.querySelectorAll("meta[http-equiv=Content-Security-Policy i]").forEach(function (m) {
    var rules = {};
    m.content.split(";").forEach(function (r) {
      r = r.trim().split(/\s+/);
      rules[r[0].toLowerCase()] = r.join(" ");
    });
    var rule = rules["script-src"] || rules["default-src"];
    if (rule && !/'(wasm-)?unsafe-eval'/.test(rule)) cspBlocksWasm = true;
  });
} catch (e) {}
// weft.wasm is asked for first: its download is most of the time to ready.
var fetched;
try {
  if (!cspBlocksWasm) fetched = fetch(stem + ".wasm");
} catch (e) {
  report(e);
}
var prior = w.weft && typeof w.weft === "object" ? w.weft : {};
var queue = Array.isArray(prior._q) ? prior._q : [];
var readyCallbacks = [];
var changeCallbacks = [];
// The wasm's exports, once it is instantiated; `sdk`: once it started.
var wasm, sdk;
var weft = { consent: {} };
// The methods of `window.weft` that reach Rust, in the order of their
// numbers in `api::op` (its tests check this list, `weft.d.ts` and the
// inline stub against `api::METHODS`).
var METHODS = "page track identify alias group reset flush anonymousId userId consent.set consent.get debug".split(" ");
// What `consent.set` reads, in the order of Rust's `consent::NAMES`, and
// the category each feeds (its place in `consent::DECIDED`: analytics,
// marketing, personalization).
var CONSENT_NAMES = "analytics marketing personalization analytics_storage ad_storage ad_user_data ad_personalization personalization_storage".split(" ");
var CONSENT_OF = "01201112";
// Rust's internal operations (`api::op`): a route change, a request's
// answer, the page going away, a timer (`TICK` + its kind).
var ROUTE = 12, SENT = 13, HIDE = 14, TICK = 15;
// `start`'s flags (`api::flag`).
var CAPTURE_PAGES = 1, GPC = 2, DNT = 4;
var safely = function (f, a, b, c) {
  try {
    return f(a, b, c);
  } catch (e) {
    report(e);
  }
};
// The loader's own calls into Rust: nothing before start, never a throw.
var op = function (n, a, b, c) {
  if (sdk) safely(call, n, a, b, c);
};

// ---- The glue: wasm-bindgen's ABI, written for the few types that cross.
// Text goes in as a pointer and length of UTF-8 in wasm memory, allocated
// with the module's `__wbindgen_malloc` (Rust owns it then); `undefined` as
// a null pointer. Text comes out as a pointer and length that JavaScript
// reads; text a `weftHost` function returns is written as a pointer and
// length where Rust's `r` points. Views of memory are made on each use:
// memory may grow (and the fallback's grows by changing its buffer).
var encoder = new TextEncoder();
var decoder = new TextDecoder("utf-8", { ignoreBOM: true });
var bytes = function (p, n) {
  return new Uint8Array(wasm.memory.buffer, p, n);
};
var get = function (p, n) {
  return decoder.decode(bytes(p, n));
};
var getOr = function (p, n) {
  return p ? get(p, n) : undefined;
};
// ASCII text (names, JSON, timestamps: nearly all) is encoded straight into
// wasm memory; other text is encoded once first only to learn its length.
// No array per call: `encode` allocating one was the largest single cost
// of a `track` call (CPU profile of the bench's bursts).
var put = function (text) {
  if (text == null) return [0, 0];
  var n = (/[^\0-\x7f]/.test(text) ? encoder.encode(text) : text).length, p = wasm.__wbindgen_malloc(n, 1);
  encoder.encodeInto(text, bytes(p, n));
  return [p, n];
};
var reply = function (r, text) {
  text = put(text);
  new Int32Array(wasm.memory.buffer, r, 2).set(text);
};
// `api::call`: a method or an operation by number, up to three texts.
var call = function (n, a, b, c) {
  wasm.op(n, ...put(a), ...put(b), ...put(c));
};

// ---- What Rust imports (`browser.rs`, module `js`): `weftHost`. ----
var AID = "weft.aid";
var setCookie = function (name, value, age, domain) {
  d.cookie = name + "=" + value + "; path=/; max-age=" + age + "; SameSite=Lax" +
    (domain ? "; domain=" + domain : "") + (location.protocol === "https:" ? "; Secure" : "");
};
var getCookie = function (name) {
  var m = ("; " + d.cookie).match("; " + name + "=([^;]+)");
  return m ? m[1] : undefined;
};
// The registrable domain (`shop.example` for `www.shop.example`), so every
// subdomain shares the anonymous ID: found without a public-suffix list the
// way the browser decides, as the shortest parent domain that takes a cookie.
// "" for IP addresses and single-label hosts (a host-only cookie).
var domain = data.cookieDomain;
var cookieDomain = function () {
  if (domain == null) {
    domain = "";
    var h = location.hostname, labels = h.split("."), i = labels.length - 1, p;
    if (!/^[\d.]*$|:/.test(h)) {
      while (!domain && --i >= 0) {
        p = labels.slice(i).join(".");
        setCookie("weft_probe", 1, 10, p);
        if (getCookie("weft_probe")) {
          setCookie("weft_probe", "", 0, p);
          domain = p;
        }
      }
    }
  }
  return domain;
};
var storage = function () {
  try {
    return w.localStorage;
  } catch (e) {}
};
// `utm_` parameters; `utm_campaign` is the campaign's `name`.
var UTM = "campaign source medium term content".split(" ");
var contextKey, zone, fresh, pool, used = 4096, timers = [], armed, sendTimer, answered;
// Work for after the current task (one microtask, no browser call now): a
// burst of calls in one task pays for the page's URL, timers and the like
// once, and not inside the call.
var soon = function (f) {
  Promise.resolve().then(f);
};
var stale = function () { fresh = 0; };
// Starts a POST of a batch body; 1 if it started. Its answer goes to Rust.
var post = function (data, keepalive) {
  return safely(function () {
    var init = { method: "POST", body: data, keepalive: keepalive, credentials: "include" };
    safely(function () { init.signal = AbortSignal.timeout(30000); });
    fetch(endpoint, init).then(function (r) {
      op(SENT, "" + r.status, r.headers.get("Retry-After"));
    }, function () {
      op(SENT);
    });
    return 1;
  });
};
// Its keys are exactly the imports (the build checks), in wasm-bindgen's
// ABI: `p, n` a text's pointer and length, `r` where an answer goes.
var weftHost = {
  // localStorage, with the anonymous ID mirrored in a first-party cookie
  // (it survives a cleared localStorage and reaches the site's subdomains).
  load: function (r, p, n) {
    var key = get(p, n), v = safely(function () { return storage().getItem(key); });
    reply(r, v == null && key === AID ? (early || [safely(getCookie, "weft_aid")])[0] : v);
  },
  store: function (p, n, q, m) {
    var key = get(p, n), value = getOr(q, m);
    safely(function () {
      var s = storage();
      value == null ? s.removeItem(key) : s.setItem(key, value);
    });
    if (key === AID) {
      safely(function () {
        if (value != null) {
          setCookie("weft_aid", value, 31536000, cookieDomain());
        } else if (getCookie("weft_aid")) {
          setCookie("weft_aid", "", 0, cookieDomain());
          setCookie("weft_aid", "", 0);
        }
      });
    }
  },
  // The page's part of `context` as JSON members (`"page":{..},...`), or
  // undefined when it is what the last call returned: a burst of calls on
  // one page builds it once. `referrer`: a single-page app's previous route.
  // The URL and title are read once per task (and again after a history
  // change, which the hooks below report).
  describe: function (r, p, n) {
    var referrer = getOr(p, n);
    reply(r, safely(function () {
      if (fresh && !referrer) return;
      var l = location, n = navigator, s = w.screen || {}, q, c, v;
      var key = l.href + "\n" + d.title + "\n" + (referrer || "");
      if (!referrer) soon(stale);
      fresh = !referrer;
      if (key === contextKey) return;
      contextKey = key;
      q = new URLSearchParams(l.search);
      UTM.forEach(function (k) {
        if ((v = q.get("utm_" + k))) (c = c || {})[k === "campaign" ? "name" : k] = v;
      });
      return JSON.stringify({
        page: { url: l.href, path: l.pathname, search: l.search, referrer: referrer || d.referrer, title: d.title },
        campaign: c,
        userAgent: n.userAgent,
        locale: n.language,
        screen: { width: s.width, height: s.height, density: w.devicePixelRatio }
      }).slice(1, -1);
    }));
  },
  // Members every batch carries at its level: the time zone. Asked when a
  // batch is made, never while the page loads: the first
  // `Intl.DateTimeFormat()` of a page can cost tens of milliseconds.
  shared: function (r) {
    if (zone == null) {
      zone = "";
      safely(function () {
        zone = '"timezone":' + JSON.stringify(Intl.DateTimeFormat().resolvedOptions().timeZone);
      });
    }
    reply(r, zone);
  },
  // POSTs a batch with no custom header (no CORS preflight); the answer
  // goes to Rust. Compressed with gzip where the browser can (the collector
  // knows gzip by its first bytes), except the page's last requests, which
  // must start before it goes: those use `keepalive`, which only they may
  // (the browser counts unread keepalive responses against a 64 KB quota).
  // Aborted after 30 s.
  send: function (p, n, keepalive) {
    var body = get(p, n);
    return !!safely(function () {
      if (keepalive || !w.CompressionStream) return post(body, keepalive);
      var fail = function () { post(body) || op(SENT); };
      new Response(new Blob([body]).stream().pipeThrough(new CompressionStream("gzip")))
        .arrayBuffer()
        .then(function (gz) { post(gz) || op(SENT); }, fail);
      return 1;
    });
  },
  beacon: function (p, n) {
    var body = get(p, n);
    return !!safely(function () { return navigator.sendBeacon(endpoint, body); });
  },
  // Timer `kind` (`api::timer`) fires `op(TICK + kind)` after `ms`, replacing
  // the one pending; the saver waits for an idle moment. Set after the
  // current task.
  later: function (kind, ms) {
    timers[kind] = ms;
    if (!armed) {
      armed = 1;
      soon(function () {
        armed = 0;
        timers.forEach(function (ms, kind) {
          safely(function () {
            var fire = function () { op(TICK + kind); };
            if (kind) { // 1 (the saver)
              w.requestIdleCallback ? requestIdleCallback(fire, { timeout: ms }) : setTimeout(fire, ms);
            } else {
              clearTimeout(sendTimer);
              sendTimer = setTimeout(fire, ms);
            }
          });
        });
        timers = [];
      });
    }
  },
  // Random bytes from a pool filled 4 KB at a time.
  random: function (p, n) {
    var out = bytes(p, n);
    for (var i = 0; i < n; i++) {
      if (used === 4096) {
        pool = new Uint8Array(4096);
        used = 0;
        try {
          crypto.getRandomValues(pool);
        } catch (e) {
          for (var j = 0; j < 4096; j++) pool[j] = Math.random() * 256;
        }
      }
      out[i] = pool[used++];
    }
  },
  // Now as ISO-8601 UTC text, for timestamps.
  iso: function (r) {
    reply(r, new Date().toISOString());
  },
  now: Date.now,
  // A getter's answer (read by `ask`).
  answer: function (p, n) {
    answered = get(p, n);
  },
  // A counter of dropped calls or messages went up (`data-debug` says so).
  dropped: function (p, n) {
    report("dropped", get(p, n));
  },
  // wasm-bindgen's own: an error it raises (its table of JS values, which
  // no JS value uses, is never set up: the build checks that setting it up
  // is all `__wbindgen_start` would do, and drops both).
  __wbindgen_throw: function (p, n) {
    throw get(p, n);
  }
};

// ---- The public API. ----
var str = function (v) { return v == null ? undefined : String(v); };
// Properties and traits as the JSON text of a plain object (not an array,
// nor what a `toJSON` made something else); nothing for anything else or
// what cannot be written (cycles, BigInt).
var json = function (v) {
  try {
    v = v && typeof v === "object" && JSON.stringify(v);
    return v && v[0] === "{" ? v : undefined;
  } catch (e) {}
};
// A getter's answer: what Rust passed to `weftHost.answer`, if anything.
var ask = function (n) {
  answered = undefined;
  call(n);
  return answered;
};
var all = function (on) { return { analytics: on, marketing: on, personalization: on }; };
var invoke = function (name, args) {
  var a = args[0], b = args[1], c = args[2];
  if (name === "ready") {
    if (typeof a === "function") sdk ? safely(a, weft) : readyCallbacks.push(a);
    return;
  }
  if (name === "consent.onChange") {
    if (typeof a === "function") changeCallbacks.push(a);
    return;
  }
  if (name === "consent.grantAll" || name === "consent.denyAll") {
    a = all(name === "consent.grantAll");
    name = "consent.set";
  }
  var n = METHODS.indexOf(name);
  settle();
  if (name === "consent.set") {
    // Each category: 1 granted (by every name given for it), 0 denied,
    // - not given.
    var given = ["-", "-", "-"];
    CONSENT_NAMES.forEach(function (k, i) {
      var v = a && a[k], c = CONSENT_OF[i];
      v = v === true || v === "granted" ? 1 : v === false || v === "denied" ? 0 : given[c];
      given[c] = given[c] === 0 ? 0 : v;
    });
    call(n, given.join(""));
    var prefs = invoke("consent.get", []);
    changeCallbacks.forEach(function (cb) { safely(cb, prefs); });
    return;
  }
  if (name === "consent.get") {
    var bits = ask(n);
    return { necessary: true, analytics: !!(bits & 1), marketing: !!(bits & 2), personalization: !!(bits & 4) };
  }
  if (name === "debug") return JSON.parse(ask(n));
  if (n > 6) return ask(n); // anonymousId, userId
  // Names and IDs as text, properties and traits as JSON (`page(properties)`
  // has no name), a track's options as their category.
  if (name === "page" && a && typeof a === "object") {
    b = a;
    a = undefined;
  }
  call(n, str(a), name === "alias" ? str(b) : json(b), str(c && c.category));
};
var method = function (name) {
  return function (...args) {
    try {
      if (sdk || name === "ready" || name === "consent.onChange") return invoke(name, args);
      // The getters (anonymousId, userId, consent.get, debug: 7, 8, 10,
      // 11) are answered at once, never queued before load.
      var n = METHODS.indexOf(name);
      if ((n < 7 || n === 9) && queue.length < 100) queue.push([name, args]);
    } catch (e) {
      report(e);
    }
  };
};
METHODS.concat("ready", "consent.grantAll", "consent.denyAll", "consent.onChange").forEach(function (n) {
  var p = n.split(".");
  (p[1] ? weft.consent : weft)[p[1] || n] = method(n);
});
w.weft = weft;

// ---- Automatic capture. ----
// Single-page apps (unless `data-capture-spa="false"`; the page's context is
// read again after any history change either way): one check per burst of
// history changes, after the current task, so a router's pushState +
// replaceState counts once; a page view when the route (the URL without a plain `#fragment`; `#/..` and
// `#!..` are routes) differs from the last one's, with that URL as referrer.
var routeKey = function (href) {
  return /#[\/!]/.test(href) ? href : href.split("#")[0];
};
var lastUrl = location.href;
var spa = data.captureSpa !== "false";
var pending = 0;
var checkRoute = function () {
  clearTimeout(pending);
  pending = 0;
  var url = location.href, previous = lastUrl;
  if (sdk && routeKey(url) !== routeKey(previous)) {
    lastUrl = url;
    op(ROUTE, previous);
  }
};
// A check still waiting runs at once before anything else is recorded or
// the page goes away: the route's page view comes before the calls made
// after the route changed, and is not lost to a navigation in the same task.
var settle = function () {
  if (pending) checkRoute();
};
var routeChanged = function () {
  stale();
  if (spa && !pending) pending = setTimeout(checkRoute, 0);
};
safely(() => {
  ["pushState", "replaceState"].forEach((name) => {
    var original = history[name];
    if (typeof original !== "function") return;
    history[name] = function () {
      var result = original.apply(this, arguments);
      safely(routeChanged);
      return result;
    };
  });
  w.addEventListener("popstate", routeChanged);
  w.addEventListener("hashchange", routeChanged);
});

// Clicks on links, buttons and `data-weft-*` elements: tag, id, classes,
// href and a short text, never an input's value, nor the text of or around
// sensitive elements, nor anything shaped like a payment card number.
var CLICKABLE = "a,button,[role=button],input[type=submit],input[type=button],[data-weft-click],[data-weft-event]";
var SENSITIVE = "[data-weft-mask],input[type=password],[autocomplete^=cc-]";
if (data.captureClicks !== "false") {
  safely(function () {
    d.addEventListener("click", function (e) {
      safely(function () {
        var t = e.target, el = t.closest && !t.closest("[data-weft-ignore]") && t.closest(CLICKABLE);
        if (!el || !sdk) return;
        var attr = function (n) { return el.getAttribute(n) || undefined; };
        var tag = el.tagName.toLowerCase();
        var text = tag === "input" || el.closest(SENSITIVE) || el.querySelector(SENSITIVE)
          ? "" : (el.textContent || "").trim().split(/\s+/).join(" ");
        text = Array.from(text).slice(0, 64).join("");
        if (/(\d[ -]*){13}/.test(text)) text = "";
        settle();
        op(METHODS.indexOf("track"), attr("data-weft-event") || "Element Clicked", JSON.stringify({
          tag: tag, id: el.id || undefined, classes: attr("class"), href: el.getAttribute("href") == null ? undefined : el.getAttribute("href"), text: text || undefined
        }));
      });
    }, true);
  });
}

// The page is hidden or unloaded: the last moment to send and to save.
safely(function () {
  var hide = function () {
    safely(settle);
    op(HIDE);
  };
  w.addEventListener("pagehide", hide);
  d.addEventListener("visibilitychange", function () {
    if (d.visibilityState === "hidden") hide();
  });
});

// ---- Start. ----
// Under `data-consent="opt-out"` (where `start` reads the `weft_aid` cookie
// when localStorage has no ID, or deletes it after an objection) the cookie
// is read now, while the wasm downloads: a page's first read of
// `document.cookie` waits on the browser's network process. `start` uses
// this value; later reads see the cookie as it is then.
var early = data.consent === "opt-out" && [safely(getCookie, "weft_aid")];
// The module is compiled as it downloads. If that fails (a
// Content-Security-Policy without 'wasm-unsafe-eval' refuses to compile, no
// WebAssembly or streaming, an engine without a wasm feature the build
// uses), or the page's <meta> CSP blocks wasm, `weft-fallback.js` from
// beside weft.js (named after it) is loaded with a <script> element (the
// page's nonce copied): binaryen's wasm2js translation of the same module.
// It defines no global; it calls `document.currentScript.weft`
// with `make`, and `make(imports)` returns the same exports. A weft.wasm
// that is not there (an error status) is not a reason to try it.
var imports = { a: weftHost };
var nonce = script && script.nonce;
var fallback = function (e) {
  report(e);
  return new Promise(function (ok, fail) {
    var s = d.createElement("script");
    s.weft = ok;
    // After the script ran: `fail` is a no-op if it called `ok`.
    s.onload = s.onerror = function (e) {
      s.remove();
      fail(e);
    };
    s.nonce = nonce;
    s.src = stem + "-fallback.js";
    d.head.appendChild(s);
  }).then(function (make) {
    return make(imports);
  });
};
try {
  (cspBlocksWasm
    ? fallback("CSP blocks wasm")
    : fetched.then(function (response) {
      if (!response.ok) throw "weft.wasm: " + response.status;
      return new Promise(function (ok) {
        ok(WebAssembly.instantiateStreaming(response, imports));
      }).then(function (made) {
        return made.instance.exports;
      }, fallback);
    }))
    .then(function (exports) {
      var nav = navigator;
      wasm = exports;
      // Text options, numbers (NaN when not given) and flags.
      wasm.start(
        ...put(data.writeKey), ...put(data.consent), ...put(data.policyVersion),
        +data.flushInterval, +data.batchSize,
        (data.capturePages !== "false" ? CAPTURE_PAGES : 0) |
        (nav.globalPrivacyControl === true ? GPC : 0) |
        (data.dnt === "true" && nav.doNotTrack === "1" ? DNT : 0)
      );
      early = 0;
      sdk = 1;
      queue.splice(0).forEach(function (c) {
        safely(invoke, c[0], c[1] || []);
      });
      readyCallbacks.splice(0).forEach(function (cb) { safely(cb, weft); });
    })
    .catch(report);
} catch (e) {
  report(e);
}
