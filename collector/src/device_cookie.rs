//! The server-set first-party identity: a cookie the collector sets on the
//! site's own domain carrying the browser's anonymous ID, so a visitor
//! whose script storage was wiped (Safari deletes what scripts wrote after
//! 7 days without a visit) is recognised as the same device.
//!
//! The rules (DESIGN.md §6, §7; README "Privacy"):
//! - Set only on a browser's batch (an allowed `Origin`) whose messages
//!   grant `analytics`, and only where the cookie is first-party: the page
//!   and the collector share a host or a parent domain ([`Scope`]).
//!   `HttpOnly`, `SameSite=Lax`, `Secure` on https pages, one year, its
//!   path the ingest path. Sent only when its value changes: a batch in
//!   flight when a reset retired the ID carries the old value, and a
//!   renewal would bring it back.
//! - Cleared by a message denying `analytics` (the SDK's withdrawal record),
//!   by a batch naming an erased identifier, and by the SDK's reset notice
//!   (a logout: the next person on a shared device starts afresh).
//! - A message whose anonymous ID differs from the cookie's is the same
//!   browser with wiped storage: [`crate::admission`] records the cookie's
//!   ID beside it and the indexer joins the two IDs into one device
//!   ([`crate::identity::SameDevice`]). An ID a reset retired is never
//!   joined again, and its late messages do not move the cookie back.
//!
//! The cookie's value is the device's current anonymous ID, and after a
//! reset `~` and the retired one: `abc`, `def~abc` or `~abc`.

use hyper::HeaderMap;
use hyper::header::{COOKIE, HeaderValue};

/// The cookie's name.
pub const NAME: &str = "weft_device";

/// How long the cookie lives after the last batch that set it.
const MAX_AGE_SECS: u64 = 365 * 24 * 3600;

/// Longest anonymous ID the cookie carries.
const MAX_ID_BYTES: usize = 128;

/// Where the collector sets its cookie (`--server-cookie`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    /// On the domain the page and the collector share: the host itself
    /// when they are on one host, else their common parent domain (at
    /// least two labels: `shop.example` for `www.shop.example` and
    /// `collect.shop.example`). Pages of another site get none.
    #[default]
    Auto,
    /// Never.
    Off,
    /// On this domain, for pages and a collector under it.
    Domain(String),
}

impl Scope {
    /// Parses `auto`, `off` or a domain name.
    pub fn parse(s: &str) -> Result<Scope, String> {
        match s {
            "auto" => return Ok(Scope::Auto),
            "off" => return Ok(Scope::Off),
            _ => {}
        }
        let d = s.strip_prefix('.').unwrap_or(s).to_ascii_lowercase();
        let labels_ok = d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        if d.len() > 253 || !labels_ok || !d.contains('.') || is_ip(&d) {
            return Err(format!(
                "{s:?}: expected auto, off, or a domain such as shop.example"
            ));
        }
        Ok(Scope::Domain(d))
    }

    /// The cookie's `Domain` for a request to `host` from a page on
    /// `origin` (`https://www.shop.example`): `Some(None)` for a host-only
    /// cookie, `None` when no cookie is set (off, or not first-party).
    pub fn domain_for(&self, host: &str, origin: &str) -> Option<Option<String>> {
        let host = strip_port(host).to_ascii_lowercase();
        let page = strip_port(origin.split_once("://")?.1).to_ascii_lowercase();
        if host.is_empty() || page.is_empty() {
            return None;
        }
        match self {
            Scope::Off => None,
            Scope::Domain(d) => (under(&host, d) && under(&page, d)).then(|| Some(d.clone())),
            Scope::Auto if host == page => Some(None),
            Scope::Auto => {
                if is_ip(&host) || is_ip(&page) {
                    return None;
                }
                let common: Vec<&str> = host
                    .rsplit('.')
                    .zip(page.rsplit('.'))
                    .take_while(|(a, b)| a == b)
                    .map(|(a, _)| a)
                    .collect();
                if common.len() < 2 {
                    return None;
                }
                let domain: Vec<&str> = common.into_iter().rev().collect();
                Some(Some(domain.join(".")))
            }
        }
    }
}

/// Whether `host` is `domain` or under it.
fn under(host: &str, domain: &str) -> bool {
    host == domain
        || host
            .strip_suffix(domain)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// `host` without its `:port` (IPv6 literals keep their brackets).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    })
}

fn is_ip(host: &str) -> bool {
    host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok()
}

/// Whether the cookie can carry `id`: short, and only characters that need
/// no quoting in a cookie (the SDK's IDs are UUIDs).
pub fn is_cookie_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// What the cookie says about the browser.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceCookie {
    /// The device's anonymous ID.
    pub current: Option<String>,
    /// The anonymous ID the SDK's last reset retired: never joined to the
    /// device again.
    pub retired: Option<String>,
}

impl DeviceCookie {
    /// The cookie a request carries (empty if none, or not one of ours).
    pub fn from_headers(headers: &HeaderMap) -> DeviceCookie {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == NAME)
            .map(|(_, value)| DeviceCookie::parse(value))
            .unwrap_or_default()
    }

    /// Reads a value (`abc`, `def~abc`, `~abc`); parts it cannot carry are
    /// dropped.
    pub fn parse(value: &str) -> DeviceCookie {
        let (current, retired) = value.split_once('~').unwrap_or((value, ""));
        let part = |s: &str| is_cookie_id(s).then(|| s.to_owned());
        DeviceCookie {
            current: part(current),
            retired: part(retired),
        }
    }

    /// Whether it says nothing.
    pub fn is_empty(&self) -> bool {
        self.current.is_none() && self.retired.is_none()
    }

    /// The cookie's value.
    pub fn value(&self) -> String {
        match &self.retired {
            Some(r) => format!("{}~{r}", self.current.as_deref().unwrap_or("")),
            None => self.current.clone().unwrap_or_default(),
        }
    }

    /// The `Set-Cookie` header that stores this state (or deletes the
    /// cookie when it is empty).
    pub fn set_cookie(&self, domain: Option<&str>, path: &str, secure: bool) -> HeaderValue {
        let mut h = if self.is_empty() {
            format!("{NAME}=; Max-Age=0")
        } else {
            format!("{NAME}={}; Max-Age={MAX_AGE_SECS}", self.value())
        };
        h.push_str("; Path=");
        h.push_str(path);
        if let Some(d) = domain {
            h.push_str("; Domain=");
            h.push_str(d);
        }
        h.push_str("; HttpOnly; SameSite=Lax");
        if secure {
            h.push_str("; Secure");
        }
        // Every part was checked to be plain ASCII.
        HeaderValue::from_str(&h)
            .unwrap_or_else(|_| HeaderValue::from_static("weft_device=; Max-Age=0"))
    }

    /// A batch of the SDK's reset notice: the device's ID is retired.
    pub fn reset(&mut self) {
        if let Some(c) = self.current.take() {
            self.retired = Some(c);
        }
    }

    /// A message granting analytics from `anonymous_id`: the ID the cookie
    /// named before, when it is another (the same browser, storage
    /// wiped), to be joined to it. A retired ID's late message changes
    /// nothing.
    pub fn observe(&mut self, anonymous_id: &str) -> Option<String> {
        if !is_cookie_id(anonymous_id) || self.retired.as_deref() == Some(anonymous_id) {
            return None;
        }
        let before = self.current.replace(anonymous_id.to_owned());
        before.filter(|b| b != anonymous_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_domain_is_the_one_page_and_collector_share() {
        let auto = Scope::Auto;
        let d = |host: &str, origin: &str| auto.domain_for(host, origin);
        assert_eq!(
            d("collect.shop.example", "https://www.shop.example"),
            Some(Some("shop.example".into()))
        );
        assert_eq!(
            d("collect.shop.example:8080", "http://shop.example:3000"),
            Some(Some("shop.example".into()))
        );
        assert_eq!(d("127.0.0.1:8080", "http://127.0.0.1:3000"), Some(None));
        assert_eq!(d("a.example", "https://a.example"), Some(None));
        // Another site: it would be a third-party cookie.
        assert_eq!(d("collector.example.com", "https://shop.com"), None);
        assert_eq!(d("127.0.0.1:8080", "http://localhost:3000"), None);
        assert_eq!(d("10.0.0.1", "http://10.0.0.2"), None);
        assert_eq!(d("", "https://a.example"), None);
        assert_eq!(d("a.example", "null"), None);

        let fixed = Scope::parse(".Shop.Example").unwrap();
        assert_eq!(fixed, Scope::Domain("shop.example".into()));
        assert_eq!(
            fixed.domain_for("c.shop.example", "https://www.shop.example"),
            Some(Some("shop.example".into()))
        );
        assert_eq!(
            fixed.domain_for("c.shop.example", "https://evilshop.example"),
            None
        );
        assert_eq!(
            Scope::Off.domain_for("a.example", "https://a.example"),
            None
        );
        for bad in ["", "example", "a..b", "1.2.3.4", "exa mple.com", "-"] {
            assert!(Scope::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_value_round_trips_and_refuses_what_it_cannot_carry() {
        for (value, current, retired) in [
            ("abc", Some("abc"), None),
            ("def~abc", Some("def"), Some("abc")),
            ("~abc", None, Some("abc")),
            ("a b", None, None),
            ("", None, None),
        ] {
            let c = DeviceCookie::parse(value);
            assert_eq!(c.current.as_deref(), current, "{value}");
            assert_eq!(c.retired.as_deref(), retired, "{value}");
            if current.is_some() || retired.is_some() {
                assert_eq!(c.value(), value);
            }
        }
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; weft_device=x-1~y"));
        assert_eq!(
            DeviceCookie::from_headers(&headers),
            DeviceCookie {
                current: Some("x-1".into()),
                retired: Some("y".into())
            }
        );
        assert!(!is_cookie_id(&"a".repeat(MAX_ID_BYTES + 1)));
        assert!(!is_cookie_id("a;b") && !is_cookie_id("a~b") && !is_cookie_id("é"));
    }

    #[test]
    fn the_header_says_where_how_long_and_to_whom() {
        let c = DeviceCookie::parse("abc");
        assert_eq!(
            c.set_cookie(Some("shop.example"), "/v1/batch", true),
            "weft_device=abc; Max-Age=31536000; Path=/v1/batch; Domain=shop.example; \
             HttpOnly; SameSite=Lax; Secure"
        );
        assert_eq!(
            DeviceCookie::default().set_cookie(None, "/s", false),
            "weft_device=; Max-Age=0; Path=/s; HttpOnly; SameSite=Lax"
        );
    }

    #[test]
    fn wiped_storage_joins_a_reset_retires_and_late_messages_do_not_undo_it() {
        let mut c = DeviceCookie::default();
        assert_eq!(c.observe("a1"), None, "the first ID");
        assert_eq!(c.observe("a1"), None);
        assert_eq!(c.observe("a2").as_deref(), Some("a1"), "storage wiped");
        assert_eq!(c.value(), "a2");
        c.reset();
        assert_eq!(c.value(), "~a2");
        assert_eq!(c.observe("a2"), None, "a late message of the retired ID");
        assert_eq!(c.value(), "~a2");
        assert_eq!(c.observe("a3"), None, "the next person is not joined");
        assert_eq!(c.observe("a2"), None);
        assert_eq!(c.value(), "a3~a2");
        assert_eq!(c.observe("bad id"), None);
        assert_eq!(c.value(), "a3~a2");
    }
}
