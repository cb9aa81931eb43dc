//! The typed parts of a message's `context`.
//!
//! `context` is free-form JSON on the wire (server SDKs put their own keys in
//! it), so [`crate::Message`] keeps it raw. These types are the parts weft
//! writes from the browser and reads on the server. Unknown keys are ignored
//! when reading.

use serde::{Deserialize, Serialize};

use crate::json::{Json, Writer};

/// The context the SDK attaches to every message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Context {
    /// The page the message was made on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<PageContext>,
    /// The library that made the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<LibraryContext>,
    /// `navigator.userAgent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// `navigator.language`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// The IANA time zone of the browser.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// `context.page`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PageContext {
    /// Full URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `location.pathname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `location.search`, with its `?`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<String>,
    /// The previous page's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer: Option<String>,
    /// `document.title`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// `context.library`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LibraryContext {
    /// e.g. `weft.js`.
    pub name: String,
    /// The library's version.
    pub version: String,
}

impl Context {
    /// Encodes the context with the lean writer (no `core::fmt`).
    pub fn to_json(&self) -> Json {
        let mut w = Writer::new();
        w.object_start();
        if let Some(p) = &self.page {
            w.key("page");
            w.object_start();
            w.opt_string("url", p.url.as_deref());
            w.opt_string("path", p.path.as_deref());
            w.opt_string("search", p.search.as_deref());
            w.opt_string("referrer", p.referrer.as_deref());
            w.opt_string("title", p.title.as_deref());
            w.object_end();
        }
        if let Some(l) = &self.library {
            w.key("library");
            w.object_start();
            w.opt_string("name", Some(&l.name));
            w.opt_string("version", Some(&l.version));
            w.object_end();
        }
        w.opt_string("userAgent", self.user_agent.as_deref());
        w.opt_string("locale", self.locale.as_deref());
        w.opt_string("timezone", self.timezone.as_deref());
        w.object_end();
        Json::from_trusted(w.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lean_encoding_matches_serde() {
        let full = Context {
            page: Some(PageContext {
                url: Some("https://shop.example/p?q=1".into()),
                path: Some("/p".into()),
                search: Some("?q=1".into()),
                referrer: Some("".into()),
                title: Some("Shop — \"deals\"".into()),
            }),
            library: Some(LibraryContext {
                name: "weft.js".into(),
                version: "0.1.0".into(),
            }),
            user_agent: Some("Mozilla/5.0".into()),
            locale: Some("en-GB".into()),
            timezone: Some("Europe/London".into()),
        };
        for ctx in [full, Context::default()] {
            assert_eq!(ctx.to_json().as_str(), serde_json::to_string(&ctx).unwrap());
        }
    }
}
