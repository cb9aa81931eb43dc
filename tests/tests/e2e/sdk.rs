//! The browser SDK in real headless Chromium against a real collector: the
//! promises of the SDK contract that only a browser can check. Page views
//! of single-page apps, click capture and what it must never capture,
//! identity across reloads and subdomains, delivery through offline
//! periods, 503s and page unloads, the pre-load stub, and a host page that
//! never sees an exception whatever it throws at the API.
//!
//! Every test reads what the collector stored (its SQLite file) and what the
//! browser holds (cookies, storage, requests) through CDP, from outside the
//! page; fixture pages are in `tests/fixtures/sdk/`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use weft_e2e::chromium::{Chromium, WEFT_TEST_HOSTS};
use weft_e2e::eventually;
use weft_e2e::harness::{StoredEvent, TestCollector};
use weft_e2e::site::{
    FlakyProxy, Site, fixture_collector, fixture_site, fixtures_dir, no_exceptions, sdk_ready,
    stored_when, tracks,
};

/// `classes` as a list, whether the SDK sends the attribute string or an
/// array (the contract names the property, not its shape).
fn classes(props: &Value) -> Vec<String> {
    match &props["classes"] {
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn cookie<'a>(cookies: &'a [Value], name: &str) -> Option<&'a Value> {
    cookies.iter().find(|c| c["name"] == name)
}

/// `origin`'s localStorage once `key` holds `value` (the SDK writes its
/// identity with the queue, at the next idle moment: at most 500 ms after
/// the change).
pub(crate) async fn saved(
    page: &weft_e2e::chromium::Page,
    origin: &str,
    key: &str,
    value: Option<&str>,
) -> Vec<(String, String)> {
    eventually(Duration::from_secs(3), &format!("{key} saved"), || async {
        let storage = page.local_storage(origin).await;
        (storage_value(&storage, key).as_deref() == value).then_some(storage)
    })
    .await
}

fn storage_value(items: &[(String, String)], key: &str) -> Option<String> {
    items.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

// 1. -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_change_comes_before_the_calls_made_after_it_in_the_same_task() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.goto(&site.url("/spa.html")).await;
    sdk_ready(&page).await;
    // A router changes the route and the page tracks at once, in one task
    // (before the SDK's own check of the route, after the task, ran).
    page.eval("history.pushState({}, '', '/checkout'); weft.track('Checkout Started'); true")
        .await;
    let rows = stored_when(&c, &page, "the route's view and the call", |rows| {
        !tracks(rows, "Checkout Started").is_empty()
    })
    .await;
    let steps: Vec<String> = rows
        .iter()
        .map(|r| match r.kind.as_str() {
            "page" => format!("page {}", r.body["context"]["page"]["path"]),
            _ => r.event.clone().unwrap_or_default(),
        })
        .collect();
    assert_eq!(
        steps,
        [
            "page \"/spa.html\"",
            "page \"/checkout\"",
            "Checkout Started"
        ],
        "in the order they happened"
    );
    let call = tracks(&rows, "Checkout Started")[0];
    assert_eq!(
        call.body["context"]["page"]["path"], "/checkout",
        "the call carries the new route's page"
    );
    no_exceptions(&page);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spa_navigation_counts_each_real_url_change_once_with_the_previous_url_as_referrer() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    let base = site.url("");
    page.goto(&site.url("/spa.html")).await;
    sdk_ready(&page).await;

    // One step per task, at a (fast) human pace.
    let steps = [
        // A new path.
        "history.pushState({}, '', '/products')",
        // A router that pushes then replaces with the same URL: one view.
        "history.pushState({}, '', '/products/42'); history.replaceState({}, '', '/products/42')",
        // A router saving its state (scroll position) in a later task: same
        // URL, not a page view.
        "history.replaceState({scroll: 120}, '')",
        // replaceState to a new URL (new query) counts.
        "history.replaceState({}, '', '/products/42?color=red')",
        // Back: popstate to /products.
        "new Promise(r => { addEventListener('popstate', () => setTimeout(r, 0), {once: true}); history.back(); })",
        // Fragment-only changes are not page views...
        "location.hash = '#reviews'",
        "history.pushState({}, '', '#specs')",
        // ...but a `#/` route is.
        "location.hash = '#/cart'",
    ];
    for step in steps {
        page.eval(step).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(
        page.eval("location.href").await,
        format!("{base}/products#/cart").as_str()
    );

    let rows = stored_when(&c, &page, "six page views", |rows| {
        rows.iter().filter(|r| r.kind == "page").count() >= 6
    })
    .await;
    let views: Vec<&Value> = rows
        .iter()
        .filter(|r| r.kind == "page")
        .map(|r| &r.body["context"]["page"])
        .collect();
    let summary: Vec<String> = views.iter().map(|p| p["url"].to_string()).collect();
    assert_eq!(views.len(), 6, "page views stored: {summary:?}");

    let expect = |i: usize, path: &str, url: &str, search: &str, referrer: &[&str]| {
        let p = views[i];
        assert_eq!(p["path"], path, "page view {i}: {p}");
        assert_eq!(
            p["url"],
            format!("{base}{url}").as_str(),
            "page view {i}: {p}"
        );
        let got_search = p["search"].as_str().unwrap_or("");
        assert_eq!(got_search, search, "page view {i} search: {p}");
        let got_referrer = p["referrer"].as_str().unwrap_or("");
        let allowed: Vec<String> = referrer
            .iter()
            .map(|r| {
                if r.is_empty() {
                    String::new()
                } else {
                    format!("{base}{r}")
                }
            })
            .collect();
        assert!(
            allowed.iter().any(|a| a == got_referrer),
            "page view {i} referrer: expected one of {allowed:?}, got {p}"
        );
        assert_eq!(p["title"], "SPA fixture", "page view {i}: {p}");
    };
    expect(0, "/spa.html", "/spa.html", "", &[""]);
    expect(1, "/products", "/products", "", &["/spa.html"]);
    expect(2, "/products/42", "/products/42", "", &["/products"]);
    expect(
        3,
        "/products/42",
        "/products/42?color=red",
        "?color=red",
        &["/products/42"],
    );
    expect(4, "/products", "/products", "", &["/products/42?color=red"]);
    // The previous URL: the last page view's, or the last URL seen.
    expect(
        5,
        "/products",
        "/products#/cart",
        "",
        &["/products", "/products#specs"],
    );
    no_exceptions(&page);
}

// 2. -----------------------------------------------------------------------

/// What a captured click must look like.
struct Click {
    selector: &'static str,
    event: &'static str,
    tag: &'static str,
    id: &'static str,
    /// `None`: no text may be sent.
    text: Option<&'static str>,
}

const SECRET_NAME: &str = "Name-Secret-5521";
const SECRET_USER: &str = "User-Secret-8830";
const SECRET_PASSWORD: &str = "hunter2-Password-Secret-4711";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_are_captured_with_masking_and_input_values_never_leave_the_page() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.goto(&site.url("/clicks.html")).await;
    sdk_ready(&page).await;

    let long = "Lorem ipsum dolor sit amet consectetur adipiscing elit sed doeiusmodtemporincididunt ut labore et dolore magna aliqua";
    let captured = [
        Click {
            selector: "#link",
            event: "Element Clicked",
            tag: "a",
            id: "link",
            text: Some("Go to top"),
        },
        Click {
            selector: "#plain",
            event: "Element Clicked",
            tag: "button",
            id: "plain",
            text: Some("Buy now"),
        },
        Click {
            selector: "#signup",
            event: "Signup",
            tag: "button",
            id: "signup",
            text: Some("Create account"),
        },
        Click {
            selector: "#masked",
            event: "Element Clicked",
            tag: "button",
            id: "masked",
            text: None,
        },
        Click {
            selector: "#in-mask",
            event: "Element Clicked",
            tag: "button",
            id: "in-mask",
            text: None,
        },
        Click {
            selector: "#contains-mask",
            event: "Element Clicked",
            tag: "button",
            id: "contains-mask",
            text: None,
        },
        Click {
            selector: "#nested-inner",
            event: "Element Clicked",
            tag: "button",
            id: "nested",
            text: Some("Nested label"),
        },
        Click {
            selector: "#role-button",
            event: "Element Clicked",
            tag: "span",
            id: "role-button",
            text: Some("Role button"),
        },
        Click {
            selector: "#card-box",
            event: "Element Clicked",
            tag: "div",
            id: "card-box",
            text: None,
        },
        Click {
            selector: "#long",
            event: "Element Clicked",
            tag: "button",
            id: "long",
            text: Some(long),
        },
        Click {
            selector: "#submit",
            event: "Element Clicked",
            tag: "input",
            id: "submit",
            text: None,
        },
        Click {
            selector: "#input-button",
            event: "Element Clicked",
            tag: "input",
            id: "input-button",
            text: None,
        },
    ];

    // Typed secrets first (inputs are not captured on click), then every
    // element, interleaved with clicks that must not be captured.
    page.click("#name").await;
    page.insert_text(SECRET_NAME).await;
    page.click("#user").await;
    page.insert_text(SECRET_USER).await;
    page.click("#pw").await;
    page.insert_text(SECRET_PASSWORD).await;
    assert_eq!(
        page.eval("document.querySelector('#pw').value").await,
        SECRET_PASSWORD,
        "the password was really typed"
    );
    for (i, click) in captured.iter().enumerate() {
        page.click(click.selector).await;
        if i == 2 {
            page.click("#ignored").await;
            page.click("#plain-div").await;
        }
    }

    let is_click =
        |r: &StoredEvent| r.kind == "track" && captured.iter().any(|c| r.is_track(c.event));
    let rows = stored_when(&c, &page, "the captured clicks", |rows| {
        rows.iter().filter(|r| is_click(r)).count() >= captured.len()
    })
    .await;
    let clicks: Vec<&StoredEvent> = rows.iter().filter(|r| is_click(r)).collect();
    let ids: Vec<String> = clicks
        .iter()
        .map(|r| r.body["properties"]["id"].to_string())
        .collect();
    assert_eq!(
        clicks.len(),
        captured.len(),
        "one event per captured click, none for [data-weft-ignore] or plain text: {ids:?}"
    );
    for (row, want) in clicks.iter().zip(&captured) {
        let props = &row.body["properties"];
        assert_eq!(
            row.event.as_deref(),
            Some(want.event),
            "{}: {props}",
            want.selector
        );
        assert_eq!(props["tag"], want.tag, "{}: {props}", want.selector);
        assert_eq!(props["id"], want.id, "{}: {props}", want.selector);
        match want.text {
            None => assert!(
                props.get("text").is_none_or(Value::is_null),
                "{}: no text may be sent: {props}",
                want.selector
            ),
            Some(t) if t == long => {
                let text = props["text"]
                    .as_str()
                    .unwrap_or_else(|| panic!("#long has text: {props}"));
                let n = text.chars().count();
                assert!(
                    (60..=64).contains(&n),
                    "#long text is cut to at most 64 chars: {text:?} ({n})"
                );
                let head = text.trim_end_matches('…').trim_end();
                assert!(
                    long.starts_with(head),
                    "#long text is its beginning: {text:?}"
                );
            }
            Some(t) => assert_eq!(props["text"], t, "{}: {props}", want.selector),
        }
    }
    let link = &clicks[0].body["properties"];
    assert_eq!(classes(link), ["nav", "main"], "link classes: {link}");
    assert!(
        link["href"].as_str().is_some_and(|h| h.ends_with("#top")),
        "link href: {link}"
    );
    assert_eq!(classes(&clicks[1].body["properties"]), ["btn", "primary"]);

    // Nothing masked or typed appears anywhere: stored bodies, request
    // bodies, the SDK's storage.
    let forbidden = [
        SECRET_NAME,
        SECRET_USER,
        SECRET_PASSWORD,
        "Jane Doe",
        "Ignored admin button",
        "Save profile",
        "Preview profile",
    ];
    for row in &rows {
        for f in forbidden {
            assert!(
                !row.raw.contains(f),
                "{f:?} leaked into a stored event: {}",
                row.raw
            );
        }
    }
    let batches = page.requests_to("/v1/batch");
    assert!(!batches.is_empty(), "batches were observed");
    for request in batches {
        let body = page
            .request_body(&request)
            .await
            .unwrap_or_else(|| panic!("the browser kept the body of {}", request.url));
        for f in forbidden {
            assert!(!body.contains(f), "{f:?} was sent: {body}");
        }
    }
    for (key, value) in page.local_storage(&site.url("")).await {
        for f in forbidden {
            assert!(
                !value.contains(f),
                "{f:?} stored in localStorage {key}: {value}"
            );
        }
    }
    no_exceptions(&page);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_button_keeps_its_label_but_typed_secrets_never_leave_the_page() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.goto(&site.url("/clicks.html")).await;
    sdk_ready(&page).await;
    page.click("#user").await;
    page.insert_text(SECRET_USER).await;
    page.click("#pw").await;
    page.insert_text(SECRET_PASSWORD).await;
    page.click("#login").await;
    let rows = stored_when(&c, &page, "the login click", |rows| {
        rows.iter().any(|r| r.is_track("Element Clicked"))
    })
    .await;
    let clicks = tracks(&rows, "Element Clicked");
    assert_eq!(clicks.len(), 1, "{rows:?}");
    let props = &clicks[0].body["properties"];
    assert_eq!(props["id"], "login");
    // The button's own label is not inside a sensitive field: kept. What
    // was typed into the fields never appears anywhere.
    assert_eq!(props["text"], "Log in now", "{props}");
    for row in &rows {
        assert!(!row.raw.contains(SECRET_PASSWORD) && !row.raw.contains(SECRET_USER));
    }
    no_exceptions(&page);
}

// 3. -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_survives_reloads_and_reset_starts_a_new_one() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    let origin = site.url("");
    page.goto(&site.url("/basic.html")).await;
    sdk_ready(&page).await;

    let aid = page.eval("weft.anonymousId()").await;
    let aid = aid
        .as_str()
        .expect("an anonymousId under opt-out")
        .to_owned();
    assert_eq!(aid.len(), 36, "a UUID: {aid}");
    // Written by the idle-time saver, not on the way to ready.
    let storage = saved(&page, &origin, "weft.aid", Some(&aid)).await;
    assert_eq!(
        storage_value(&storage, "weft.aid"),
        Some(aid.clone()),
        "{storage:?}"
    );
    let cookies = chromium.cookies().await;
    let aid_cookie =
        cookie(&cookies, "weft_aid").unwrap_or_else(|| panic!("weft_aid cookie: {cookies:?}"));
    assert_eq!(aid_cookie["value"], aid.as_str());
    assert_eq!(aid_cookie["sameSite"], "Lax", "{aid_cookie}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let expires = aid_cookie["expires"].as_f64().unwrap_or(0.0);
    assert!(
        expires - now > 300.0 * 86_400.0,
        "the cookie lasts about a year: {aid_cookie}"
    );

    page.reload().await;
    sdk_ready(&page).await;
    assert_eq!(
        page.eval("weft.anonymousId()").await,
        aid.as_str(),
        "same id after reload"
    );

    page.eval("weft.identify('user-42', {plan: 'pro'})").await;
    assert_eq!(page.eval("weft.userId()").await, "user-42");
    page.reload().await;
    sdk_ready(&page).await;
    assert_eq!(
        page.eval("weft.userId()").await,
        "user-42",
        "userId persists"
    );
    assert_eq!(page.eval("weft.anonymousId()").await, aid.as_str());
    let storage = page.local_storage(&origin).await;
    assert_eq!(
        storage_value(&storage, "weft.uid").as_deref(),
        Some("user-42"),
        "{storage:?}"
    );
    page.eval("weft.track('After Reload')").await;

    page.eval("weft.reset()").await;
    let new_aid = page.eval("weft.anonymousId()").await;
    let new_aid = new_aid
        .as_str()
        .expect("an anonymousId after reset")
        .to_owned();
    assert_ne!(new_aid, aid, "reset gives a new anonymousId");
    assert_eq!(
        page.eval("weft.userId()").await,
        Value::Null,
        "reset clears the userId"
    );
    let storage = saved(&page, &origin, "weft.aid", Some(&new_aid)).await;
    assert_eq!(storage_value(&storage, "weft.uid"), None, "{storage:?}");
    let cookies = chromium.cookies().await;
    assert_eq!(
        cookie(&cookies, "weft_aid").map(|c| c["value"].clone()),
        Some(json!(new_aid)),
        "{cookies:?}"
    );
    page.eval("weft.track('After Reset')").await;

    let rows = stored_when(&c, &page, "the events before and after reset", |rows| {
        !tracks(rows, "After Reset").is_empty() && !tracks(rows, "After Reload").is_empty()
    })
    .await;
    let before = tracks(&rows, "After Reload");
    assert_eq!(before.len(), 1);
    assert_eq!(
        (
            before[0].anonymous_id.as_deref(),
            before[0].user_id.as_deref()
        ),
        (Some(aid.as_str()), Some("user-42"))
    );
    let after = tracks(&rows, "After Reset");
    assert_eq!(after.len(), 1);
    assert_eq!(
        (
            after[0].anonymous_id.as_deref(),
            after[0].user_id.as_deref()
        ),
        (Some(new_aid.as_str()), None),
        "events after reset carry the new id and no userId"
    );
    let identifies: Vec<&StoredEvent> = rows.iter().filter(|r| r.kind == "identify").collect();
    assert_eq!(identifies.len(), 1, "{rows:?}");
    assert_eq!(identifies[0].user_id.as_deref(), Some("user-42"));
    assert_eq!(identifies[0].body["traits"]["plan"], "pro");
    // Three loads, three page views, the first two under the old id.
    let pages: Vec<Option<&str>> = rows
        .iter()
        .filter(|r| r.kind == "page")
        .map(|r| r.anonymous_id.as_deref())
        .collect();
    assert_eq!(pages, [Some(aid.as_str()); 3], "{rows:?}");
    no_exceptions(&page);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anonymous_id_is_shared_across_subdomains_of_the_registrable_domain() {
    // As deployed: the shop and the blog on two host names of one
    // registrable domain, the collector on a third host name that allows
    // exactly those two origins.
    let site = Site::start(&fixtures_dir(), "", &[]).await;
    let shop = site.url_on("shop.weft.test", "");
    let blog = site.url_on("blog.weft.test", "");
    let allowed = vec![shop.clone(), blog.clone()];
    let c = TestCollector::start_with(move |config| {
        config.www_dir = None;
        config.sources[0].allowed_origins = allowed;
    })
    .await;
    let collector = format!("http://collect.weft.test:{}", c.addr.port());
    site.set("%WEFT_COLLECTOR%", &collector);
    let chromium = Chromium::launch_with(&[WEFT_TEST_HOSTS]).await;
    let page = chromium.new_page().await;

    page.goto(&format!("{shop}/basic.html")).await;
    sdk_ready(&page).await;
    let aid = page.eval("weft.anonymousId()").await;
    let aid = aid.as_str().expect("an anonymousId").to_owned();
    // Written by the idle-time saver, not on the way to ready.
    let cookies = eventually(Duration::from_secs(3), "the weft_aid cookie", || async {
        let cookies = chromium.cookies().await;
        cookie(&cookies, "weft_aid").is_some().then_some(cookies)
    })
    .await;
    let aid_cookie =
        cookie(&cookies, "weft_aid").unwrap_or_else(|| panic!("weft_aid cookie: {cookies:?}"));
    assert_eq!(aid_cookie["value"], aid.as_str());
    assert!(
        matches!(
            aid_cookie["domain"].as_str(),
            Some(".weft.test" | "weft.test")
        ),
        "the cookie is on the registrable domain, not the host: {aid_cookie}"
    );

    page.goto(&format!("{blog}/basic.html")).await;
    sdk_ready(&page).await;
    assert_eq!(
        page.eval("weft.anonymousId()").await,
        aid.as_str(),
        "the other subdomain reads the same anonymousId"
    );
    // Kept in the blog's own storage too, at its next idle moment.
    saved(&page, &blog, "weft.aid", Some(&aid)).await;

    let rows = stored_when(&c, &page, "a page view from each subdomain", |rows| {
        rows.iter().filter(|r| r.kind == "page").count() >= 2
    })
    .await;
    let pages: Vec<(Option<&str>, &Value)> = rows
        .iter()
        .filter(|r| r.kind == "page")
        .map(|r| (r.anonymous_id.as_deref(), &r.body["context"]["page"]["url"]))
        .collect();
    assert_eq!(
        pages,
        [
            (Some(aid.as_str()), &json!(format!("{shop}/basic.html"))),
            (Some(aid.as_str()), &json!(format!("{blog}/basic.html"))),
        ]
    );
    no_exceptions(&page);
}

// 4. -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tracked_offline_are_delivered_exactly_once_when_back_online() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.goto(&site.url("/basic.html")).await;
    sdk_ready(&page).await;
    stored_when(&c, &page, "the first page view", |rows| !rows.is_empty()).await;

    page.set_offline(true).await;
    assert_eq!(page.eval("navigator.onLine").await, false);
    let names: Vec<String> = (1..=5).map(|i| format!("Offline {i}")).collect();
    for name in &names {
        page.eval(&format!("weft.track({name:?}, {{offline: true}})"))
            .await;
    }
    page.click("#buy").await;
    page.eval("weft.flush()").await;
    // Long enough for a send to fail and a first retry to be scheduled.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        c.rows()
            .iter()
            .all(|r| r.event.as_deref().is_none_or(|e| !e.starts_with("Offline"))),
        "nothing can arrive while offline"
    );
    page.set_offline(false).await;

    let rows = stored_when(&c, &page, "the offline events, once online", |rows| {
        names.iter().all(|n| !tracks(rows, n).is_empty())
            && !tracks(rows, "Element Clicked").is_empty()
    })
    .await;
    for name in &names {
        assert_eq!(tracks(&rows, name).len(), 1, "{name} stored exactly once");
    }
    assert_eq!(tracks(&rows, "Element Clicked").len(), 1);
    assert_eq!(rows.iter().filter(|r| r.kind == "page").count(), 1);
    let ids: BTreeSet<&str> = rows.iter().map(|r| r.message_id.as_str()).collect();
    assert_eq!(ids.len(), rows.len(), "messageIds are unique");
    no_exceptions(&page);
}

// 5. -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_answered_503_are_retried_with_the_same_message_ids() {
    let c = fixture_collector().await;
    let proxy = FlakyProxy::start(c.addr, 2).await;
    let site = Site::start(
        &fixtures_dir(),
        &c.url(""),
        &[("%WEFT_PROXY%", &proxy.url(""))],
    )
    .await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.goto(&site.url("/retry.html")).await;
    sdk_ready(&page).await;
    page.eval("weft.track('Retry A'); weft.track('Retry B'); weft.flush()")
        .await;

    let rows = stored_when(&c, &page, "the events, through the flaky proxy", |rows| {
        !tracks(rows, "Retry A").is_empty() && !tracks(rows, "Retry B").is_empty()
    })
    .await;
    assert_eq!(tracks(&rows, "Retry A").len(), 1);
    assert_eq!(tracks(&rows, "Retry B").len(), 1);
    assert_eq!(rows.iter().filter(|r| r.kind == "page").count(), 1);
    assert_eq!(rows.len(), 3, "{rows:?}");

    let seen = proxy.seen();
    let failed: BTreeSet<&str> = seen
        .iter()
        .filter(|b| b.status == 503)
        .flat_map(|b| b.message_ids.iter().map(String::as_str))
        .collect();
    let delivered: BTreeSet<&str> = seen
        .iter()
        .filter(|b| b.status == 200)
        .flat_map(|b| b.message_ids.iter().map(String::as_str))
        .collect();
    assert_eq!(
        seen.iter().filter(|b| b.status == 503).count(),
        2,
        "the proxy failed two batches: {seen:?}"
    );
    assert!(
        !failed.is_empty(),
        "the failed batches carried messages: {seen:?}"
    );
    assert!(
        failed.is_subset(&delivered),
        "every message of a 503'd batch was retried with its messageId: {seen:?}"
    );
    let stored: BTreeSet<&str> = rows.iter().map(|r| r.message_id.as_str()).collect();
    assert_eq!(stored, delivered, "what was delivered is what is stored");
    no_exceptions(&page);
}

/// A 503 with `Retry-After: 3` is retried after three seconds, not after
/// the first backoff step (at most one second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_from_the_collector_is_honoured() {
    let c = fixture_collector().await;
    let proxy = FlakyProxy::start_with_retry_after(c.addr, 1, Some(3)).await;
    let site = Site::start(
        &fixtures_dir(),
        &c.url(""),
        &[("%WEFT_PROXY%", &proxy.url(""))],
    )
    .await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.goto(&site.url("/retry.html")).await;
    // No flush() calls here: only the SDK's own schedule decides.
    let seen = eventually(Duration::from_secs(15), "a retry after the 503", || async {
        let seen = proxy.seen();
        (seen.len() >= 2).then_some(seen)
    })
    .await;
    assert_eq!(seen[0].status, 503);
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_millis(2900),
        "retried {gap:?} after a 503 with Retry-After: 3"
    );
    assert_eq!(
        seen[1].message_ids, seen[0].message_ids,
        "the same messages again"
    );
    eventually(Duration::from_secs(5), "the page view stored", || async {
        (c.rows().len() == 1).then_some(())
    })
    .await;
    no_exceptions(&page);
}

/// The queue outlives the page: messages the collector has not accepted
/// when the visitor reloads (even if the page-hide beacon was tried) are
/// sent by the next page, with the same messageIds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_survive_a_reload_with_their_message_ids() {
    let c = fixture_collector().await;
    let proxy = FlakyProxy::start(c.addr, usize::MAX).await;
    let site = Site::start(
        &fixtures_dir(),
        &c.url(""),
        &[("%WEFT_PROXY%", &proxy.url(""))],
    )
    .await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.goto(&site.url("/retry.html")).await;
    sdk_ready(&page).await;
    page.eval("weft.track('Survivor'); weft.flush()").await;
    let id = eventually(
        Duration::from_secs(10),
        "a failed batch carrying the event",
        || async {
            proxy.seen().iter().find_map(|b| {
                (b.status == 503 && b.message_ids.len() >= 2).then(|| b.message_ids.clone())
            })
        },
    )
    .await;
    assert!(c.rows().is_empty());

    page.reload().await;
    proxy.heal();
    sdk_ready(&page).await;
    let rows = stored_when(&c, &page, "the event from before the reload", |rows| {
        !tracks(rows, "Survivor").is_empty()
    })
    .await;
    assert_eq!(tracks(&rows, "Survivor").len(), 1);
    assert_eq!(
        rows.iter().filter(|r| r.kind == "page").count(),
        2,
        "{rows:?}"
    );
    let stored: BTreeSet<&str> = rows.iter().map(|r| r.message_id.as_str()).collect();
    for m in &id {
        assert!(
            stored.contains(m.as_str()),
            "message {m} kept its id: {stored:?}"
        );
    }
    no_exceptions(&page);
}

// 6. -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_still_queued_when_the_page_is_left_are_delivered() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.goto(&site.url("/pagehide.html")).await;
    sdk_ready(&page).await;
    page.eval("weft.track('Leaving Soon', {cart: 3})").await;
    // The test means something only if the event is still queued: the SDK
    // may send at start (the first page view), not on the interval.
    for request in page.requests_to("/v1/batch") {
        let body = page.request_body(&request).await.unwrap_or_default();
        assert!(
            !body.contains("Leaving Soon"),
            "sent before leaving: {body}"
        );
    }
    // Away to a page without the SDK: only the unload path can deliver.
    page.goto("about:blank").await;

    let rows = eventually(
        Duration::from_secs(10),
        "the queued events after leaving",
        || async {
            let rows = c.rows();
            (!tracks(&rows, "Leaving Soon").is_empty()).then_some(rows)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = if c.rows().len() == rows.len() {
        rows
    } else {
        c.rows()
    };
    assert_eq!(tracks(&rows, "Leaving Soon").len(), 1);
    assert_eq!(
        rows.iter().filter(|r| r.kind == "page").count(),
        1,
        "{rows:?}"
    );
    no_exceptions(&page);
}

// 7. -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_calls_never_throw_and_the_sdk_keeps_working() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.goto(&site.url("/basic.html")).await;
    sdk_ready(&page).await;

    let thrown = page
        .eval(
            r#"(() => {
  const cyclic = {name: 'loop'}; cyclic.self = cyclic; cyclic.list = [cyclic];
  const weird = [undefined, null, 0, 42, -1.5, NaN, Infinity, true, false, '', 'plain',
    {}, [], [1, [2, [3]]], cyclic, {big: 10n}, {nested: {big: 1n, ok: 1}}, 10n,
    Symbol('s'), {sym: Symbol('t')}, () => 1, new Date(NaN), /re/, document.body,
    {toJSON() { throw new Error('toJSON throws'); }},
    {get boom() { throw new Error('getter throws'); }},
    new Proxy({}, {get() { throw new Error('proxy throws'); }, ownKeys() { throw new Error('proxy throws'); }}),
    {category: 42}, {category: 'no-such-category'}, {analytics: 'maybe'}];
  const fns = {
    page: weft.page, track: weft.track, identify: weft.identify, alias: weft.alias,
    group: weft.group, reset: weft.reset, flush: weft.flush, ready: weft.ready,
    anonymousId: weft.anonymousId, userId: weft.userId,
    'consent.set': weft.consent.set, 'consent.get': weft.consent.get,
    'consent.onChange': weft.consent.onChange, 'consent.grantAll': weft.consent.grantAll,
  };
  const thrown = [];
  const attempt = (name, f, args) => {
    try { f.apply(undefined, args); }
    catch (e) { thrown.push(name + ': ' + String(e && e.message || e)); }
  };
  for (const [name, f] of Object.entries(fns)) {
    if (typeof f !== 'function') { thrown.push(name + ' is not a function'); continue; }
    attempt(name, f, []);
    for (const a of weird) {
      attempt(name, f, [a]);
      attempt(name, f, ['ok', a]);
      attempt(name, f, [a, a, a]);
      attempt(name, f, ['ok', {p: a}, a]);
    }
  }
  attempt('ready throwing cb', weft.ready, [() => { throw new Error('callback throws'); }]);
  attempt('onChange throwing cb', weft.consent.onChange, [() => { throw new Error('callback throws'); }]);
  attempt('grantAll', weft.consent.grantAll, []);
  return thrown;
})()"#,
        )
        .await;
    assert_eq!(thrown, json!([]), "API calls threw into the page");

    // Still working: a plain event arrives, with an identity.
    page.eval("weft.consent.grantAll(); weft.track('After Hostile', {ok: true})")
        .await;
    assert!(
        page.eval("typeof weft.anonymousId()").await == "string",
        "the SDK still has an identity"
    );
    let rows = eventually(
        Duration::from_secs(25),
        "the event after the hostile calls",
        || async {
            page.eval("weft.flush()").await;
            let rows = c.rows();
            (!tracks(&rows, "After Hostile").is_empty()).then_some(rows)
        },
    )
    .await;
    assert_eq!(
        tracks(&rows, "After Hostile")[0].body["properties"]["ok"],
        true
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    no_exceptions(&page);
}

/// A message too big for any request (the keepalive budget is 64 KB) must
/// not block the queue behind it: the events after it still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_does_not_block_the_events_behind_it() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.goto(&site.url("/basic.html")).await;
    sdk_ready(&page).await;
    stored_when(&c, &page, "the first page view", |rows| !rows.is_empty()).await;
    page.eval(
        "weft.track('x'.repeat(100000)); weft.track('Huge Props', {big: 'y'.repeat(100000)}); \
         weft.track('Behind The Huge Ones'); weft.flush()",
    )
    .await;
    let rows = stored_when(
        &c,
        &page,
        "the event queued behind 100 KB messages",
        |rows| !tracks(rows, "Behind The Huge Ones").is_empty(),
    )
    .await;
    assert_eq!(tracks(&rows, "Behind The Huge Ones").len(), 1);
    no_exceptions(&page);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_carries_the_documented_context() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    let url = site.url("/basic.html?utm_source=news&utm_medium=email&utm_campaign=spring%20sale&utm_term=linen&utm_content=hero&other=1");
    page.goto(&url).await;
    sdk_ready(&page).await;
    page.eval("weft.track('With Context', {a: 1}); weft.identify('ctx-user')")
        .await;
    page.click("#buy").await;
    let rows = stored_when(
        &c,
        &page,
        "a page view, a track, an identify and a click",
        |rows| rows.len() >= 4,
    )
    .await;
    assert_eq!(rows.len(), 4, "{rows:?}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    let session = rows[0].body["context"]["sessionId"].as_f64();
    for row in &rows {
        let ctx = &row.body["context"];
        assert_eq!(ctx["page"]["url"], url.as_str(), "{}", row.raw);
        assert_eq!(ctx["page"]["path"], "/basic.html", "{}", row.raw);
        assert_eq!(ctx["page"]["title"], "Basic fixture", "{}", row.raw);
        assert_eq!(
            ctx["campaign"],
            json!({"name": "spring sale", "source": "news", "medium": "email", "term": "linen", "content": "hero"}),
            "{}",
            row.raw
        );
        assert!(
            ctx["userAgent"]
                .as_str()
                .is_some_and(|u| u.contains("Chrome")),
            "{}",
            row.raw
        );
        assert!(
            ctx["locale"].as_str().is_some_and(|l| !l.is_empty()),
            "{}",
            row.raw
        );
        assert!(
            ctx["timezone"].as_str().is_some_and(|t| !t.is_empty()),
            "{}",
            row.raw
        );
        for k in ["width", "height", "density"] {
            assert!(
                ctx["screen"][k].as_f64().is_some_and(|v| v > 0.0),
                "screen.{k}: {}",
                row.raw
            );
        }
        assert_eq!(ctx["library"]["name"], "weft.js", "{}", row.raw);
        assert!(
            ctx["library"]["version"]
                .as_str()
                .is_some_and(|v| !v.is_empty()),
            "{}",
            row.raw
        );
        let sid = ctx["sessionId"]
            .as_f64()
            .unwrap_or_else(|| panic!("sessionId is a number: {}", row.raw));
        assert!(
            (now_ms - sid).abs() < 120_000.0,
            "sessionId is the session's start in ms: {sid}"
        );
        assert_eq!(Some(sid), session, "one session");
        let consent = &ctx["consent"];
        assert_eq!(
            consent["categoryPreferences"],
            json!({"necessary": true, "analytics": true, "marketing": true, "personalization": true}),
            "{}",
            row.raw
        );
        assert!(consent["category"].is_string(), "{}", row.raw);
    }
    no_exceptions(&page);
}

// 8. -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_made_through_the_stub_before_load_are_replayed_in_order() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.goto(&site.url("/stub.html")).await;
    sdk_ready(&page).await;
    page.wait_for(Duration::from_secs(5), "window.stubLog.length > 0")
        .await;
    assert_eq!(
        page.eval("window.stubLog").await,
        json!([["ready", "function"]])
    );

    let rows = stored_when(&c, &page, "the stubbed calls", |rows| rows.len() >= 5).await;
    let got: Vec<(&str, Option<&str>, Option<&str>)> = rows
        .iter()
        .map(|r| {
            let name = match r.kind.as_str() {
                "page" => r.body["name"].as_str(),
                _ => r.event.as_deref(),
            };
            (r.kind.as_str(), name, r.user_id.as_deref())
        })
        .collect();
    assert_eq!(
        got,
        [
            ("track", Some("Stub First"), None),
            ("identify", None, Some("stub-user")),
            ("track", Some("Stub Second"), Some("stub-user")),
            ("page", Some("Stub Page"), Some("stub-user")),
            ("track", Some("Stub Third"), Some("stub-user")),
        ],
        "replayed in the order they were made"
    );
    let numbers: Vec<&Value> = rows
        .iter()
        .filter(|r| r.kind != "identify")
        .map(|r| &r.body["properties"]["n"])
        .collect();
    assert_eq!(numbers, [&json!(1), &json!(2), &json!(3), &json!(4)]);
    let aids: BTreeSet<Option<&str>> = rows.iter().map(|r| r.anonymous_id.as_deref()).collect();
    assert_eq!(aids.len(), 1, "one anonymousId: {aids:?}");
    let by_type: BTreeMap<&str, usize> = rows.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.kind.as_str()).or_default() += 1;
        m
    });
    assert_eq!(
        by_type.get("page"),
        Some(&1),
        "no automatic page view: {by_type:?}"
    );
    no_exceptions(&page);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_capture_can_be_turned_off_piece_by_piece() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.goto(&site.url("/capture-off.html")).await;
    sdk_ready(&page).await;
    page.click("#buy").await;
    page.click("#link").await;
    page.eval("history.pushState({}, '', '/elsewhere'); history.pushState({}, '', '/#/route')")
        .await;
    page.eval("new Promise(r => setTimeout(r, 50))").await;
    page.eval("weft.track('Marker')").await;
    let rows = stored_when(&c, &page, "the marker event", |rows| {
        !tracks(rows, "Marker").is_empty()
    })
    .await;
    let kinds: Vec<(String, Option<String>)> = rows
        .iter()
        .map(|r| {
            (
                r.body["type"].as_str().unwrap_or("").to_owned(),
                r.body["event"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("track".to_owned(), Some("Marker".to_owned()))],
        "no page view on load or route change, no click: {rows:?}"
    );
    no_exceptions(&page);
}

// 10. ----------------------------------------------------------------------

/// The bodies of every `POST /v1/batch` the page sent, parsed.
async fn batch_bodies(page: &weft_e2e::chromium::Page) -> Vec<Value> {
    let mut bodies = Vec::new();
    for r in page.requests_to("/v1/batch") {
        if let Some(body) = page.request_body(&r).await {
            bodies.push(serde_json::from_str(&body).expect("a batch body is JSON"));
        }
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_a_thousand_arrives_whole_compressed_with_the_shared_context_once_a_batch() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.goto(&site.url("/basic.html")).await;
    sdk_ready(&page).await;
    page.eval(
        "for (let i = 0; i < 1000; i++) weft.track('Burst', {i: i, note: 'x'.repeat(100)}); true",
    )
    .await;
    let rows = eventually(Duration::from_secs(60), "1000 burst events stored", || {
        let rows = c.rows();
        async move { (tracks(&rows, "Burst").len() >= 1000).then_some(rows) }
    })
    .await;
    let burst = tracks(&rows, "Burst");
    let numbers: BTreeSet<i64> = burst
        .iter()
        .filter_map(|r| r.body["properties"]["i"].as_i64())
        .collect();
    assert_eq!((burst.len(), numbers.len()), (1000, 1000), "each once");
    // As stored, every message has its whole context back.
    for r in &burst {
        let ctx = &r.body["context"];
        assert_eq!(ctx["library"]["name"], "weft.js", "{}", r.raw);
        assert!(
            ctx["timezone"].is_string() && ctx["page"]["path"].is_string(),
            "{}",
            r.raw
        );
    }
    // On the wire, the context every message of a batch shares is sent once,
    // at the batch level.
    let bodies = batch_bodies(&page).await;
    let full: Vec<&Value> = bodies
        .iter()
        .filter(|b| b["batch"].as_array().is_some_and(|m| m.len() == 20))
        .collect();
    assert!(full.len() >= 45, "batches of 20: {}", full.len());
    for b in &bodies {
        assert_eq!(
            b["context"]["library"]["name"], "weft.js",
            "{}",
            b["context"]
        );
        assert!(b["context"]["timezone"].is_string(), "{}", b["context"]);
        for m in b["batch"].as_array().unwrap() {
            assert!(m["context"].get("library").is_none(), "sent twice: {m}");
        }
    }
    // And compressed: the bytes as sent are gzip, a few dozen per event.
    let mut wire = Vec::new();
    for e in page.events("Network.requestWillBeSent") {
        let r = &e["request"];
        if !r["url"].as_str().is_some_and(|u| u.ends_with("/v1/batch")) {
            continue;
        }
        let b64 = r["postDataEntries"][0]["bytes"].as_str().unwrap_or("");
        assert!(b64.starts_with("H4sI"), "not gzip: {}", r["postData"]);
        wire.push(b64.len() * 3 / 4);
    }
    let per_event = wire.iter().sum::<usize>() as f64 / 1001.0;
    assert!(
        per_event < 100.0,
        "{per_event} B/event on the wire: {wire:?}"
    );
    let debug = page.eval("weft.debug()").await;
    assert_eq!(debug["queueDropped"], 0, "{debug}");
    assert_eq!(debug["queued"], 0, "{debug}");
    no_exceptions(&page);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_sdk_drops_it_counts_and_data_debug_says() {
    let c = fixture_collector().await;
    let site = fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    // Over the collector's 32 KB limit: dropped, counted, and said.
    let page = chromium.new_page().await;
    page.goto(&site.url("/debug.html")).await;
    sdk_ready(&page).await;
    page.eval("weft.track('Huge', {big: 'y'.repeat(40000)}); true")
        .await;
    let debug = page.eval("weft.debug()").await;
    assert_eq!(
        (
            &debug["tooLarge"],
            &debug["queueDropped"],
            &debug["heldDropped"],
            &debug["refused"]
        ),
        (&json!(1), &json!(0), &json!(0), &json!(0)),
        "{debug}"
    );
    let said: Vec<String> = page
        .events("Runtime.consoleAPICalled")
        .iter()
        .map(|e| {
            e["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| a["value"].as_str().unwrap_or("").to_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|l| l.starts_with("weft: dropped"))
        .collect();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains(r#""tooLarge":1"#), "{said:?}");
    // Under opt-in, before a decision: 100 calls held, the rest counted.
    let page = chromium.new_page().await;
    page.goto(&site.url("/optin.html")).await;
    sdk_ready(&page).await;
    page.eval("for (let i = 0; i < 105; i++) weft.track('Held'); true")
        .await;
    let debug = page.eval("weft.debug()").await;
    assert_eq!(debug["held"], 100, "{debug}");
    assert!(debug["heldDropped"].as_u64() >= Some(5), "{debug}");
    no_exceptions(&page);
}
