// weft.js loader. The build wraps this file and the wasm-bindgen glue in one
// function scope, so `wasm_bindgen` below is the glue and nothing leaks into
// the page but `window.weft`. Rule: nothing here may throw into the host page.
// The API's behaviour lives in Rust (`src/api.rs`); this file names the
// methods, queues calls until the wasm is ready, and keeps the callbacks.
var w = window;
var script = document.currentScript;
var data = (script && script.dataset) || {};
var src = script && script.src ? new URL(script.src, location.href) : null;
var base = src ? src.href.replace(/[^\/?#]*([?#].*)?$/, "") : "/";
var host = data.host || (src ? src.origin : location.origin);
var debug = data.debug === "true";
var report = function (e) {
  if (debug) {
    try { console.warn("weft:", e); } catch (_) {}
  }
};
var prior = w.weft && typeof w.weft === "object" ? w.weft : {};
var queue = Array.isArray(prior._q) ? prior._q : [];
var readyCallbacks = [];
var changeCallbacks = [];
var sdk = null;
var weft = { consent: {} };
// The numbers of `api::op` in Rust.
var OPS = {
  page: 0, track: 1, identify: 2, alias: 3, group: 4, reset: 5, flush: 6,
  "consent.set": 8, "consent.get": 9, anonymousId: 10, userId: 11
};
var GETTERS = { anonymousId: 1, userId: 1, "consent.get": 1 };
// The page's context, gathered here because JavaScript says it in fewer
// bytes than Rust; `src/browser.rs` calls it and adds identity, session and
// consent. `referrer`: a single-page app's previous route.
var UTM = { campaign: "name", source: "source", medium: "medium", term: "term", content: "content" };
// The time zone once: building an Intl.DateTimeFormat costs a good part of
// a millisecond.
var tz;
try { tz = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch (e) {}
var describe = function (referrer) {
  var l = location, n = navigator, s = w.screen || {}, q = new URLSearchParams(l.search), c, k, v;
  for (k in UTM) if ((v = q.get("utm_" + k))) (c = c || {})[UTM[k]] = v;
  return {
    page: { url: l.href, path: l.pathname, search: l.search, referrer: referrer || document.referrer, title: document.title },
    campaign: c,
    userAgent: n.userAgent,
    locale: n.language,
    timezone: tz,
    screen: { width: s.width, height: s.height, density: w.devicePixelRatio }
  };
};
var str = function (v) { return v == null ? undefined : String(v); };
var all = function (on) { return { analytics: on, marketing: on, personalization: on }; };
var safely = function (f, arg) {
  try {
    f(arg);
  } catch (e) {
    report(e);
  }
};
var invoke = function (name, args) {
  var a = args[0], b = args[1];
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
  if (name === "consent.set") {
    sdk.op(8, a);
    var prefs = sdk.op(9);
    changeCallbacks.forEach(function (cb) { safely(cb, prefs); });
    return;
  }
  // Names and IDs as text; `page(properties)` keeps its object.
  if (name !== "page" || a === null || typeof a !== "object") a = str(a);
  if (name === "alias") b = str(b);
  return sdk.op(OPS[name], a, b, args[2]);
};
var method = function (name) {
  return function () {
    var args = [].slice.call(arguments);
    try {
      if (sdk || name === "ready" || name === "consent.onChange") return invoke(name, args);
      if (!GETTERS[name] && queue.length < 100) queue.push([name, args]);
    } catch (e) {
      report(e);
    }
  };
};
"page track identify alias group reset flush ready anonymousId userId".split(" ").forEach(function (n) {
  weft[n] = method(n);
});
"set get grantAll denyAll onChange".split(" ").forEach(function (n) {
  weft.consent[n] = method("consent." + n);
});
w.weft = weft;

// Single-page apps: one check per burst of history changes, after the
// current task, so a router's pushState + replaceState counts once.
if (data.captureSpa !== "false") {
  var pending = 0;
  var routeChanged = function () {
    if (pending) return;
    pending = setTimeout(function () {
      pending = 0;
      if (sdk) safely(sdk.op, 7);
    }, 0);
  };
  try {
    ["pushState", "replaceState"].forEach(function (name) {
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
  } catch (e) {
    report(e);
  }
}

try {
  wasm_bindgen({ module_or_path: base + "weft.wasm" })
    .then(function () {
      wasm_bindgen.start(data, host, describe);
      sdk = wasm_bindgen;
      queue.splice(0).forEach(function (c) {
        safely(function () { invoke(c[0], c[1] || []); });
      });
      readyCallbacks.splice(0).forEach(function (cb) { safely(cb, weft); });
    })
    .catch(report);
} catch (e) {
  report(e);
}
