// weft.js loader. The build wraps this file and the wasm-bindgen glue in one
// function scope, so `wasm_bindgen` below is the glue and nothing leaks into
// the page but `window.weft`. Rule: nothing here may throw into the host page.
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
var sdk = null;
var weft = {};
var str = function (v) { return v == null ? undefined : String(v); };
var call = function (name, args) {
  switch (name) {
    case "page":
      // page(properties) or page(name, properties)
      if (args[0] !== null && typeof args[0] === "object") return sdk.page(undefined, args[0]);
      return sdk.page(str(args[0]), args[1]);
    case "track":
      return sdk.track(String(args[0]), args[1]);
    case "identify":
      return sdk.identify(String(args[0]), args[1]);
    case "flush":
      return sdk.flush();
  }
};
["page", "track", "identify", "flush"].forEach(function (name) {
  weft[name] = function () {
    var args = [].slice.call(arguments);
    try {
      if (sdk) call(name, args);
      else if (queue.length < 100) queue.push([name, args]);
    } catch (e) {
      report(e);
    }
  };
});
weft.anonymousId = function () {
  try {
    return sdk ? sdk.anonymousId() : undefined;
  } catch (e) {
    report(e);
  }
};
var runReady = function (cb) {
  try {
    cb(weft);
  } catch (e) {
    report(e);
  }
};
weft.ready = function (cb) {
  if (typeof cb !== "function") return;
  if (sdk) runReady(cb);
  else readyCallbacks.push(cb);
};
w.weft = weft;
try {
  wasm_bindgen({ module_or_path: base + "weft.wasm" })
    .then(function () {
      wasm_bindgen.start(data.writeKey || "", host);
      sdk = wasm_bindgen;
      queue.splice(0).forEach(function (c) {
        try {
          call(c[0], c[1] || []);
        } catch (e) {
          report(e);
        }
      });
      readyCallbacks.splice(0).forEach(runReady);
    })
    .catch(report);
} catch (e) {
  report(e);
}
