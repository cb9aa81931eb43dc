//! The demo shop in a real browser, as a visitor uses it: the script tag
//! on every page, the consent banner (opt-in: nothing before a decision),
//! a product page, add to cart, the single-page checkout (client-side
//! routes), an order, log in (`identify`) and log out (`reset`). The
//! collector ends up with one profile holding the visitor's anonymous
//! history and their login, every step in order; after log out the
//! browser is someone new. The shop uses only weft's public API.

use std::time::Duration;

use serde_json::{Value, json};
use weft_e2e::chromium::{Chromium, Page};
use weft_e2e::eventually;
use weft_e2e::harness::TestCollector;
use weft_e2e::site::sdk_ready;

/// Clicks `selector` (a link) and waits for the next page's load event
/// and SDK.
async fn click_to_page(page: &Page, selector: &str) {
    let before = page.events("Page.loadEventFired").len();
    page.click(selector).await;
    eventually(Duration::from_secs(20), "the next page", || async {
        (page.events("Page.loadEventFired").len() > before).then_some(())
    })
    .await;
    sdk_ready(page).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shop_flow_makes_one_profile_from_first_visit_to_order_and_logout() {
    let collector = TestCollector::start().await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.goto(&collector.url("/")).await;
    sdk_ready(&page).await;
    assert_eq!(
        page.eval("weft.anonymousId()").await,
        Value::Null,
        "no identity before a consent decision"
    );
    assert_eq!(
        page.eval("document.getElementById('consent').hidden").await,
        false,
        "the banner asks"
    );

    // Consent: accept all.
    page.click("#consent-accept").await;
    let aid = eventually(
        Duration::from_secs(5),
        "an identity after accepting",
        || async {
            page.eval("weft.anonymousId()")
                .await
                .as_str()
                .map(str::to_owned)
        },
    )
    .await;
    assert_eq!(aid.len(), 36, "anonymousId is a UUID: {aid}");
    // Mirrored in a first-party cookie by the idle-time saver (with the
    // queue, not on the way to ready).
    eventually(
        Duration::from_secs(3),
        "anonymousId mirrored in a first-party cookie",
        || async {
            let cookies = page.call("Network.getCookies", json!({})).await;
            cookies["cookies"]
                .as_array()?
                .iter()
                .any(|c| c["name"] == "weft_aid" && c["value"] == aid.as_str())
                .then_some(())
        },
    )
    .await;

    // Browse: a product page, add to cart.
    click_to_page(&page, "#product-trail-shoes").await;
    page.click("#add").await;
    page.wait_for(
        Duration::from_secs(5),
        "!document.getElementById('added').hidden",
    )
    .await;

    // The single-page checkout: two client-side routes, then the order.
    click_to_page(&page, "#added a").await;
    page.click("#to-shipping").await;
    page.wait_for(
        Duration::from_secs(5),
        "!!document.getElementById('place-order')",
    )
    .await;
    // The order, and in the same task the visitor leaves for the account
    // page: the route change to `?step=done` that placing the order makes
    // is still recorded (before the page goes), not lost to the navigation.
    let before = page.events("Page.loadEventFired").len();
    page.eval(
        "document.getElementById('place-order').click(); \
         location.href = '/account.html'; true",
    )
    .await;
    eventually(Duration::from_secs(20), "the account page", || async {
        (page.events("Page.loadEventFired").len() > before).then_some(())
    })
    .await;
    sdk_ready(&page).await;

    // Log in on the account page, then log out.
    page.click("#user").await;
    page.insert_text("ana").await;
    page.click("#email").await;
    page.insert_text("ana@example.com").await;
    page.click("#login button").await;
    page.wait_for(
        Duration::from_secs(5),
        "!document.getElementById('logged-in').hidden",
    )
    .await;
    eventually(Duration::from_secs(5), "the user", || async {
        (page.eval("weft.userId()").await == "ana").then_some(())
    })
    .await;
    page.eval("weft.flush()").await;
    page.click("#logout").await;
    let after = eventually(
        Duration::from_secs(5),
        "a new identity after log out",
        || async {
            page.eval("weft.anonymousId()")
                .await
                .as_str()
                .filter(|a| *a != aid)
                .map(str::to_owned)
        },
    )
    .await;
    assert_eq!(page.eval("weft.userId()").await, Value::Null);
    page.eval("weft.flush()").await;

    // The profile: the anonymous history and the login, one person.
    let profile = eventually(Duration::from_secs(20), "the whole flow stored", || async {
        let r = collector.profile("ana").await;
        if r.status != 200 {
            return None;
        }
        let p = r.json();
        let events = collector
            .send(
                weft_e2e::http::Request::get("/v1/profiles/ana/events?limit=200")
                    .bearer(weft_e2e::harness::ADMIN_TOKEN),
            )
            .await
            .json();
        let names: Vec<String> = events["events"]
            .as_array()?
            .iter()
            .map(|e| {
                e["event"]
                    .as_str()
                    .unwrap_or(e["type"].as_str().unwrap_or(""))
                    .to_owned()
            })
            .collect();
        names
            .iter()
            .any(|n| n == "Order Completed")
            .then_some((p, events))
    })
    .await;
    let (p, events) = profile;
    assert_eq!(p["user_ids"], json!(["ana"]));
    assert_eq!(
        p["anonymous_ids"],
        json!([aid]),
        "the browser's history joined the login"
    );
    assert_eq!(p["traits"]["email"], "ana@example.com");
    assert_eq!(p["consent"]["marketing"], true);
    let mut stored: Vec<Value> = events["events"].as_array().unwrap().clone();
    stored.reverse(); // oldest first
    let step = |e: &Value| -> String {
        match e["type"].as_str().unwrap_or("") {
            "page" => format!(
                "page {}{}",
                e["context"]["page"]["path"].as_str().unwrap_or(""),
                e["context"]["page"]["search"].as_str().unwrap_or("")
            ),
            "track" if e["event"] == "Element Clicked" => String::new(),
            "track" => e["event"].as_str().unwrap_or("").to_owned(),
            other => other.to_owned(),
        }
    };
    let flow: Vec<String> = stored.iter().map(step).filter(|s| !s.is_empty()).collect();

    // Every step in the order the visitor did it, each page's automatic
    // page view before the calls its page made (the product page's first
    // call is made in `weft.ready`, as soon as the SDK is).
    assert_eq!(
        flow,
        [
            "page /",
            "Consent Updated",
            "page /product.html?sku=trail-shoes",
            "Product Viewed",
            "Product Added",
            "page /app.html",
            "page /app.html?step=shipping",
            "Order Completed",
            "page /app.html?step=done",
            "page /account.html",
            "identify",
        ],
        "the visit in order: {flow:?}"
    );
    let order = stored
        .iter()
        .find(|e| e["event"] == "Order Completed")
        .unwrap();
    assert_eq!(order["properties"]["total"], 119);
    assert_eq!(
        order["properties"]["products"][0]["product_id"],
        "trail-shoes"
    );
    assert!(
        !serde_json::to_string(&stored).unwrap().contains("Oslo"),
        "no typed input value is captured"
    );
    let clicks: Vec<&Value> = stored
        .iter()
        .filter(|e| e["event"] == "Element Clicked")
        .collect();
    assert!(
        clicks
            .iter()
            .any(|c| c["properties"]["text"] == "Add to cart"),
        "clicks are captured: {clicks:?}"
    );
    // After log out the browser is someone else, joined to nobody.
    let other = collector.profile(&after).await;
    if other.status == 200 {
        assert_eq!(other.json()["user_ids"], json!([]), "{}", other.json());
    }
    assert_eq!(
        page.exceptions(),
        Vec::<String>::new(),
        "no uncaught errors"
    );
    // The shop reads none of weft's storage keys.
    for file in [
        "shop.js",
        "index.html",
        "product.html",
        "app.html",
        "account.html",
    ] {
        let text = std::fs::read_to_string(weft_e2e::harness::www_dir().join(file)).unwrap();
        assert!(
            !text.contains("weft.aid") && !text.contains("weft.consent\""),
            "{file} reads weft's storage"
        );
    }
}
