// weft.js strict-CSP fallback. The build puts this file first in weft.js's
// function scope, so the `WebAssembly` below is the one the wasm-bindgen glue
// sees; the page's `window.WebAssembly` is never touched.
//
// The glue is given the wasm's URL, fetches it and passes the Response to
// `instantiateStreaming`, the only member it uses on that path. The real one
// is tried first. If it fails (a Content-Security-Policy without
// 'wasm-unsafe-eval' refuses to compile, WebAssembly or streaming is missing,
// or the engine lacks a wasm feature the build uses), `weft-fallback.js` from
// beside weft.js (named after it) is loaded with a <script> element:
// binaryen's wasm2js translation of the same weft.wasm. It defines no global;
// it calls `document.currentScript.weft(make)`, and `make(imports)` returns
// the exports the glue expects. `stem` (weft.js's URL without `.js`) and `report`
// (the debug logger) are the loader's, read only when needed.
//
// A page whose own `<meta>` Content-Security-Policy leaves both
// 'wasm-unsafe-eval' and 'unsafe-eval' out of `script-src` (else
// `default-src`) cannot compile weft.wasm: `cspBlocksWasm` is then true,
// the loader does not download it and the fallback is loaded at once. A
// policy sent as an HTTP header cannot be read by a script; only trying to
// compile tells, and that logs a violation.
var cspBlocksWasm = false;
try {
  [].forEach.call(document.querySelectorAll("meta[http-equiv=Content-Security-Policy i]"), function (m) {
    var rules = {};
    m.content.split(";").forEach(function (r) {
      r = r.trim().split(/\s+/);
      rules[r[0].toLowerCase()] = r.join(" ");
    });
    var rule = rules["script-src"] || rules["default-src"];
    if (rule && !/'(wasm-)?unsafe-eval'/.test(rule)) cspBlocksWasm = true;
  });
} catch (e) {}
var WebAssembly = (function (real, current) {
  // Copied to the fallback's <script> for pages whose CSP names a nonce.
  var nonce = current && current.nonce;
  return {
    instantiateStreaming: function (response, imports) {
      return new Promise(function (ok) {
        if (cspBlocksWasm) throw "the page's CSP blocks WebAssembly: weft-fallback.js";
        ok(real.instantiateStreaming(response, imports));
      }).catch(function (e) {
        report(e);
        return new Promise(function (ok, fail) {
          var s = document.createElement("script");
          s.weft = ok;
          // After the script ran: `fail` is a no-op if it called `ok`.
          s.onload = s.onerror = function (e) {
            s.remove();
            fail(e);
          };
          s.nonce = nonce;
          s.src = stem + "-fallback.js";
          document.head.appendChild(s);
        }).then(function (make) {
          return { instance: { exports: make(imports) } };
        });
      });
    },
  };
})(window.WebAssembly, document.currentScript);
