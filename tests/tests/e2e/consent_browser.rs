//! Consent in the browser, observed from outside the page: the SDK's
//! promises under opt-in (nothing written, nothing sent before a decision),
//! what a grant, a denial and a withdrawal do to the browser's storage and
//! to what reaches the collector, Global Privacy Control under opt-out, and
//! Google Consent Mode names.
//!
//! Requests are read from the browser's network layer, cookies and storage
//! through CDP, never through the page's own JavaScript (which a broken SDK
//! could patch); the collector's store shows what arrived. Fixture pages
//! are in `tests/fixtures/sdk/`.

use std::time::Duration;

use serde_json::{Value, json};
use weft_e2e::chromium::{Chromium, Page};
use weft_e2e::harness::{ADMIN_TOKEN, StoredEvent, TestCollector};
use weft_e2e::http::Request;
use weft_e2e::site::{
    fixture_collector, fixture_site, flush_and_settle, no_exceptions, sdk_ready, stored_when,
    tracks,
};

/// Requests the page sent to the collector's API (anything under `/v1/`).
fn api_requests(page: &Page) -> Vec<String> {
    page.sent_requests()
        .into_iter()
        .filter(|r| r.url.contains("/v1/") || r.method != "GET")
        .map(|r| format!("{} {} ({})", r.method, r.url, r.kind))
        .collect()
}

fn keys(items: &[(String, String)]) -> Vec<&str> {
    items.iter().map(|(k, _)| k.as_str()).collect()
}

async fn consent_history(c: &TestCollector, id: &str) -> Value {
    let r = c
        .send(Request::get(&format!("/v1/profiles/{id}/consent")).bearer(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn prefs(analytics: bool, marketing: bool, personalization: bool) -> Value {
    json!({"necessary": true, "analytics": analytics, "marketing": marketing, "personalization": personalization})
}

/// Everything the browser holds for `origin` that the SDK could have
/// written, read through CDP.
async fn assert_browser_holds_nothing(chromium: &Chromium, page: &Page, origin: &str) {
    assert_eq!(chromium.cookies().await, Vec::<Value>::new(), "no cookies");
    assert_eq!(page.local_storage(origin).await, [], "empty localStorage");
    assert_eq!(
        page.session_storage(origin).await,
        [],
        "empty sessionStorage"
    );
    assert_eq!(
        page.indexed_db_names(origin).await,
        Vec::<String>::new(),
        "no IndexedDB"
    );
}

// 9. -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_decision_an_opt_in_page_writes_nothing_and_sends_nothing() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    let origin = site.url("");

    for load in 0..2 {
        page.goto(&site.url("/optin.html")).await;
        sdk_ready(&page).await;
        page.eval("weft.page('Manual view'); history.pushState({}, '', '/optin/a')")
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        page.eval("history.pushState({}, '', '/optin/b')").await;
        for selector in ["#buy", "#more", "#signup"] {
            page.click(selector).await;
        }
        page.eval(&format!(
            "weft.track('Held {load}', {{n: {load}}}); weft.identify('held-user'); \
             weft.group('held-group'); weft.alias('held-alias'); weft.flush()"
        ))
        .await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    page.eval("weft.flush()").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert_eq!(
        api_requests(&page),
        Vec::<String>::new(),
        "no request to the collector's API"
    );
    assert_browser_holds_nothing(&chromium, &page, &origin).await;
    assert_eq!(page.eval("weft.anonymousId()").await, Value::Null);
    assert_eq!(
        page.eval("weft.consent.get()").await,
        prefs(false, false, false)
    );
    assert!(c.rows().is_empty(), "nothing stored");
    no_exceptions(&page);
}

/// Counts the page's reads of `document.cookie` in `__cookieReads`
/// (installed before any script of the page runs).
const COUNT_COOKIE_READS: &str = r#"(function () {
  var d = Object.getOwnPropertyDescriptor(Document.prototype, "cookie");
  window.__cookieReads = 0;
  Object.defineProperty(document, "cookie", { configurable: true,
    get: function () { window.__cookieReads++; return d.get.call(this); },
    set: function (v) { d.set.call(this, v); } });
})();"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_a_decision_an_opt_in_page_does_not_even_read_the_id_cookie() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.call(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({"source": COUNT_COOKIE_READS}),
    )
    .await;
    // An ID another page of the site left in the cookie only.
    let set = page
        .call(
            "Network.setCookie",
            json!({"name": "weft_aid", "value": "cookie-only-id", "url": site.url("/")}),
        )
        .await;
    assert_eq!(set["success"], true, "{set}");

    page.goto(&site.url("/optin.html")).await;
    sdk_ready(&page).await;
    page.eval("weft.track('Held'); weft.flush()").await;
    // Past the idle-time saver.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        page.eval("__cookieReads").await,
        json!(0),
        "no read of document.cookie before a decision"
    );
    assert_eq!(page.eval("weft.anonymousId()").await, Value::Null);

    // Under opt-out the loader reads it while the wasm loads, and `start`
    // adopts it (localStorage has none).
    page.goto(&site.url("/optout.html")).await;
    sdk_ready(&page).await;
    assert_eq!(page.eval("weft.anonymousId()").await, "cookie-only-id");
    assert!(
        page.eval("__cookieReads").await.as_u64() >= Some(1),
        "the opt-out page reads the cookie"
    );
    // A later read (a reset) sees the cookie as it is then, not the early
    // value.
    page.eval("weft.reset()").await;
    assert_ne!(page.eval("weft.anonymousId()").await, "cookie-only-id");
    no_exceptions(&page);
}

// 10. ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_sends_the_held_events_once_under_the_identity_created_then() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    let origin = site.url("");
    page.goto(&site.url("/optin.html")).await;
    sdk_ready(&page).await;
    page.eval("history.pushState({}, '', '/optin/spa')").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    page.click("#buy").await;
    page.eval("weft.track('Held Event', {n: 1}, {category: 'analytics'})")
        .await;
    page.eval("weft.track('Held Ad', {n: 2}, {category: 'marketing'})")
        .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(api_requests(&page), Vec::<String>::new(), "held, not sent");
    assert_browser_holds_nothing(&chromium, &page, &origin).await;

    page.eval(
        "window.changes = []; weft.consent.onChange(p => window.changes.push(p)); \
         weft.consent.set({analytics: true})",
    )
    .await;
    let aid = page.eval("weft.anonymousId()").await;
    let aid = aid
        .as_str()
        .expect("an identity once analytics is granted")
        .to_owned();
    assert_eq!(
        page.eval("weft.consent.get()").await,
        prefs(true, false, false)
    );
    assert_eq!(
        page.eval("window.changes").await,
        json!([prefs(true, false, false)]),
        "onChange called once with the new preferences"
    );

    let rows = stored_when(
        &c,
        &page,
        "the held events and the consent record",
        |rows| rows.len() >= 5,
    )
    .await;
    let summary: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {:?}", r.kind, r.event))
        .collect();
    assert_eq!(
        rows.iter().filter(|r| r.kind == "page").count(),
        2,
        "{summary:?}"
    );
    assert_eq!(tracks(&rows, "Element Clicked").len(), 1, "{summary:?}");
    assert_eq!(tracks(&rows, "Held Event").len(), 1, "{summary:?}");
    assert_eq!(tracks(&rows, "Consent Updated").len(), 1, "{summary:?}");
    assert_eq!(
        tracks(&rows, "Held Ad").len(),
        0,
        "marketing was not granted"
    );
    assert_eq!(rows.len(), 5, "{summary:?}");
    let paths: Vec<&Value> = rows
        .iter()
        .filter(|r| r.kind == "page")
        .map(|r| &r.body["context"]["page"]["path"])
        .collect();
    assert_eq!(paths, [&json!("/optin.html"), &json!("/optin/spa")]);
    for row in &rows {
        assert_eq!(
            row.anonymous_id.as_deref(),
            Some(aid.as_str()),
            "{}",
            row.raw
        );
        let consent = &row.body["context"]["consent"];
        assert_eq!(
            consent["categoryPreferences"]["analytics"], true,
            "{}",
            row.raw
        );
        assert_eq!(
            consent["categoryPreferences"]["marketing"], false,
            "{}",
            row.raw
        );
        if !row.is_track("Consent Updated") {
            assert_eq!(consent["category"], "analytics", "{}", row.raw);
        }
    }
    let record = tracks(&rows, "Consent Updated")[0];
    assert_eq!(record.body["context"]["consent"]["category"], "necessary");
    let props = &record.body["properties"];
    assert_eq!(props["categoryPreferences"]["analytics"], true, "{props}");
    assert_eq!(props["categoryPreferences"]["marketing"], false, "{props}");
    assert_eq!(
        props["categoryPreferences"]["personalization"], false,
        "{props}"
    );
    assert_eq!(props["policy"], "opt-in", "{props}");
    assert_eq!(props["policyVersion"], "2026-01", "{props}");

    let history = consent_history(&c, &aid).await;
    let entries = history["consent"].as_array().expect("consent history");
    assert_eq!(entries.len(), 1, "{history}");
    assert_eq!(entries[0]["message_id"], record.message_id.as_str());
    assert_eq!(entries[0]["preferences"]["analytics"], true, "{history}");
    assert_eq!(entries[0]["policy"], "opt-in");
    assert_eq!(entries[0]["policy_version"], "2026-01");

    // The identity is stored now (at the idle moment after the grant), and
    // only now.
    let storage = crate::sdk::saved(&page, &origin, "weft.aid", Some(&aid)).await;
    assert!(keys(&storage).contains(&"weft.consent"), "{storage:?}");
    let cookies = chromium.cookies().await;
    assert!(
        cookies
            .iter()
            .any(|c| c["name"] == "weft_aid" && c["value"] == aid.as_str()),
        "{cookies:?}"
    );
    no_exceptions(&page);
}

/// Held calls are bounded: at most 100 wait for a decision, the rest are
/// dropped (not the oldest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_one_hundred_calls_are_held_before_a_decision() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.goto(&site.url("/optin.html")).await;
    sdk_ready(&page).await;
    page.eval("for (let i = 1; i <= 150; i++) weft.track('Bulk ' + i)")
        .await;
    page.eval("weft.consent.grantAll()").await;
    let rows = stored_when(&c, &page, "the held events", |rows| {
        rows.iter().any(|r| r.is_track("Bulk 1"))
    })
    .await;
    let held: Vec<&str> = rows
        .iter()
        .filter(|r| r.kind == "page" || r.event.as_deref().is_some_and(|e| e.starts_with("Bulk ")))
        .map(|r| r.event.as_deref().unwrap_or("page"))
        .collect();
    assert_eq!(
        held.len(),
        100,
        "exactly 100 held calls delivered: {held:?}"
    );
    assert!(held.contains(&"page"), "the first page view was held first");
    assert!(held.contains(&"Bulk 99"), "{held:?}");
    assert!(!held.contains(&"Bulk 100"), "{held:?}");
    no_exceptions(&page);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_sends_nothing_ever_and_keeps_only_the_decision() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    let origin = site.url("");
    page.goto(&site.url("/optin.html")).await;
    sdk_ready(&page).await;
    page.eval("weft.track('Before Deny')").await;
    page.click("#buy").await;
    page.eval("weft.consent.denyAll()").await;
    assert_eq!(
        page.eval("weft.consent.get()").await,
        prefs(false, false, false)
    );
    page.eval("weft.track('After Deny'); weft.page(); weft.identify('denied-user')")
        .await;
    page.click("#buy").await;
    page.eval("weft.flush()").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    page.eval("weft.flush()").await;

    // The decision survives a reload; still nothing is sent.
    page.goto(&site.url("/optin.html")).await;
    sdk_ready(&page).await;
    assert_eq!(
        page.eval("weft.consent.get()").await,
        prefs(false, false, false)
    );
    page.eval("weft.track('After Reload')").await;
    page.click("#buy").await;
    page.eval("weft.flush()").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;

    assert_eq!(
        api_requests(&page),
        Vec::<String>::new(),
        "no request to the collector's API"
    );
    assert!(c.rows().is_empty(), "nothing stored: {:?}", c.rows());
    assert_eq!(page.eval("weft.anonymousId()").await, Value::Null);
    let storage = page.local_storage(&origin).await;
    assert_eq!(
        keys(&storage),
        ["weft.consent"],
        "only the decision is kept: {storage:?}"
    );
    assert_eq!(chromium.cookies().await, Vec::<Value>::new(), "no cookies");
    assert_eq!(
        page.session_storage(&origin).await,
        [],
        "empty sessionStorage"
    );
    assert_eq!(page.indexed_db_names(&origin).await, Vec::<String>::new());
    no_exceptions(&page);
}

// 11. ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawal_clears_the_identity_at_once_and_stops_capture() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    let origin = site.url("");
    page.goto(&site.url("/optin.html")).await;
    sdk_ready(&page).await;
    page.eval("weft.consent.grantAll(); weft.track('Before Withdrawal')")
        .await;
    let aid = page.eval("weft.anonymousId()").await;
    let aid = aid.as_str().expect("an identity after grantAll").to_owned();
    stored_when(&c, &page, "the events before withdrawal", |rows| {
        !tracks(rows, "Before Withdrawal").is_empty()
    })
    .await;
    let before = c.rows().len();

    page.eval("weft.consent.set({analytics: false})").await;
    // At once: nothing of the identity is left in what the page wrote.
    let storage = page.local_storage(&origin).await;
    assert_eq!(
        keys(&storage),
        ["weft.consent"],
        "only the decision is kept: {storage:?}"
    );
    let names = |cookies: Vec<Value>| -> Vec<String> {
        cookies
            .iter()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    };
    let left = names(chromium.cookies().await);
    assert!(
        left.iter().all(|n| n == "weft_device"),
        "no cookie of the script's: {left:?}"
    );
    // The collector's own cookie (HttpOnly) goes with the answer to the
    // withdrawal record.
    weft_e2e::eventually(
        Duration::from_secs(10),
        "the collector's cookie deleted",
        || async { names(chromium.cookies().await).is_empty().then_some(()) },
    )
    .await;
    assert_eq!(page.session_storage(&origin).await, []);
    assert_eq!(page.eval("weft.anonymousId()").await, Value::Null);
    let now = page.eval("weft.consent.get()").await;
    assert_eq!(now["analytics"], false, "{now}");

    page.eval("weft.track('After Withdrawal'); weft.page()")
        .await;
    page.click("#buy").await;
    page.eval("history.pushState({}, '', '/optin/after')").await;
    flush_and_settle(&page).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let rows = c.rows();
    let after: Vec<&StoredEvent> = rows[before..].iter().collect();
    assert_eq!(
        after.len(),
        1,
        "only the withdrawal record arrives: {after:?}"
    );
    let record = after[0];
    assert!(record.is_track("Consent Updated"), "{}", record.raw);
    assert_eq!(
        record.anonymous_id.as_deref(),
        Some(aid.as_str()),
        "sent with the old identity"
    );
    assert_eq!(
        record.body["properties"]["categoryPreferences"]["analytics"],
        false
    );
    assert!(tracks(&rows, "After Withdrawal").is_empty());

    let history = consent_history(&c, &aid).await;
    let entries = history["consent"].as_array().expect("consent history");
    assert_eq!(entries.len(), 2, "grant and withdrawal: {history}");
    assert_eq!(entries[1]["preferences"]["analytics"], false, "{history}");

    // Re-granting starts a new identity.
    page.eval("weft.consent.grantAll()").await;
    let again = page.eval("weft.anonymousId()").await;
    assert!(
        again.as_str().is_some_and(|a| a != aid),
        "a new anonymousId after re-granting: {again} (was {aid})"
    );
    no_exceptions(&page);
}

// 12. ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_privacy_control_on_an_opt_out_page_denies_marketing_only() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.add_init_script(
        "Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', \
         {get: () => true, configurable: true});",
    )
    .await;
    page.goto(&site.url("/optout.html")).await;
    sdk_ready(&page).await;
    assert_eq!(page.eval("navigator.globalPrivacyControl").await, true);
    assert_eq!(
        page.eval("weft.consent.get()").await,
        prefs(true, false, true)
    );

    page.eval(
        "weft.track('Ad Conversion', {value: 9}, {category: 'marketing'}); \
         weft.track('Plain Analytics', {value: 1})",
    )
    .await;
    let rows = stored_when(&c, &page, "the analytics event", |rows| {
        !tracks(rows, "Plain Analytics").is_empty()
    })
    .await;
    assert!(
        tracks(&rows, "Ad Conversion").is_empty(),
        "marketing is denied"
    );
    assert_eq!(tracks(&rows, "Plain Analytics").len(), 1);
    let consent = &tracks(&rows, "Plain Analytics")[0].body["context"]["consent"];
    assert_eq!(consent["category"], "analytics", "{consent}");
    assert_eq!(
        consent["categoryPreferences"]["marketing"], false,
        "{consent}"
    );

    // Not merely dropped by the collector: never sent at all.
    let batches = page.requests_to("/v1/batch");
    assert!(!batches.is_empty());
    for request in &batches {
        let body = page
            .request_body(request)
            .await
            .unwrap_or_else(|| panic!("the browser kept the body of {}", request.url));
        assert!(
            !body.contains("Ad Conversion"),
            "a marketing event was sent: {body}"
        );
    }
    let metrics = String::from_utf8(c.send(Request::get("/metrics")).await.body).unwrap();
    let dropped = metrics
        .lines()
        .find(|l| l.starts_with("weft_events_dropped_total{reason=\"consent_denied\"}"));
    assert!(
        dropped.is_none_or(|l| l.ends_with(" 0")),
        "the collector had to drop events for consent: {dropped:?}"
    );
    no_exceptions(&page);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_not_track_on_a_site_that_honours_it_denies_all_but_necessary() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    let origin = site.url("");
    page.add_init_script(
        "Object.defineProperty(Navigator.prototype, 'doNotTrack', \
         {get: () => '1', configurable: true});",
    )
    .await;
    page.goto(&site.url("/dnt.html")).await;
    sdk_ready(&page).await;
    assert_eq!(page.eval("navigator.doNotTrack").await, "1");
    assert_eq!(
        page.eval("weft.consent.get()").await,
        prefs(false, false, false)
    );
    page.eval("weft.track('Under DNT'); weft.page()").await;
    page.click("#buy").await;
    flush_and_settle(&page).await;
    assert_eq!(api_requests(&page), Vec::<String>::new(), "nothing sent");
    assert!(c.rows().is_empty());
    assert_eq!(page.eval("weft.anonymousId()").await, Value::Null);
    assert_eq!(chromium.cookies().await, Vec::<Value>::new(), "no cookies");
    let storage = page.local_storage(&origin).await;
    assert!(
        keys(&storage).iter().all(|k| *k == "weft.consent"),
        "nothing but a decision stored: {storage:?}"
    );
    no_exceptions(&page);
}

// 13. ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_consent_mode_names_map_onto_weft_categories() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.goto(&site.url("/optin.html")).await;
    sdk_ready(&page).await;

    let set = |prefs: &str| format!("weft.consent.set({prefs}); weft.consent.get()");
    assert_eq!(
        page.eval(&set("{analytics_storage: 'granted', ad_storage: 'denied'}"))
            .await,
        prefs(true, false, false)
    );
    page.eval(
        "weft.track('Ad Before Grant', {}, {category: 'marketing'}); \
         weft.track('GCM Analytics')",
    )
    .await;
    let rows = stored_when(
        &c,
        &page,
        "the analytics event and the consent record",
        |rows| {
            !tracks(rows, "GCM Analytics").is_empty() && !tracks(rows, "Consent Updated").is_empty()
        },
    )
    .await;
    let record = &tracks(&rows, "Consent Updated")[0].body["properties"]["categoryPreferences"];
    assert_eq!(
        (
            &record["analytics"],
            &record["marketing"],
            &record["personalization"]
        ),
        (&json!(true), &json!(false), &json!(false)),
        "{record}"
    );
    assert!(tracks(&rows, "Ad Before Grant").is_empty());

    // Marketing: granted only if every Consent Mode name given grants it;
    // names not given keep their category.
    assert_eq!(
        page.eval(&set("{ad_storage: 'granted', ad_user_data: 'denied'}"))
            .await,
        prefs(true, false, false)
    );
    assert_eq!(
        page.eval(&set(
            "{ad_storage: 'granted', ad_user_data: 'granted', ad_personalization: 'granted'}"
        ))
        .await,
        prefs(true, true, false)
    );
    assert_eq!(
        page.eval(&set("{personalization_storage: 'granted'}"))
            .await,
        prefs(true, true, true)
    );
    assert_eq!(
        page.eval(&set(
            "{analytics_storage: 'denied', personalization_storage: false}"
        ))
        .await,
        prefs(false, true, false)
    );
    assert_eq!(
        page.eval(&set("{analytics: true, marketing: 'denied'}"))
            .await,
        prefs(true, false, false)
    );
    assert_eq!(
        page.eval(&set("{ad_storage: 'granted'}")).await,
        prefs(true, true, false)
    );
    page.eval("weft.track('Ad After Grant', {}, {category: 'marketing'})")
        .await;
    let rows = stored_when(&c, &page, "the marketing event once granted", |rows| {
        !tracks(rows, "Ad After Grant").is_empty()
    })
    .await;
    assert_eq!(tracks(&rows, "Ad After Grant").len(), 1);
    assert!(tracks(&rows, "Ad Before Grant").is_empty());
    no_exceptions(&page);
}
