//! The typed parts of a message's `context`.
//!
//! `context` is free-form JSON on the wire (server SDKs put their own keys in
//! it), so [`crate::Message`] keeps it raw. These types are the parts weft
//! writes from the browser and reads on the server. Unknown keys are ignored
//! when reading.

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

use crate::json::{Json, Writer};
use alloc::string::String;

#[cfg(feature = "serde")]
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
    /// The campaign of the page's URL (`utm_*` parameters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<Campaign>,
    /// The screen of the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen: Option<Screen>,
    /// The session: its start, in milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<u64>,
    /// The consent the message was made under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<ConsentContext>,
}

#[cfg(feature = "serde")]
/// `context.campaign`, from the `utm_*` query parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    /// `utm_campaign`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `utm_source`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `utm_medium`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    /// `utm_term`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    /// `utm_content`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[cfg(feature = "serde")]
impl Campaign {
    /// `true` when no parameter is set.
    pub fn is_empty(&self) -> bool {
        *self == Campaign::default()
    }
}

#[cfg(feature = "serde")]
/// `context.screen`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Screen {
    /// CSS pixels.
    pub width: u32,
    /// CSS pixels.
    pub height: u32,
    /// Device pixels per CSS pixel.
    pub density: f64,
}

#[cfg(feature = "serde")]
/// `context.consent`: the category the message needs and the preferences
/// in force when it was made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsentContext {
    /// `necessary`, `analytics`, `marketing` or `personalization`.
    pub category: String,
    /// Each category and whether it is granted.
    pub category_preferences: CategoryPreferences,
}

/// Whether each consent category is granted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct CategoryPreferences {
    /// Always `true`: storing the consent choice itself.
    pub necessary: bool,
    /// Measurement: page views, clicks, events.
    pub analytics: bool,
    /// Advertising.
    pub marketing: bool,
    /// Personalisation.
    pub personalization: bool,
}

impl CategoryPreferences {
    /// Writes the preferences as a JSON object.
    pub fn write_json(&self, w: &mut Writer) {
        let mut text = String::new();
        self.push_json(&mut text);
        w.raw(&Json::from_trusted(text));
    }

    /// Appends the preferences as a JSON object (the same text as
    /// [`CategoryPreferences::write_json`], without a writer: the SDK's
    /// path).
    pub fn push_json(&self, out: &mut String) {
        // The keys in a table of their own: the loop holds only the values.
        const KEYS: [&str; 4] = [
            "{\"necessary\":",
            ",\"analytics\":",
            ",\"marketing\":",
            ",\"personalization\":",
        ];
        let values = [
            self.necessary,
            self.analytics,
            self.marketing,
            self.personalization,
        ];
        for (key, on) in KEYS.iter().zip(values) {
            out.push_str(key);
            out.push_str(if on { "true" } else { "false" });
        }
        out.push_str("}");
    }
}

#[cfg(feature = "serde")]
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

#[cfg(feature = "serde")]
/// `context.library`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LibraryContext {
    /// e.g. `weft.js`.
    pub name: String,
    /// The library's version.
    pub version: String,
}

#[cfg(feature = "serde")]
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
        if let Some(c) = &self.campaign {
            w.key("campaign");
            w.object_start();
            w.opt_string("name", c.name.as_deref());
            w.opt_string("source", c.source.as_deref());
            w.opt_string("medium", c.medium.as_deref());
            w.opt_string("term", c.term.as_deref());
            w.opt_string("content", c.content.as_deref());
            w.object_end();
        }
        if let Some(s) = &self.screen {
            w.key("screen");
            w.object_start();
            w.key("width");
            w.uint(s.width.into());
            w.key("height");
            w.uint(s.height.into());
            w.key("density");
            w.decimal(s.density);
            w.object_end();
        }
        if let Some(id) = self.session_id {
            w.key("sessionId");
            w.uint(id);
        }
        if let Some(c) = &self.consent {
            w.key("consent");
            w.object_start();
            w.key("category");
            w.string(&c.category);
            w.key("categoryPreferences");
            c.category_preferences.write_json(&mut w);
            w.object_end();
        }
        w.object_end();
        Json::from_trusted(w.finish())
    }
}

#[cfg(all(test, feature = "serde"))]
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
            campaign: Some(Campaign {
                name: Some("spring".into()),
                source: Some("news letter".into()),
                ..Campaign::default()
            }),
            screen: Some(Screen {
                width: 1280,
                height: 720,
                density: 1.5,
            }),
            session_id: Some(1_795_000_000_000),
            consent: Some(ConsentContext {
                category: "marketing".into(),
                category_preferences: CategoryPreferences {
                    necessary: true,
                    analytics: true,
                    ..CategoryPreferences::default()
                },
            }),
        };
        for ctx in [full, Context::default()] {
            assert_eq!(ctx.to_json().as_str(), serde_json::to_string(&ctx).unwrap());
        }
        // Whole-number densities are written as integers: the same number.
        let ctx = Context {
            screen: Some(Screen {
                width: 1,
                height: 2,
                density: 2.0,
            }),
            ..Context::default()
        };
        let back: Context = serde_json::from_str(ctx.to_json().as_str()).unwrap();
        assert_eq!(back, ctx);
    }
}
