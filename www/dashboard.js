// weft dashboard: plain JavaScript, no build step. Views live in the URL
// fragment (#/overview, #/live, #/profiles/{id}, ...); every number comes
// from the admin API with the token kept in sessionStorage. Data from
// events is only ever put in the page as text (never as HTML).
"use strict";

var TOKEN_KEY = "weft.adminToken";
var view = document.getElementById("view");
var generation = 0; // bumped on every navigation: stale loops stop

// ---- DOM helper -----------------------------------------------------------

function h(tag, attrs) {
  var el = document.createElement(tag);
  if (attrs) {
    Object.keys(attrs).forEach(function (k) {
      var v = attrs[k];
      if (v == null || v === false) return;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.slice(0, 2) === "on") el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v);
    });
  }
  for (var i = 2; i < arguments.length; i++) add(el, arguments[i]);
  return el;
}

function add(el, child) {
  if (child == null || child === false) return;
  if (Array.isArray(child)) child.forEach(function (c) { add(el, c); });
  else if (typeof child === "object") el.appendChild(child);
  else el.appendChild(document.createTextNode(String(child)));
}

function fmt(n) { return n == null ? "–" : Number(n).toLocaleString("en"); }
function ms(n) { return n == null ? "–" : (n < 10 ? n.toFixed(1) : Math.round(n)) + " ms"; }
function when(t) { return t ? String(t).replace("T", " ").replace(/\.\d+Z$/, "Z") : "–"; }
function pill(text, kind) { return h("span", { class: "pill " + (kind || text) }, text); }
function card(title) {
  var rest = Array.prototype.slice.call(arguments, 1);
  return h("section", { class: "card" }, title ? h("h2", null, title) : null, rest);
}

// ---- API and the token ------------------------------------------------------

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function askToken(message) {
  var dialog = document.getElementById("login");
  var error = document.getElementById("login-error");
  error.hidden = !message;
  error.textContent = message || "";
  if (!dialog.open) dialog.showModal();
  document.getElementById("login-token").focus();
}

document.getElementById("login-form").addEventListener("submit", function () {
  var value = document.getElementById("login-token").value.trim();
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  render();
});

document.getElementById("signout").addEventListener("click", function () {
  sessionStorage.removeItem(TOKEN_KEY);
  askToken();
});

function ApiError(status, body) { this.status = status; this.body = body; }

function api(path, options) {
  options = options || {};
  var headers = { Authorization: "Bearer " + token() };
  if (options.body) headers["Content-Type"] = "application/json";
  return fetch(path, { method: options.method || "GET", headers: headers, body: options.body, signal: options.signal })
    .then(function (r) {
      if (r.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        askToken("That token was refused. Check it and try again.");
        throw new ApiError(401, null);
      }
      if (r.status === 204) return null;
      return r.json().then(function (body) {
        if (!r.ok) throw new ApiError(r.status, body);
        return body;
      });
    });
}

function failed(err) {
  if (err && err.name === "AbortError") return;
  if (err instanceof ApiError && err.status === 401) return;
  var text = err instanceof ApiError
    ? err.status + ": " + ((err.body && (err.body.reason || err.body.error)) || "request failed")
    : String(err);
  view.appendChild(h("p", { class: "error" }, text));
}

// ---- router -------------------------------------------------------------------

function route() {
  var parts = location.hash.replace(/^#\/?/, "").split("/");
  return { name: parts[0] || "overview", arg: parts.length > 1 ? decodeURIComponent(parts.slice(1).join("/")) : null };
}

function render() {
  generation++;
  var r = route();
  document.querySelectorAll("nav a").forEach(function (a) {
    a.classList.toggle("active", a.getAttribute("data-view") === r.name);
  });
  view.textContent = "";
  if (!token()) { askToken(); return; }
  var dialog = document.getElementById("login");
  if (dialog.open) dialog.close();
  var views = { overview: overview, live: live, profiles: r.arg ? profile : profiles, segments: r.arg ? segment : segments, destinations: destinations };
  (views[r.name] || overview)(r.arg, generation);
}

window.addEventListener("hashchange", render);

// ---- overview -------------------------------------------------------------------

function chart(target, points, label, unit) {
  var xs = points.map(function (p) { return p.t / 1000; });
  var ys = points.map(function (p) { return p.n; });
  var width = Math.max(target.clientWidth - 10, 280);
  target.textContent = "";
  if (typeof uPlot !== "function") {
    target.appendChild(h("p", { class: "muted" }, "Charts need vendor/uPlot (cargo xtask run installs it)."));
    return;
  }
  new uPlot({
    width: width, height: 200,
    series: [{}, { label: label, stroke: "#3b5bdb", fill: "rgba(59,91,219,.12)", width: 2, paths: uPlot.paths.bars({ size: [0.7, 40] }) }],
    axes: [{ space: unit === "hour" ? 60 : 50 }, { size: 50 }],
    scales: { x: { time: true } },
    legend: { show: false },
    cursor: { drag: { x: false, y: false } }
  }, [xs, ys], target);
}

function table(headers, rows) {
  return h("table", null,
    h("thead", null, h("tr", null, headers.map(function (x) { return h("th", { class: x.n ? "n" : null }, x.t || x); }))),
    rows && rows.tagName === "TBODY" ? rows : h("tbody", null, rows));
}

function topTable(items, key, heading) {
  var max = items.reduce(function (m, x) { return Math.max(m, x.n); }, 1);
  if (!items.length) return h("p", { class: "muted" }, "Nothing in the last 24 hours.");
  return table([heading, { t: "events", n: true }, ""], items.map(function (x) {
    return h("tr", null, h("td", { class: "mono" }, x[key]), h("td", { class: "n" }, fmt(x.n)),
      h("td", { style: "width:30%" }, h("div", { class: "bar" }, h("span", { style: "width:" + (100 * x.n / max).toFixed(1) + "%" }))));
  }));
}

function overview(_, gen) {
  view.appendChild(h("h1", null, "Overview"));
  var body = h("div");
  view.appendChild(body);
  var minuteChart, hourChart;
  function load() {
    if (gen !== generation) return;
    api("/v1/stats").then(function (s) {
      if (gen !== generation) return;
      var lastHour = s.events_per_minute.reduce(function (a, p) { return a + p.n; }, 0);
      var rejected = Object.keys(s.since_start.rejected).map(function (k) { return [k, s.since_start.rejected[k], "rejected"]; })
        .concat(Object.keys(s.since_start.dropped).map(function (k) { return [k, s.since_start.dropped[k], "dropped"]; }));
      var consent = Object.keys(s.consent_24h);
      body.textContent = "";
      body.appendChild(h("div", { class: "grid" },
        card(null, h("div", { class: "figure", id: "events-24h" }, fmt(s.events_24h)), h("div", { class: "label" }, "events, last 24 h")),
        card(null, h("div", { class: "figure" }, fmt(lastHour)), h("div", { class: "label" }, "events, last hour")),
        card(null, h("div", { class: "figure" }, fmt(s.visitors_24h)), h("div", { class: "label" }, "unique visitors, last 24 h")),
        card(null, h("div", { class: "figure" }, ms(s.latency_ms.ingest.p50) + " / " + ms(s.latency_ms.ingest.p95)),
          h("div", { class: "label" }, "ingest answer p50 / p95 (a 200 waits for the disk)")),
        card(null, h("div", { class: "figure" }, ms(s.latency_ms.commit.p50) + " / " + ms(s.latency_ms.commit.p95)),
          h("div", { class: "label" }, "log commit (write + fdatasync) p50 / p95"))));
      minuteChart = h("div", { class: "chart" });
      hourChart = h("div", { class: "chart" });
      body.appendChild(h("div", { class: "grid two" },
        card("Events per minute, last hour", minuteChart),
        card("Events per hour, last day", hourChart)));
      body.appendChild(h("div", { class: "grid two" },
        card("Top pages", topTable(s.top_pages, "page", "page")),
        card("Top events", topTable(s.top_events, "event", "event"))));
      body.appendChild(h("div", { class: "grid two" },
        card("Consent decisions, last 24 h", consent.length ? table(["category", { t: "granted", n: true }, { t: "decisions", n: true }, { t: "rate", n: true }],
          consent.map(function (k) {
            var c = s.consent_24h[k];
            return h("tr", null, h("td", null, k), h("td", { class: "n" }, fmt(c.granted)), h("td", { class: "n" }, fmt(c.decisions)),
              h("td", { class: "n" }, (100 * c.granted / Math.max(c.decisions, 1)).toFixed(0) + " %"));
          })) : h("p", { class: "muted" }, "No consent decisions in the last 24 hours.")),
        card("Refused since start", rejected.length ? table(["reason", "", { t: "messages", n: true }], rejected.map(function (r) {
          return h("tr", null, h("td", { class: "mono" }, r[0]), h("td", null, pill(r[2], r[2] === "rejected" ? "no" : "warn")), h("td", { class: "n" }, fmt(r[1])));
        })) : h("p", { class: "muted" }, "Nothing refused: " + fmt(s.since_start.accepted) + " accepted, " + fmt(s.since_start.deduplicated) + " duplicates."))));
      chart(minuteChart, s.events_per_minute, "events", "minute");
      chart(hourChart, s.events_per_hour, "events", "hour");
      setTimeout(load, 5000);
    }).catch(failed);
  }
  load();
}

// ---- live ---------------------------------------------------------------------------

function live(_, gen) {
  var paused = false;
  var filter = "";
  var after = 0;
  var rows = h("tbody");
  var note = h("p", { class: "muted" }, "Waiting for events…");
  var pause = h("button", { class: "quiet", type: "button", onclick: function () {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
  } }, "Pause");
  var select = h("select", { "aria-label": "Filter by type", onchange: function () {
    filter = select.value;
    Array.prototype.forEach.call(rows.children, function (tr) {
      tr.hidden = filter && tr.getAttribute("data-type") !== filter;
    });
  } }, ["", "track", "page", "screen", "identify", "alias", "group"].map(function (t) { return h("option", { value: t }, t || "all types"); }));
  view.appendChild(h("h1", null, "Live"));
  view.appendChild(h("div", { class: "toolbar" }, pause, select, note));
  view.appendChild(card(null, table(["received", "type", "event", "identity", "page", "consent"], rows)));
  var controller = new AbortController();
  function poll() {
    if (gen !== generation) { controller.abort(); return; }
    api("/v1/live?wait=20&after=" + after, { signal: controller.signal }).then(function (r) {
      if (gen !== generation) return;
      after = r.next;
      if (r.missed) note.textContent = r.missed + " events went by too fast to show (the view keeps up with the newest).";
      else if (r.events.length) note.textContent = "";
      if (!paused) {
        r.events.forEach(function (e) {
          var consent = e.consent ? Object.keys(e.consent).map(function (k) {
            var v = e.consent[k];
            return pill(k, v === true || v === "granted" ? "ok" : "no");
          }) : h("span", { class: "muted" }, "–");
          var id = e.userId ? h("a", { href: "#/profiles/" + encodeURIComponent(e.userId) }, e.userId)
            : e.anonymousId ? h("a", { href: "#/profiles/" + encodeURIComponent(e.anonymousId), class: "mono" }, e.anonymousId) : "–";
          var tr = h("tr", { class: "live-row", "data-type": e.type || "" },
            h("td", { class: "mono" }, when(e.receivedAt)), h("td", null, pill(e.type || "?")),
            h("td", null, e.event || ""), h("td", null, id), h("td", { class: "mono" }, e.page || ""), h("td", null, consent));
          tr.hidden = filter && e.type !== filter;
          rows.insertBefore(tr, rows.firstChild);
        });
        while (rows.children.length > 500) rows.removeChild(rows.lastChild);
      }
      poll();
    }).catch(function (err) {
      if (err && err.name === "AbortError") return;
      failed(err);
      if (!(err instanceof ApiError && err.status === 401)) setTimeout(poll, 2000);
    });
  }
  window.addEventListener("hashchange", function stop() { controller.abort(); window.removeEventListener("hashchange", stop); });
  poll();
}

// ---- profiles -------------------------------------------------------------------------

function searchBox(value) {
  var input = h("input", { type: "search", placeholder: "any userId or anonymousId", value: value || "", "aria-label": "Identifier" });
  return h("form", { class: "toolbar", onsubmit: function (e) {
    e.preventDefault();
    if (input.value.trim()) location.hash = "#/profiles/" + encodeURIComponent(input.value.trim());
  } }, input, h("button", { type: "submit" }, "Find profile"));
}

function profiles(_, gen) {
  view.appendChild(h("h1", null, "Profiles"));
  view.appendChild(searchBox());
  var recent = h("div", null, h("p", { class: "muted" }, "Loading recent visitors…"));
  view.appendChild(card("Recently seen", recent));
  api("/v1/live?wait=0").then(function (r) {
    if (gen !== generation) return;
    var seen = {};
    var items = [];
    r.events.slice().reverse().forEach(function (e) {
      var id = e.userId || e.anonymousId;
      if (id && !seen[id]) { seen[id] = true; items.push(e); }
    });
    recent.textContent = "";
    if (!items.length) { recent.appendChild(h("p", { class: "muted" }, "No events yet.")); return; }
    recent.appendChild(table(["identity", "last event", "received"], items.slice(0, 30).map(function (e) {
      var id = e.userId || e.anonymousId;
      return h("tr", null, h("td", null, h("a", { href: "#/profiles/" + encodeURIComponent(id) }, id)),
        h("td", null, pill(e.type), " ", e.event || e.page || ""), h("td", { class: "mono" }, when(e.receivedAt)));
    })));
  }).catch(failed);
}

function graphSvg(graph, types) {
  var users = graph.user_ids, devices = graph.anonymous_ids;
  var linksOf = {};
  graph.edges.forEach(function (e) { if (e.kind === "link") (linksOf[e.from] = linksOf[e.from] || {})[e.to] = true; });
  var W = 900, colW = Math.max(W / Math.max(users.length, 1), 150), colD = Math.max(W / Math.max(devices.length, 1), 150);
  var width = Math.max(W, colW * users.length, colD * devices.length);
  var pos = {};
  users.forEach(function (u, i) { pos[u] = { x: (i + 0.5) * width / users.length, y: 50 }; });
  devices.forEach(function (d, i) { pos[d] = { x: (i + 0.5) * width / devices.length, y: 250 }; });
  var ns = "http://www.w3.org/2000/svg";
  function s(tag, attrs, text) {
    var el = document.createElementNS(ns, tag);
    Object.keys(attrs).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    if (text != null) el.textContent = text;
    return el;
  }
  var svg = s("svg", { class: "graph", viewBox: "0 0 " + width + " 300", role: "img", "aria-label": "identity graph" });
  graph.edges.forEach(function (e, i) {
    var a = pos[e.from], b = pos[e.to];
    if (!a || !b) return;
    var bend = e.kind === "alias" ? 40 : 0;
    var mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2 - bend;
    var g = s("g", { class: "edge-group", "data-message": e.message_id });
    g.appendChild(s("path", { class: "edge " + e.kind, d: "M" + a.x + "," + a.y + " Q" + mx + "," + (my - bend) + " " + b.x + "," + b.y }));
    var type = e.kind === "alias" ? "alias" : (types[e.message_id] || "message");
    var label = s("text", { class: "edge-label", x: mx, y: my + (i % 3) * 12 - 6, "text-anchor": "middle" }, type + " · " + when(e.at) + " · " + e.message_id);
    label.appendChild(s("title", {}, e.kind + " made by " + type + " " + e.message_id + " at " + e.at));
    g.appendChild(label);
    svg.appendChild(g);
  });
  function node(id, kind) {
    var p = pos[id];
    var shared = kind === "device" && Object.keys(linksOf[id] || {}).length > 1;
    var g = s("g", { class: "node " + (kind === "user" ? "user" : "") + (shared ? " shared" : ""), "data-id": id });
    var label = (kind === "user" ? "user " : "device ") + id + (shared ? " (shared)" : "");
    var w = Math.min(Math.max(label.length * 6.6 + 16, 80), 260);
    g.appendChild(s("rect", { x: p.x - w / 2, y: p.y - 15, width: w, height: 30, rx: 8 }));
    g.appendChild(s("text", { x: p.x, y: p.y + 4, "text-anchor": "middle" }, label.length > 38 ? label.slice(0, 37) + "…" : label));
    svg.appendChild(g);
  }
  users.forEach(function (u) { node(u, "user"); });
  devices.forEach(function (d) { node(d, "device"); });
  return svg;
}

function profile(id, gen) {
  var enc = encodeURIComponent(id);
  view.appendChild(h("h1", null, "Profile"));
  view.appendChild(searchBox(id));
  Promise.all([api("/v1/profiles/" + enc), api("/v1/profiles/" + enc + "/graph"), api("/v1/profiles/" + enc + "/consent"), api("/v1/profiles/" + enc + "/events?limit=50")])
    .then(function (all) {
      if (gen !== generation) return;
      var p = all[0], graph = all[1], consent = all[2].consent || [], page = all[3];
      var types = {};
      page.events.forEach(function (e) { types[e.messageId] = e.type; });
      var traits = Object.keys(p.traits || {});
      var current = Object.keys(p.consent || {});
      view.appendChild(h("div", { class: "grid two" },
        card("Who", h("dl", { class: "kv" },
          h("dt", null, "profile"), h("dd", { class: "mono" }, p.profile_id),
          h("dt", null, "user IDs"), h("dd", null, p.user_ids.join(", ") || "–"),
          h("dt", null, "devices"), h("dd", { class: "mono" }, p.anonymous_ids.join(", ") || "–"),
          h("dt", null, "first seen"), h("dd", null, when(p.first_seen)),
          h("dt", null, "last seen"), h("dd", null, when(p.last_seen)),
          h("dt", null, "events"), h("dd", null, fmt(p.event_count)),
          h("dt", null, "segments"), h("dd", { id: "profile-segments" }, p.segments.length ? p.segments.map(function (k) {
            return h("a", { href: "#/segments/" + encodeURIComponent(k), class: "pill" }, k);
          }) : "none"))),
        card("Traits", traits.length ? h("dl", { class: "kv" }, traits.map(function (k) {
          var v = p.traits[k];
          return [h("dt", null, k), h("dd", { class: "mono" }, typeof v === "string" ? v : JSON.stringify(v))];
        })) : h("p", { class: "muted" }, "No traits yet."))));
      var graphBox = h("div", null, graphSvg(graph, types));
      view.appendChild(card("Identity graph: why these identifiers are one person", graphBox,
        h("p", { class: "muted" }, "Solid: a device seen logged in as a user (link); dashed: an alias. Each edge names the message that made it. An orange device is shared by several people.")));
      // The type of an edge's message comes from the profile's events: page
      // back through older ones (up to 20 pages) until every edge has it.
      (function label(before, pages) {
        var missing = graph.edges.some(function (e) { return e.kind === "link" && !types[e.message_id]; });
        if (!missing || !before || pages >= 20 || gen !== generation) return;
        api("/v1/profiles/" + enc + "/events?limit=200&before=" + encodeURIComponent(before)).then(function (older) {
          if (gen !== generation) return;
          older.events.forEach(function (e) { types[e.messageId] = e.type; });
          graphBox.textContent = "";
          graphBox.appendChild(graphSvg(graph, types));
          label(older.next_before, pages + 1);
        }).catch(failed);
      })(page.next_before, 0);
      view.appendChild(card("Consent", h("p", null, "Now: ", current.length ? current.map(function (k) {
        var v = p.consent[k];
        return pill(k, v === true || v === "granted" ? "ok" : "no");
      }) : h("span", { class: "muted" }, "no decision recorded")),
      consent.length ? table(["decided", "categories", "policy", "device", "message"], consent.slice().reverse().map(function (c) {
        return h("tr", null, h("td", { class: "mono" }, when(c.at)),
          h("td", null, Object.keys(c.preferences || {}).map(function (k) {
            var v = c.preferences[k];
            return pill(k, v === true || v === "granted" ? "ok" : "no");
          })),
          h("td", null, (c.policy || "") + (c.policy_version ? " v" + c.policy_version : "")),
          h("td", { class: "mono" }, c.anonymous_id || ""), h("td", { class: "mono" }, c.message_id));
      })) : null));
      var tbody = h("tbody");
      var more = h("button", { class: "quiet", type: "button" }, "Older events");
      function addRows(events) {
        events.forEach(function (e) {
          var page = (e.context && e.context.page) || e.properties || {};
          var detail = e.event || (e.type === "page" || e.type === "screen" ? e.name || page.path || page.url : "") ||
            (e.type === "identify" ? Object.keys(e.traits || {}).join(", ") : "") || "";
          tbody.appendChild(h("tr", { class: "timeline-row" }, h("td", { class: "mono" }, when(e.timestamp)), h("td", null, pill(e.type)),
            h("td", null, detail), h("td", { class: "mono" }, e.anonymousId || ""), h("td", { class: "mono" }, e.messageId)));
        });
      }
      addRows(page.events);
      var next = page.next_before;
      more.hidden = !next;
      more.addEventListener("click", function () {
        api("/v1/profiles/" + enc + "/events?limit=50&before=" + encodeURIComponent(next)).then(function (pg) {
          addRows(pg.events);
          next = pg.next_before;
          more.hidden = !next;
        }).catch(failed);
      });
      view.appendChild(card("Timeline, newest first", table(["time", "type", "what", "device", "messageId"], tbody), more));
    }).catch(function (err) {
      if (err instanceof ApiError && err.status === 404) view.appendChild(h("p", { class: "muted" }, "No profile has the identifier " + id + "."));
      else failed(err);
    });
}

// ---- segments ----------------------------------------------------------------------------

function segments(_, gen) {
  view.appendChild(h("h1", null, "Segments"));
  api("/v1/segments").then(function (r) {
    if (gen !== generation) return;
    if (!r.segments.length) {
      view.appendChild(card(null, h("p", { class: "muted" }, "No segments yet. Define one with PUT /v1/segments/{key} (see the README).")));
      return;
    }
    view.appendChild(card(null, table(["segment", "name", { t: "members", n: true }, "status"], r.segments.map(function (s) {
      return h("tr", null, h("td", null, h("a", { href: "#/segments/" + encodeURIComponent(s.key) }, s.key)), h("td", null, s.name),
        h("td", { class: "n" }, fmt(s.size)), h("td", null, pill(s.status, s.status === "ready" ? "ok" : "warn")));
    }))));
  }).catch(failed);
}

function segment(key, gen) {
  var enc = encodeURIComponent(key);
  view.appendChild(h("h1", null, "Segment " + key));
  api("/v1/segments/" + enc).then(function (s) {
    if (gen !== generation) return;
    view.appendChild(h("div", { class: "grid two" },
      card(null, h("div", { class: "figure" }, fmt(s.size)), h("div", { class: "label" }, s.name + " · " + s.status + " · updated " + when(s.updated_at))),
      card("Rule", h("pre", null, JSON.stringify(s.rule, null, 2)))));
    var tbody = h("tbody");
    var more = h("button", { class: "quiet", type: "button", hidden: true }, "More members");
    var cursor = null;
    function load() {
      api("/v1/segments/" + enc + "/profiles?limit=100" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "")).then(function (page) {
        page.profiles.forEach(function (m) {
          var id = m.user_ids[0] || m.anonymous_ids[0] || m.profile_id;
          tbody.appendChild(h("tr", null, h("td", null, h("a", { href: "#/profiles/" + encodeURIComponent(id) }, m.profile_id)),
            h("td", null, m.user_ids.join(", ")), h("td", { class: "mono" }, m.anonymous_ids.join(", ")), h("td", { class: "mono" }, when(m.entered_at))));
        });
        cursor = page.next;
        more.hidden = !cursor;
      }).catch(failed);
    }
    more.addEventListener("click", load);
    view.appendChild(card("Members", table(["profile", "user IDs", "devices", "entered"], tbody), more));
    load();
  }).catch(failed);
}

// ---- destinations ----------------------------------------------------------------------------

function destinations(_, gen) {
  view.appendChild(h("h1", null, "Destinations"));
  var body = h("div");
  view.appendChild(body);
  function load() {
    if (gen !== generation) return;
    api("/v1/destinations").then(function (r) {
      if (gen !== generation) return;
      body.textContent = "";
      if (!r.destinations.length) {
        body.appendChild(card(null, h("p", { class: "muted" }, "No destinations yet. Add one with PUT /v1/destinations/{name} or [[destination]] in weft.toml (see the README).")));
        return;
      }
      body.appendChild(card(null, table(["destination", "kind", "state", { t: "pending", n: true }, { t: "delivered", n: true }, { t: "failed", n: true }, { t: "dead", n: true }, { t: "p50 / p95", n: true }, "last error"],
        r.destinations.map(function (d) {
          return h("tr", { "data-destination": d.name }, h("td", null, d.name), h("td", null, d.kind),
            h("td", null, pill(d.enabled ? "on" : "off", d.enabled ? "ok" : "no")), h("td", { class: "n" }, fmt(d.pending)),
            h("td", { class: "n" }, fmt(d.delivered)), h("td", { class: "n" }, fmt(d.failed)),
            h("td", { class: "n" }, d.dead ? h("a", { href: "#/destinations", onclick: function (e) { e.preventDefault(); deadLetters(d.name, gen); } }, fmt(d.dead)) : "0"),
            h("td", { class: "n" }, ms(d.latency_ms.p50) + " / " + ms(d.latency_ms.p95)), h("td", { class: "error" }, d.last_error || ""));
        }))));
      setTimeout(load, 5000);
    }).catch(failed);
  }
  load();
}

function deadLetters(name, gen) {
  var enc = encodeURIComponent(name);
  var old = document.getElementById("dead-letters");
  if (old) old.remove();
  var box = card("Dead letters of " + name);
  box.id = "dead-letters";
  view.appendChild(box);
  function replay(ids) {
    api("/v1/destinations/" + enc + "/replay", { method: "POST", body: JSON.stringify(ids ? { ids: ids } : {}) }).then(function (r) {
      box.appendChild(h("p", null, r.requeued + " requeued for delivery."));
    }).catch(failed);
  }
  api("/v1/destinations/" + enc + "/dead?limit=100").then(function (page) {
    if (gen !== generation) return;
    box.appendChild(h("div", { class: "toolbar" }, h("button", { type: "button", onclick: function () { replay(null); } }, "Replay all")));
    box.appendChild(table(["id", { t: "attempts", n: true }, "status", "error", "last attempt", "request", "response", ""], page.items.map(function (d) {
      return h("tr", null, h("td", null, d.id), h("td", { class: "n" }, d.attempts), h("td", null, d.last_status || "–"), h("td", null, d.last_error),
        h("td", { class: "mono" }, when(d.last_attempt_at)), h("td", null, h("pre", null, d.request_sample)), h("td", null, h("pre", null, d.response_sample)),
        h("td", null, h("button", { class: "quiet", type: "button", onclick: function () { replay([d.id]); } }, "Replay")));
    })));
  }).catch(failed);
}

render();
