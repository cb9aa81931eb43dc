//! The server-set first-party identity (issue 16): the collector on a
//! subdomain of the site sets an `HttpOnly` cookie with the device's
//! anonymous ID, only with analytics consent, so a visitor whose script
//! storage was wiped (Safari's 7-day cap) keeps one profile.
//!
//! As deployed: the shop on `www.shop.weft.test`, the collector on
//! `collect.shop.weft.test` (Chromium maps both to loopback), a disallowed
//! page on `evil.weft.test`.

use std::time::Duration;

use serde_json::{Value, json};
use weft_e2e::chromium::{Chromium, Page, WEFT_TEST_HOSTS};
use weft_e2e::harness::{ADMIN_TOKEN, TestCollector, WRITE_KEY};
use weft_e2e::http::Request;
use weft_e2e::site::{Site, fixtures_dir, flush_and_settle, no_exceptions, sdk_ready, stored_when};

/// The collector's cookie in the browser's jar, if it has one.
async fn device_cookie(chromium: &Chromium) -> Option<Value> {
    chromium
        .cookies()
        .await
        .into_iter()
        .find(|c| c["name"] == "weft_device")
}

/// Waits for the cookie to be `want` (`None`: gone).
async fn cookie_becomes(chromium: &Chromium, want: Option<&str>, what: &str) -> Option<Value> {
    weft_e2e::eventually(Duration::from_secs(15), what, || async {
        let c = device_cookie(chromium).await;
        let value = c
            .as_ref()
            .map(|c| c["value"].as_str().unwrap_or("").to_owned());
        (value.as_deref() == want).then_some(c)
    })
    .await
}

async fn anonymous_id(page: &Page) -> String {
    page.wait_for(Duration::from_secs(10), "weft.anonymousId()")
        .await
        .as_str()
        .expect("an anonymousId")
        .to_owned()
}

async fn graph(c: &TestCollector, id: &str) -> Value {
    let r = c
        .send(Request::get(&format!("/v1/profiles/{id}/graph")).bearer(ADMIN_TOKEN))
        .await;
    assert_eq!(
        r.status,
        200,
        "graph of {id}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_cookie_keeps_a_wiped_browser_on_its_profile_and_goes_with_consent() {
    let site = Site::start(&fixtures_dir(), "", &[]).await;
    let shop = site.url_on("www.shop.weft.test", "");
    let evil = site.url_on("evil.weft.test", "");
    let allowed = vec![shop.clone()];
    let c = TestCollector::start_with(move |config| {
        config.www_dir = None;
        config.sources[0].allowed_origins = allowed;
    })
    .await;
    site.set(
        "%WEFT_COLLECTOR%",
        &format!("http://collect.shop.weft.test:{}", c.addr.port()),
    );
    let chromium = Chromium::launch_with(&[WEFT_TEST_HOSTS]).await;
    let page = chromium.new_page().await;

    // Opt-in, before a decision: nothing is sent, nothing is set.
    page.goto(&format!("{shop}/optin.html")).await;
    sdk_ready(&page).await;
    page.eval("weft.track('Before consent')").await;
    flush_and_settle(&page).await;
    assert!(device_cookie(&chromium).await.is_none());
    assert!(c.rows().is_empty());

    // Consent: the cookie appears, on the shared domain, with the device's
    // ID, out of the page's reach.
    page.eval("weft.consent.set({analytics: true})").await;
    let first = anonymous_id(&page).await;
    let cookie = cookie_becomes(&chromium, Some(&first), "the cookie after consent")
        .await
        .expect("a cookie");
    assert_eq!(cookie["domain"], ".shop.weft.test", "{cookie}");
    assert_eq!(cookie["path"], "/v1/batch", "{cookie}");
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Lax", "{cookie}");
    assert_eq!(cookie["secure"], false, "an http page: {cookie}");
    let days = (cookie["expires"].as_f64().unwrap() - unix_now()) / 86_400.0;
    assert!((364.0..=366.0).contains(&days), "a year: {cookie}");
    assert_eq!(
        page.eval("document.cookie.includes('weft_device')").await,
        false
    );

    // What Safari's cap does: the script's storage and cookie are gone.
    page.eval("weft.track('Before the wipe'); weft.flush()")
        .await;
    stored_when(&c, &page, "the event before the wipe", |rows| {
        rows.iter().any(|r| r.is_track("Before the wipe"))
    })
    .await;
    wipe_script_storage(&page, &chromium, &shop).await;
    page.reload().await;
    sdk_ready(&page).await;
    // The stored decision went too: the banner asks again.
    assert_eq!(page.eval("weft.anonymousId()").await, Value::Null);
    page.eval("weft.consent.set({analytics: true})").await;
    let second = anonymous_id(&page).await;
    assert_ne!(second, first, "the SDK had nothing left to remember");
    page.eval("weft.track('After the wipe'); weft.flush()")
        .await;
    let rows = stored_when(&c, &page, "the event after the wipe", |rows| {
        rows.iter().any(|r| r.is_track("After the wipe"))
    })
    .await;
    let after = rows.iter().find(|r| r.is_track("After the wipe")).unwrap();
    assert_eq!(after.anonymous_id.as_deref(), Some(second.as_str()));
    // One profile, both IDs, and the edge says why.
    let g = graph(&c, &second).await;
    assert_eq!(g, graph(&c, &first).await, "one profile from either ID");
    let mut ids: Vec<&str> = g["anonymous_ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ids.sort();
    let mut want = vec![first.as_str(), second.as_str()];
    want.sort();
    assert_eq!(ids, want, "{g}");
    let edge = g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "same_device")
        .unwrap_or_else(|| panic!("a same-device edge: {g}"));
    assert_eq!(
        (&edge["from"], &edge["to"], &edge["reason"]),
        (&json!(second), &json!(first), &json!("server_cookie"))
    );
    let joined_by = edge["message_id"].as_str().unwrap();
    assert!(
        rows.iter()
            .any(|r| r.message_id == joined_by && r.anonymous_id.as_deref() == Some(&second)),
        "the edge names a message of the new ID"
    );
    let profile = c.profile(&first).await.json();
    assert!(profile["event_count"].as_u64().unwrap() >= 4, "{profile}");
    cookie_becomes(&chromium, Some(&second), "the cookie follows the new ID").await;

    // A reset (logout): the next person on this browser is not joined. The
    // login's batch may still be in flight when the reset notice is
    // answered: it carried the old cookie, changes nothing, so it sets
    // nothing and the retirement stands.
    page.eval("weft.identify('alice'); weft.flush()").await;
    page.eval("weft.reset()").await;
    let third = anonymous_id(&page).await;
    cookie_becomes(
        &chromium,
        Some(&format!("~{second}")),
        "the reset retires the ID",
    )
    .await;
    page.eval("weft.track('Next person'); weft.flush()").await;
    stored_when(&c, &page, "the next person's event", |rows| {
        rows.iter().any(|r| r.is_track("Next person"))
    })
    .await;
    cookie_becomes(
        &chromium,
        Some(&format!("{third}~{second}")),
        "the next person's ID",
    )
    .await;
    let next = graph(&c, &third).await;
    assert_eq!(next["user_ids"], json!([]), "{next}");
    assert_eq!(next["anonymous_ids"], json!([third]), "{next}");
    assert_eq!(graph(&c, "alice").await["user_ids"], json!(["alice"]));

    // A withdrawal ends the cookie.
    page.eval("weft.consent.set({analytics: false})").await;
    cookie_becomes(&chromium, None, "the cookie gone with the withdrawal").await;

    // Consent again, then the person is erased: the cookie goes with the
    // next batch.
    page.eval("weft.consent.set({analytics: true})").await;
    let fourth = anonymous_id(&page).await;
    cookie_becomes(&chromium, Some(&fourth), "the cookie after consent again").await;
    let r = c
        .send(Request::new("DELETE", &format!("/v1/profiles/{fourth}")).bearer(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    page.eval("weft.track('After erasure'); weft.flush()").await;
    cookie_becomes(&chromium, None, "the cookie gone after the erasure").await;
    no_exceptions(&page);

    // A page of an origin the source does not allow: no credentials are
    // granted and no cookie is set.
    let before = c.rows().len();
    let page = chromium.new_page().await;
    page.goto(&format!("{evil}/optin.html")).await;
    sdk_ready(&page).await;
    page.eval("weft.consent.set({analytics: true}); weft.track('Evil'); weft.flush()")
        .await;
    flush_and_settle(&page).await;
    assert!(device_cookie(&chromium).await.is_none());
    assert_eq!(c.rows().len(), before, "nothing from the disallowed origin");
    // The raw answers, as the network layer saw them (a refused CORS
    // answer never reaches the page).
    let tried: Vec<String> = page
        .requests_to("/v1/batch")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert!(!tried.is_empty(), "the page did try");
    let answers: Vec<Value> = page
        .events("Network.responseReceivedExtraInfo")
        .into_iter()
        .filter(|e| tried.iter().any(|id| e["requestId"] == id.as_str()))
        .collect();
    assert!(!answers.is_empty(), "answers to {tried:?}");
    for a in &answers {
        assert_eq!(a["statusCode"], 403, "{a}");
        let headers = a["headers"].as_object().unwrap();
        assert!(
            headers.keys().all(|k| {
                let k = k.to_ascii_lowercase();
                k != "access-control-allow-credentials"
                    && k != "access-control-allow-origin"
                    && k != "set-cookie"
            }),
            "{a}"
        );
    }
    no_exceptions(&page);
}

/// Clears what the page's script wrote: localStorage and the SDK's own
/// cookie (the collector's `HttpOnly` one stays, as in Safari).
async fn wipe_script_storage(page: &Page, chromium: &Chromium, origin: &str) {
    page.call(
        "Storage.clearDataForOrigin",
        json!({"origin": origin, "storageTypes": "local_storage"}),
    )
    .await;
    for c in chromium.cookies().await {
        if c["name"] == "weft_aid" {
            page.call(
                "Network.deleteCookies",
                json!({"name": "weft_aid", "domain": c["domain"], "path": c["path"]}),
            )
            .await;
        }
    }
    let left: Vec<String> = chromium
        .cookies()
        .await
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(left, ["weft_device"], "only the server's cookie is left");
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The same rules over plain HTTP, as a browser's requests would carry
/// them: the response headers, and a batch from a server (no `Origin`).
#[tokio::test]
async fn cookie_headers_follow_the_origin_the_host_and_consent() {
    let c = TestCollector::start_with(|config| {
        config.sources[0].allowed_origins = vec!["https://www.shop.example".into()];
    })
    .await;
    let granted = |anon: &str| {
        json!({"batch": [{"type": "track", "event": "E", "anonymousId": anon,
            "context": {"consent": {"categoryPreferences": {"analytics": true}}}}],
            "writeKey": WRITE_KEY})
        .to_string()
    };
    let post = |body: String, origin: Option<&str>, cookie: Option<&str>| {
        let mut r = Request::post("/v1/batch", body).header("Host", "collect.shop.example");
        if let Some(o) = origin {
            r = r.header("Origin", o);
        }
        if let Some(k) = cookie {
            r = r.header("Cookie", k);
        }
        c.send(r)
    };
    let r = post(granted("h1"), Some("https://www.shop.example"), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("set-cookie"),
        Some(
            "weft_device=h1; Max-Age=31536000; Path=/v1/batch; Domain=shop.example; HttpOnly; \
             SameSite=Lax; Secure"
        )
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://www.shop.example")
    );
    // A server's batch: no cookie.
    let r = post(granted("h2"), None, None).await;
    assert_eq!((r.status, r.header("set-cookie")), (200, None));
    // A disallowed origin: refused, nothing granted.
    let r = post(granted("h3"), Some("https://evil.example"), None).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("set-cookie"), None);
    assert_eq!(r.header("access-control-allow-credentials"), None);
    // No consent in the messages: nothing set.
    let plain = json!({"batch": [{"type": "track", "event": "E", "anonymousId": "h4"}],
        "writeKey": WRITE_KEY})
    .to_string();
    let r = post(plain, Some("https://www.shop.example"), None).await;
    assert_eq!((r.status, r.header("set-cookie")), (200, None));
    // A batch that changes nothing sets nothing: one still in flight when a
    // reset's notice retired the ID carries the old cookie, and renewing it
    // would undo the reset.
    let r = post(
        granted("h1"),
        Some("https://www.shop.example"),
        Some("weft_device=h1"),
    )
    .await;
    assert_eq!((r.status, r.header("set-cookie")), (200, None));
    // Wiped storage: joined, and the cookie moves on.
    let r = post(
        granted("h5"),
        Some("https://www.shop.example"),
        Some("weft_device=h1"),
    )
    .await;
    assert!(
        r.header("set-cookie")
            .unwrap()
            .starts_with("weft_device=h5;")
    );
    let g = c
        .send(Request::get("/v1/profiles/h1/graph").bearer(ADMIN_TOKEN))
        .await
        .json();
    assert_eq!(g["anonymous_ids"], json!(["h1", "h5"]), "{g}");
    // An erased device in the cookie: no edge to it, and the cookie goes.
    let r = c
        .send(Request::new("DELETE", "/v1/profiles/h5").bearer(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, 200);
    let r = post(
        granted("h6"),
        Some("https://www.shop.example"),
        Some("weft_device=h5"),
    )
    .await;
    assert!(
        r.header("set-cookie")
            .unwrap()
            .starts_with("weft_device=; Max-Age=0"),
        "{:?}",
        r.header("set-cookie")
    );
    let g = c
        .send(Request::get("/v1/profiles/h6/graph").bearer(ADMIN_TOKEN))
        .await
        .json();
    assert_eq!(g["anonymous_ids"], json!(["h6"]), "{g}");
}
