//! Consent in the browser (DESIGN.md §7): the policy, the categories, what
//! counts as a decision and how it is remembered.
//!
//! The tracker asks one question of this module before it stores or sends
//! anything: is this category granted now? Under `opt-in` nothing is granted
//! until the visitor decides; under `opt-out` everything is, except what
//! the browser's own signals deny (Global Privacy Control: marketing; Do Not
//! Track when the site opts into honouring it: everything but necessary).

use alloc::string::String;

use weft_protocol::CategoryPreferences;

/// The site's consent policy (`data-consent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Nothing before a decision (GDPR, PIPL). The default.
    #[default]
    OptIn,
    /// Everything until the visitor objects (CCPA-style).
    OptOut,
}

impl Policy {
    /// `data-consent`'s value: `opt-out` is opt-out, anything else opt-in.
    pub fn parse(text: Option<&str>) -> Self {
        if text == Some("opt-out") {
            Policy::OptOut
        } else {
            Policy::OptIn
        }
    }

    /// The name sent in consent records.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::OptIn => "opt-in",
            Policy::OptOut => "opt-out",
        }
    }
}

/// A consent category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Category {
    /// Always granted: storing the consent choice itself.
    Necessary,
    /// The default for every event.
    #[default]
    Analytics,
    /// Advertising.
    Marketing,
    /// Personalisation.
    Personalization,
}

impl Category {
    /// A category by name; unknown names are `analytics`, the strictest
    /// choice that still lets the event through with ordinary consent.
    pub fn parse(name: &str) -> Self {
        match name {
            "necessary" => Category::Necessary,
            "marketing" => Category::Marketing,
            "personalization" => Category::Personalization,
            _ => Category::Analytics,
        }
    }

    /// The category's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Necessary => "necessary",
            Category::Analytics => "analytics",
            Category::Marketing => "marketing",
            Category::Personalization => "personalization",
        }
    }
}

/// Whether each category is granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prefs {
    /// `analytics`
    pub analytics: bool,
    /// `marketing`
    pub marketing: bool,
    /// `personalization`
    pub personalization: bool,
}

impl Prefs {
    /// Everything granted.
    pub const ALL: Prefs = Prefs {
        analytics: true,
        marketing: true,
        personalization: true,
    };

    /// Whether `category` is granted.
    pub fn allows(self, category: Category) -> bool {
        match category {
            Category::Necessary => true,
            Category::Analytics => self.analytics,
            Category::Marketing => self.marketing,
            Category::Personalization => self.personalization,
        }
    }

    /// The wire form, with `necessary` always granted.
    pub fn to_wire(self) -> CategoryPreferences {
        CategoryPreferences {
            necessary: true,
            analytics: self.analytics,
            marketing: self.marketing,
            personalization: self.personalization,
        }
    }

    /// The stored form: one `0`/`1` per category, then `:` and the policy
    /// version the decision was made under (`"100:2026-01"`).
    pub fn encode(self, version: &str) -> String {
        let mut out = String::with_capacity(4 + version.len());
        for on in [self.analytics, self.marketing, self.personalization] {
            out.push_str(if on { "1" } else { "0" });
        }
        out.push_str(":");
        out.push_str(version);
        out
    }

    /// Reads [`Prefs::encode`] output; `None` when it is malformed or was
    /// made under another policy version (the visitor is asked again).
    pub fn decode(stored: &str, version: &str) -> Option<Prefs> {
        let (flags, stored_version) = weft_protocol::json::cut(stored, b':')?;
        if stored_version != version {
            return None;
        }
        let mut bits = [false; 3];
        let mut n = 0;
        for b in flags.bytes() {
            *bits.get_mut(n)? = match b {
                b'1' => true,
                b'0' => false,
                _ => return None,
            };
            n += 1;
        }
        (n == 3).then_some(Prefs {
            analytics: bits[0],
            marketing: bits[1],
            personalization: bits[2],
        })
    }
}

/// The names `consent.set` understands and the category each feeds: weft's
/// own, then Google Consent Mode v2's. Several names feeding one category
/// (`ad_storage`, `ad_user_data`, `ad_personalization`) grant it only if all
/// of those given grant it. The loader reads the names and combines them
/// into [`DECIDED`]'s three values (its `CONSENT_NAMES` and `CONSENT_OF`,
/// checked against this list): reading a JavaScript object's keys is
/// JavaScript's job, and costs fewer bytes there.
pub const NAMES: [(&str, Category); 8] = [
    ("analytics", Category::Analytics),
    ("marketing", Category::Marketing),
    ("personalization", Category::Personalization),
    ("analytics_storage", Category::Analytics),
    ("ad_storage", Category::Marketing),
    ("ad_user_data", Category::Marketing),
    ("ad_personalization", Category::Marketing),
    ("personalization_storage", Category::Personalization),
];

/// The categories a `consent.set` decides, in the order of its values.
pub const DECIDED: [Category; 3] = [
    Category::Analytics,
    Category::Marketing,
    Category::Personalization,
];

/// Applies `consent.set` values to `current`: for each of [`DECIDED`], the
/// decision (`None`: not given, the category keeps its value).
pub fn apply(current: Prefs, values: [Option<bool>; 3]) -> Prefs {
    let [analytics, marketing, personalization] = values;
    Prefs {
        analytics: analytics.unwrap_or(current.analytics),
        marketing: marketing.unwrap_or(current.marketing),
        personalization: personalization.unwrap_or(current.personalization),
    }
}

/// The browser's privacy signals, read once at start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Signals {
    /// `navigator.globalPrivacyControl === true`
    pub gpc: bool,
    /// `navigator.doNotTrack === "1"` on a site that honours it
    /// (`data-dnt="true"`).
    pub dnt: bool,
}

/// Where consent stands when the page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// The preferences in force.
    pub prefs: Prefs,
    /// `true` under opt-in with no decision yet: calls are held in memory.
    pub undecided: bool,
}

/// The preferences at start: a stored decision wins, then Do Not Track,
/// then the policy's default (with GPC under opt-out).
pub fn at_start(policy: Policy, stored: Option<Prefs>, signals: Signals) -> Start {
    let decided = |prefs| Start {
        prefs,
        undecided: false,
    };
    match (stored, policy) {
        (Some(prefs), _) => decided(prefs),
        _ if signals.dnt => decided(Prefs::default()),
        (None, Policy::OptOut) => decided(Prefs {
            marketing: !signals.gpc,
            ..Prefs::ALL
        }),
        (None, Policy::OptIn) => Start {
            prefs: Prefs::default(),
            undecided: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_decisions_round_trip_and_expire_with_the_policy_version() {
        let p = Prefs {
            analytics: true,
            marketing: false,
            personalization: true,
        };
        assert_eq!(p.encode("v2"), "101:v2");
        assert_eq!(Prefs::decode("101:v2", "v2"), Some(p));
        assert_eq!(Prefs::decode("101:", ""), Some(p));
        assert_eq!(Prefs::decode("101:v1", "v2"), None, "new policy version");
        for bad in ["", "10:v", "1011:v", "1x1:v", "101", ":v"] {
            assert_eq!(Prefs::decode(bad, "v"), None, "{bad:?}");
        }
    }

    #[test]
    fn categories_not_decided_keep_their_value() {
        let p = apply(Prefs::default(), [Some(true), Some(false), None]);
        assert_eq!(
            p,
            Prefs {
                analytics: true,
                marketing: false,
                personalization: false
            }
        );
        assert_eq!(
            apply(Prefs::ALL, [None, None, Some(false)]),
            Prefs {
                personalization: false,
                ..Prefs::ALL
            }
        );
        assert_eq!(apply(Prefs::ALL, [None; 3]), Prefs::ALL);
    }

    #[test]
    fn start_follows_decision_then_dnt_then_policy() {
        let none = Signals::default();
        let gpc = Signals {
            gpc: true,
            dnt: false,
        };
        let dnt = Signals {
            gpc: false,
            dnt: true,
        };
        let opt_in = at_start(Policy::OptIn, None, none);
        assert!(opt_in.undecided);
        assert_eq!(opt_in.prefs, Prefs::default());
        let opt_out = at_start(Policy::OptOut, None, gpc);
        assert!(!opt_out.undecided);
        assert!(opt_out.prefs.analytics && !opt_out.prefs.marketing);
        assert_eq!(at_start(Policy::OptOut, None, none).prefs, Prefs::ALL);
        assert_eq!(at_start(Policy::OptOut, None, dnt).prefs, Prefs::default());
        assert!(!at_start(Policy::OptIn, None, dnt).undecided);
        // An explicit decision beats the signals.
        assert_eq!(
            at_start(Policy::OptOut, Some(Prefs::ALL), gpc).prefs,
            Prefs::ALL
        );
        assert!(Prefs::default().allows(Category::Necessary));
        assert_eq!(Category::parse("bogus"), Category::Analytics);
        assert_eq!(Policy::parse(Some("opt-out")), Policy::OptOut);
        assert_eq!(Policy::parse(Some("nonsense")), Policy::OptIn);
    }
}
