//! The route a single-page app is on, from the page's URL.
//!
//! Plain string work, tested natively, kept free of `char` patterns and
//! slicing so no panic path reaches the wasm.

// Predicates instead of `char` patterns: a `char` pattern links in a
// panicking slice path and its message formatting (about 900 bytes gzip).
#![allow(
    clippy::manual_pattern_char_comparison,
    reason = "char patterns cost panic paths in the wasm"
)]

/// What identifies a single-page app's route in `href`: the URL without its
/// fragment, unless the fragment is a route itself (`#/...`, `#!...`, as
/// hash routers write it). Two URLs with the same key are the same page.
pub fn route_key(href: &str) -> &str {
    match href.split_once(|c| c == '#') {
        Some((_, fragment)) if fragment.starts_with("/") || fragment.starts_with("!") => href,
        Some((before, _)) => before,
        None => href,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_ignore_plain_fragments_but_not_hash_routes() {
        assert_eq!(
            route_key("https://a.example/p?q=1"),
            "https://a.example/p?q=1"
        );
        assert_eq!(
            route_key("https://a.example/p#section"),
            "https://a.example/p"
        );
        assert_eq!(
            route_key("https://a.example/#/cart"),
            "https://a.example/#/cart"
        );
        assert_eq!(
            route_key("https://a.example/#!/cart"),
            "https://a.example/#!/cart"
        );
        assert_eq!(route_key("https://a.example/p#"), "https://a.example/p");
    }
}
