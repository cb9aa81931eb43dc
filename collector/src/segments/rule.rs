//! A segment's rule (DESIGN.md §10): parsed and checked once, with the path
//! of whatever is wrong, then evaluated against a profile's facts.
//!
//! Evaluation is pure: a [`Facts`] implementation answers what the rule
//! asks (a trait, the current consent, how many matching events in a
//! window, membership of another segment), so the same code runs for
//! real-time updates, recomputes and the table tests.

use serde_json::{Map, Value};

/// The consent categories a `{"consent": ...}` condition may name.
pub const CATEGORIES: [&str; 4] = ["necessary", "analytics", "marketing", "personalization"];
/// Most conditions in one rule, and deepest nesting: a rule is evaluated on
/// every relevant event.
const MAX_NODES: usize = 256;
const MAX_DEPTH: usize = 16;

/// A checked rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// Every one holds.
    All(Vec<Rule>),
    /// At least one holds.
    Any(Vec<Rule>),
    /// It does not hold.
    Not(Box<Rule>),
    /// A trait of the profile compared.
    Trait(Compare),
    /// Events of the profile counted.
    Event(EventCondition),
    /// The profile's current consent grants the category.
    Consent(String),
    /// Member of another segment.
    Segment(String),
}

/// `{"trait" | "property": name, "op", "value"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Compare {
    /// The trait or property name.
    pub name: String,
    /// How to compare.
    pub op: Op,
    /// What to compare with (absent for `exists` and `missing`).
    pub value: Value,
}

/// `{"event", "where", "count", "within"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventCondition {
    /// The track event's name.
    pub name: String,
    /// Property filters, all of which must hold.
    pub filters: Vec<Compare>,
    /// How many matching events it takes.
    pub count: (CountOp, u64),
    /// Only events this recent (milliseconds), or all time.
    pub within_ms: Option<i64>,
    /// Its family among the conditions of every segment
    /// ([`super::state::Families`]), set when the segments change.
    pub family: usize,
}

/// A comparison operator of trait and property conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Op {
    Eq,
    Neq,
    In,
    Nin,
    Exists,
    Missing,
    Gt,
    Gte,
    Lt,
    Lte,
    Contains,
    StartsWith,
}

/// A count comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum CountOp {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
}

/// Why a rule is refused, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// What is wrong.
    pub reason: String,
    /// Where, as `rule.all[2].op`.
    pub path: String,
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (at {})", self.reason, self.path)
    }
}

impl std::error::Error for RuleError {}

fn err(path: &str, reason: impl Into<String>) -> RuleError {
    RuleError {
        reason: reason.into(),
        path: path.to_owned(),
    }
}

impl Rule {
    /// Parses and checks `value` (the `rule` of a PUT); errors name their
    /// path from `rule`.
    pub fn parse(value: &Value) -> Result<Rule, RuleError> {
        let mut nodes = 0;
        parse(value, "rule", 0, &mut nodes)
    }

    /// The segments this rule refers to.
    pub fn segments(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.walk(&mut |r| {
            if let Rule::Segment(k) = r {
                out.push(k.as_str());
            }
        });
        out
    }

    /// The event names its event conditions count.
    pub fn event_names(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.walk(&mut |r| {
            if let Rule::Event(e) = r {
                out.push(e.name.as_str());
            }
        });
        out
    }

    /// Whether it reads traits.
    pub fn uses_traits(&self) -> bool {
        let mut uses = false;
        self.walk(&mut |r| uses |= matches!(r, Rule::Trait(_)));
        uses
    }

    /// Whether it reads consent.
    pub fn uses_consent(&self) -> bool {
        let mut uses = false;
        self.walk(&mut |r| uses |= matches!(r, Rule::Consent(_)));
        uses
    }

    /// The longest `within` window of its event conditions.
    pub fn windows(&self) -> Vec<i64> {
        let mut out = Vec::new();
        self.walk(&mut |r| {
            if let Rule::Event(EventCondition {
                within_ms: Some(w), ..
            }) = r
            {
                out.push(*w);
            }
        });
        out
    }

    /// Whether a profile that matches can only go on matching as it sends
    /// more events named `name` (at the same time), while the segments it
    /// refers to stay as they are: its conditions on `name` all count "at
    /// least" (`gte`, `gt`) and none is under a `not`. Conditions on other
    /// events, traits and consent do not change with such an event (their
    /// changes are evaluated anyway); windows may appear (time passing is a
    /// tick's work). "Viewed but did not buy" grows with views.
    pub fn grows_with(&self, name: &str) -> bool {
        fn ok(r: &Rule, positive: bool, name: &str) -> bool {
            match r {
                Rule::All(rs) | Rule::Any(rs) => rs.iter().all(|r| ok(r, positive, name)),
                Rule::Not(r) => ok(r, !positive, name),
                Rule::Event(e) => {
                    e.name != name || (positive && matches!(e.count.0, CountOp::Gte | CountOp::Gt))
                }
                Rule::Segment(_) | Rule::Trait(_) | Rule::Consent(_) => true,
            }
        }
        ok(self, true, name)
    }

    /// Calls `f` with every event condition, mutably.
    pub fn event_conditions_mut(&mut self, f: &mut impl FnMut(&mut EventCondition)) {
        match self {
            Rule::All(rs) | Rule::Any(rs) => rs.iter_mut().for_each(|r| r.event_conditions_mut(f)),
            Rule::Not(r) => r.event_conditions_mut(f),
            Rule::Event(e) => f(e),
            _ => {}
        }
    }

    fn walk<'a>(&'a self, f: &mut impl FnMut(&'a Rule)) {
        f(self);
        match self {
            Rule::All(rs) | Rule::Any(rs) => rs.iter().for_each(|r| r.walk(f)),
            Rule::Not(r) => r.walk(f),
            _ => {}
        }
    }

    /// Whether a profile with these facts satisfies the rule.
    pub fn matches<F: Facts + ?Sized>(&self, facts: &mut F) -> bool {
        match self {
            Rule::All(rs) => rs.iter().all(|r| r.matches(facts)),
            Rule::Any(rs) => rs.iter().any(|r| r.matches(facts)),
            Rule::Not(r) => !r.matches(facts),
            Rule::Trait(c) => {
                let value = facts.trait_value(&c.name);
                c.holds(value.as_ref())
            }
            Rule::Event(e) => {
                let n = facts.count_events(e);
                e.count.0.holds(n, e.count.1)
            }
            Rule::Consent(category) => facts.consent_grants(category),
            Rule::Segment(key) => facts.member_of(key),
        }
    }
}

/// What a rule asks of a profile.
pub trait Facts {
    /// The profile's current value of a trait (merged over its identify
    /// calls), if any.
    fn trait_value(&mut self, name: &str) -> Option<Value>;
    /// Whether the profile's current consent grants `category`.
    fn consent_grants(&mut self, category: &str) -> bool;
    /// How many of the profile's events match the condition (its name,
    /// filters and window).
    fn count_events(&mut self, condition: &EventCondition) -> u64;
    /// Whether the profile is a member of segment `key`.
    fn member_of(&mut self, key: &str) -> bool;
}

impl CountOp {
    fn holds(self, n: u64, value: u64) -> bool {
        match self {
            CountOp::Eq => n == value,
            CountOp::Neq => n != value,
            CountOp::Gt => n > value,
            CountOp::Gte => n >= value,
            CountOp::Lt => n < value,
            CountOp::Lte => n <= value,
        }
    }
}

/// A number, or a string that is one ("42", " 3.5 ").
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

/// Equality as a user means it: numbers by value (numeric strings count as
/// numbers), everything else as JSON.
fn equal(a: &Value, b: &Value) -> bool {
    match (number(a), number(b)) {
        (Some(x), Some(y)) if a.is_number() || b.is_number() => x == y,
        _ => a == b,
    }
}

impl Compare {
    /// Whether `actual` (the trait or property; `None` when absent)
    /// satisfies the comparison. A type that does not fit the operator
    /// (a string for `gt`, a number for `contains`) never matches.
    pub fn holds(&self, actual: Option<&Value>) -> bool {
        let actual = actual.filter(|v| !v.is_null());
        let v = &self.value;
        match self.op {
            Op::Exists => actual.is_some(),
            Op::Missing => actual.is_none(),
            Op::Eq => actual.is_some_and(|a| equal(a, v)),
            Op::Neq => !actual.is_some_and(|a| equal(a, v)),
            Op::In => actual.is_some_and(|a| list(v).iter().any(|x| equal(a, x))),
            Op::Nin => !actual.is_some_and(|a| list(v).iter().any(|x| equal(a, x))),
            Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
                let (Some(a), Some(b)) = (actual.and_then(number), number(v)) else {
                    return false;
                };
                match self.op {
                    Op::Gt => a > b,
                    Op::Gte => a >= b,
                    Op::Lt => a < b,
                    _ => a <= b,
                }
            }
            Op::Contains | Op::StartsWith => {
                let (Some(Value::String(a)), Value::String(b)) = (actual, v) else {
                    return false;
                };
                if self.op == Op::Contains {
                    a.contains(b.as_str())
                } else {
                    a.starts_with(b.as_str())
                }
            }
        }
    }
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn parse(value: &Value, path: &str, depth: usize, nodes: &mut usize) -> Result<Rule, RuleError> {
    *nodes += 1;
    if *nodes > MAX_NODES {
        return Err(err(
            path,
            format!("a rule has at most {MAX_NODES} conditions"),
        ));
    }
    if depth > MAX_DEPTH {
        return Err(err(path, format!("rules nest at most {MAX_DEPTH} deep")));
    }
    let Value::Object(obj) = value else {
        return Err(err(path, "a condition is a JSON object"));
    };
    let kinds: Vec<&str> = ["all", "any", "not", "trait", "event", "consent", "segment"]
        .into_iter()
        .filter(|k| obj.contains_key(*k))
        .collect();
    let kind = match kinds.as_slice() {
        [k] => *k,
        [] => {
            return Err(err(
                path,
                "a condition needs one of all, any, not, trait, event, consent, segment",
            ));
        }
        many => {
            return Err(err(
                path,
                format!(
                    "a condition has exactly one kind, not {}",
                    many.join(" and ")
                ),
            ));
        }
    };
    let at = |key: &str| format!("{path}.{key}");
    match kind {
        "all" | "any" => {
            only(obj, path, &[kind])?;
            let Some(items) = obj[kind].as_array() else {
                return Err(err(&at(kind), "a list of conditions"));
            };
            if items.is_empty() {
                return Err(err(&at(kind), "at least one condition"));
            }
            let rules = items
                .iter()
                .enumerate()
                .map(|(i, r)| parse(r, &format!("{path}.{kind}[{i}]"), depth + 1, nodes))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if kind == "all" {
                Rule::All(rules)
            } else {
                Rule::Any(rules)
            })
        }
        "not" => {
            only(obj, path, &["not"])?;
            Ok(Rule::Not(Box::new(parse(
                &obj["not"],
                &at("not"),
                depth + 1,
                nodes,
            )?)))
        }
        "trait" => {
            only(obj, path, &["trait", "op", "value"])?;
            Ok(Rule::Trait(compare(obj, path, "trait")?))
        }
        "consent" => {
            only(obj, path, &["consent"])?;
            match obj["consent"].as_str() {
                Some(c) if CATEGORIES.contains(&c) => Ok(Rule::Consent(c.to_owned())),
                _ => Err(err(
                    &at("consent"),
                    format!("one of {}", CATEGORIES.join(", ")),
                )),
            }
        }
        "segment" => {
            only(obj, path, &["segment"])?;
            match obj["segment"].as_str() {
                Some(k) if valid_key(k) => Ok(Rule::Segment(k.to_owned())),
                _ => Err(err(&at("segment"), "a segment key ([a-z0-9_-]{1,64})")),
            }
        }
        _ => {
            only(obj, path, &["event", "where", "count", "within"])?;
            let name = match obj["event"].as_str() {
                Some(n) if !n.is_empty() => n.to_owned(),
                _ => return Err(err(&at("event"), "an event name")),
            };
            let filters = match obj.get("where") {
                None => Vec::new(),
                Some(Value::Array(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        let fpath = format!("{path}.where[{i}]");
                        let Value::Object(fo) = f else {
                            return Err(err(&fpath, "a property filter is a JSON object"));
                        };
                        only(fo, &fpath, &["property", "op", "value"])?;
                        compare(fo, &fpath, "property")
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err(err(&at("where"), "a list of property filters")),
            };
            let count = match obj.get("count") {
                None => (CountOp::Gte, 1),
                Some(c) => count(c, &at("count"))?,
            };
            let within_ms = match obj.get("within") {
                None => None,
                Some(w) => Some(window(w).ok_or_else(|| {
                    err(
                        &at("within"),
                        "a window like 30d, 12h, 15m or 90s (a positive whole number and s, m, h or d)",
                    )
                })?),
            };
            Ok(Rule::Event(EventCondition {
                name,
                filters,
                count,
                within_ms,
                family: usize::MAX,
            }))
        }
    }
}

/// Refuses keys other than `allowed`.
fn only(obj: &Map<String, Value>, path: &str, allowed: &[&str]) -> Result<(), RuleError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(err(
            &format!("{path}.{k}"),
            format!("unknown key (here: {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn compare(obj: &Map<String, Value>, path: &str, name_key: &str) -> Result<Compare, RuleError> {
    let name = match obj[name_key].as_str() {
        Some(n) if !n.is_empty() => n.to_owned(),
        _ => return Err(err(&format!("{path}.{name_key}"), "a non-empty name")),
    };
    let op_path = format!("{path}.op");
    let op = match obj.get("op").and_then(Value::as_str) {
        Some("eq") => Op::Eq,
        Some("neq") => Op::Neq,
        Some("in") => Op::In,
        Some("nin") => Op::Nin,
        Some("exists") => Op::Exists,
        Some("missing") => Op::Missing,
        Some("gt") => Op::Gt,
        Some("gte") => Op::Gte,
        Some("lt") => Op::Lt,
        Some("lte") => Op::Lte,
        Some("contains") => Op::Contains,
        Some("starts_with") => Op::StartsWith,
        _ => {
            return Err(err(
                &op_path,
                "one of eq, neq, in, nin, exists, missing, gt, gte, lt, lte, contains, starts_with",
            ));
        }
    };
    let value_path = format!("{path}.value");
    let value = obj.get("value").cloned();
    let value = match (op, value) {
        (Op::Exists | Op::Missing, None) => Value::Null,
        (Op::Exists | Op::Missing, Some(_)) => {
            return Err(err(&value_path, "exists and missing take no value"));
        }
        (_, None) => return Err(err(&value_path, "a value to compare with")),
        (Op::In | Op::Nin, Some(v @ Value::Array(_))) => v,
        (Op::In | Op::Nin, Some(_)) => return Err(err(&value_path, "a list of values")),
        (Op::Gt | Op::Gte | Op::Lt | Op::Lte, Some(v)) if number(&v).is_some() => v,
        (Op::Gt | Op::Gte | Op::Lt | Op::Lte, Some(_)) => {
            return Err(err(&value_path, "a number"));
        }
        (Op::Contains | Op::StartsWith, Some(v @ Value::String(_))) => v,
        (Op::Contains | Op::StartsWith, Some(_)) => return Err(err(&value_path, "a string")),
        (_, Some(Value::Array(_) | Value::Object(_))) => {
            return Err(err(&value_path, "a string, number, boolean or null"));
        }
        (_, Some(v)) => v,
    };
    Ok(Compare { name, op, value })
}

fn count(c: &Value, path: &str) -> Result<(CountOp, u64), RuleError> {
    let Value::Object(obj) = c else {
        return Err(err(path, r#"an object like {"op": "gte", "value": 2}"#));
    };
    only(obj, path, &["op", "value"])?;
    let op = match obj.get("op").and_then(Value::as_str) {
        Some("eq") => CountOp::Eq,
        Some("neq") => CountOp::Neq,
        Some("gt") => CountOp::Gt,
        Some("gte") => CountOp::Gte,
        Some("lt") => CountOp::Lt,
        Some("lte") => CountOp::Lte,
        _ => {
            return Err(err(
                &format!("{path}.op"),
                "one of eq, neq, gt, gte, lt, lte",
            ));
        }
    };
    let value = obj
        .get("value")
        .and_then(Value::as_u64)
        .ok_or_else(|| err(&format!("{path}.value"), "a whole number, 0 or more"))?;
    Ok((op, value))
}

/// `30d`, `12h`, `15m`, `90s` in milliseconds.
pub fn window(v: &Value) -> Option<i64> {
    let text = v.as_str()?;
    let unit = match text.chars().last()? {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        _ => return None,
    };
    let digits = &text[..text.len() - 1];
    if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = digits.parse().ok()?;
    (n > 0).then_some(n * unit)
}

/// A segment key: `[a-z0-9_-]{1,64}`.
pub fn valid_key(key: &str) -> bool {
    (1..=64).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Facts from literals: traits, consent, event counts by name, members.
    #[derive(Default)]
    struct Given {
        traits: Map<String, Value>,
        consent: Vec<&'static str>,
        events: Vec<(&'static str, u64)>,
        member_of: Vec<&'static str>,
    }

    impl Facts for Given {
        fn trait_value(&mut self, name: &str) -> Option<Value> {
            self.traits.get(name).cloned()
        }
        fn consent_grants(&mut self, category: &str) -> bool {
            self.consent.contains(&category)
        }
        fn count_events(&mut self, c: &EventCondition) -> u64 {
            self.events
                .iter()
                .filter(|(n, _)| *n == c.name)
                .map(|(_, k)| *k)
                .sum()
        }
        fn member_of(&mut self, key: &str) -> bool {
            self.member_of.contains(&key)
        }
    }

    fn traits(v: Value) -> Given {
        Given {
            traits: v.as_object().unwrap().clone(),
            ..Given::default()
        }
    }

    fn holds(rule: Value, facts: &mut Given) -> bool {
        Rule::parse(&rule).unwrap().matches(facts)
    }

    #[test]
    fn every_trait_operator_as_a_table() {
        let mut p = traits(json!({
            "plan": "pro", "ltv": 1500, "tier": "1", "city": "Berlin", "email": "a@example.com",
            "beta": true, "score": "n/a", "nothing": null
        }));
        let cases: &[(Value, bool)] = &[
            (json!({"trait": "plan", "op": "eq", "value": "pro"}), true),
            (json!({"trait": "plan", "op": "eq", "value": "Pro"}), false),
            (json!({"trait": "tier", "op": "eq", "value": 1}), true),
            (json!({"trait": "ltv", "op": "eq", "value": "1500"}), true),
            (json!({"trait": "beta", "op": "eq", "value": true}), true),
            (json!({"trait": "plan", "op": "neq", "value": "free"}), true),
            (
                json!({"trait": "absent", "op": "neq", "value": "free"}),
                true,
            ),
            (
                json!({"trait": "plan", "op": "in", "value": ["free", "pro"]}),
                true,
            ),
            (json!({"trait": "tier", "op": "in", "value": [1, 2]}), true),
            (
                json!({"trait": "absent", "op": "in", "value": ["x"]}),
                false,
            ),
            (
                json!({"trait": "plan", "op": "nin", "value": ["free"]}),
                true,
            ),
            (
                json!({"trait": "absent", "op": "nin", "value": ["free"]}),
                true,
            ),
            (json!({"trait": "plan", "op": "exists"}), true),
            (json!({"trait": "nothing", "op": "exists"}), false),
            (json!({"trait": "absent", "op": "missing"}), true),
            (json!({"trait": "nothing", "op": "missing"}), true),
            (json!({"trait": "ltv", "op": "gt", "value": 1000}), true),
            (json!({"trait": "ltv", "op": "gte", "value": 1500}), true),
            (json!({"trait": "ltv", "op": "lt", "value": 1500}), false),
            (json!({"trait": "ltv", "op": "lte", "value": "1500"}), true),
            (json!({"trait": "tier", "op": "lt", "value": 2}), true),
            (json!({"trait": "score", "op": "gt", "value": 0}), false),
            (json!({"trait": "absent", "op": "gt", "value": 0}), false),
            (json!({"trait": "plan", "op": "gt", "value": 0}), false),
            (
                json!({"trait": "city", "op": "contains", "value": "erl"}),
                true,
            ),
            (
                json!({"trait": "city", "op": "starts_with", "value": "Ber"}),
                true,
            ),
            (
                json!({"trait": "city", "op": "starts_with", "value": "erl"}),
                false,
            ),
            (
                json!({"trait": "ltv", "op": "contains", "value": "15"}),
                false,
            ),
            (
                json!({"trait": "absent", "op": "contains", "value": "x"}),
                false,
            ),
        ];
        for (rule, want) in cases {
            assert_eq!(holds(rule.clone(), &mut p), *want, "{rule}");
        }
    }

    #[test]
    fn events_consent_segments_and_logic() {
        let mut p = Given {
            consent: vec!["analytics"],
            events: vec![("Product Viewed", 3), ("Order Completed", 0)],
            member_of: vec!["vip"],
            traits: json!({"city_tier": 1, "ltv": 1200})
                .as_object()
                .unwrap()
                .clone(),
        };
        let cases: &[(Value, bool)] = &[
            (json!({"event": "Product Viewed"}), true),
            (
                json!({"event": "Product Viewed", "count": {"op": "gte", "value": 4}}),
                false,
            ),
            (
                json!({"event": "Product Viewed", "count": {"op": "eq", "value": 3}}),
                true,
            ),
            (json!({"event": "Order Completed"}), false),
            (
                json!({"event": "Order Completed", "count": {"op": "eq", "value": 0}}),
                true,
            ),
            (json!({"consent": "analytics"}), true),
            (json!({"consent": "marketing"}), false),
            (json!({"segment": "vip"}), true),
            (json!({"not": {"segment": "vip"}}), false),
            (
                json!({"any": [{"consent": "marketing"}, {"segment": "vip"}]}),
                true,
            ),
            // The design's example.
            (
                json!({"all":[{"event":"Product Viewed","within":"30d"},{"not":{"event":"Order Completed","within":"30d"}},{"trait":"city_tier","op":"eq","value":1},{"trait":"ltv","op":"gte","value":1000}]}),
                true,
            ),
        ];
        for (rule, want) in cases {
            assert_eq!(holds(rule.clone(), &mut p), *want, "{rule}");
        }
    }

    #[test]
    fn invalid_rules_name_the_part_that_is_wrong() {
        let cases: &[(Value, &str)] = &[
            (json!([]), "rule"),
            (json!({}), "rule"),
            (json!({"all": []}), "rule.all"),
            (json!({"all": {}}), "rule.all"),
            (
                json!({"all": [{"trait": "a", "op": "eq", "value": 1}, {"trait": "b", "op": "like", "value": 1}]}),
                "rule.all[1].op",
            ),
            (
                json!({"any": [{"not": {"trait": "a", "op": "in", "value": 1}}]}),
                "rule.any[0].not.value",
            ),
            (
                json!({"trait": "a", "op": "gt", "value": "many"}),
                "rule.value",
            ),
            (
                json!({"trait": "a", "op": "exists", "value": 1}),
                "rule.value",
            ),
            (json!({"trait": "a", "op": "eq"}), "rule.value"),
            (json!({"trait": "", "op": "eq", "value": 1}), "rule.trait"),
            (
                json!({"trait": "a", "op": "eq", "value": 1, "extra": 2}),
                "rule.extra",
            ),
            (json!({"trait": "a", "event": "b"}), "rule"),
            (json!({"event": "E", "within": "30x"}), "rule.within"),
            (json!({"event": "E", "within": "0d"}), "rule.within"),
            (json!({"event": "E", "within": 30}), "rule.within"),
            (
                json!({"event": "E", "count": {"op": "gte", "value": -1}}),
                "rule.count.value",
            ),
            (
                json!({"event": "E", "count": {"op": "most", "value": 1}}),
                "rule.count.op",
            ),
            (
                json!({"event": "E", "where": [{"property": "p", "op": "contains", "value": 1}]}),
                "rule.where[0].value",
            ),
            (json!({"event": "E", "where": {}}), "rule.where"),
            (json!({"event": ""}), "rule.event"),
            (json!({"consent": "ads"}), "rule.consent"),
            (json!({"segment": "Not A Key"}), "rule.segment"),
        ];
        for (rule, path) in cases {
            let e = Rule::parse(rule).unwrap_err();
            assert_eq!(e.path, *path, "{rule}: {e}");
        }
        let deep = (0..20).fold(json!({"consent": "analytics"}), |r, _| json!({"not": r}));
        assert!(Rule::parse(&deep).is_err());
    }

    #[test]
    fn windows_keys_and_what_a_rule_depends_on() {
        assert_eq!(window(&json!("30d")), Some(30 * 86_400_000));
        assert_eq!(window(&json!("90s")), Some(90_000));
        assert_eq!(window(&json!("d")), None);
        assert_eq!(window(&json!("-1d")), None);
        assert!(valid_key("high-value_2") && !valid_key("") && !valid_key("A"));
        assert!(!valid_key(&"a".repeat(65)));
        let r = Rule::parse(&json!({"all": [
            {"event": "A", "within": "1h"}, {"segment": "s"}, {"not": {"consent": "marketing"}}
        ]}))
        .unwrap();
        assert_eq!(r.event_names(), ["A"]);
        assert_eq!(r.segments(), ["s"]);
        assert_eq!(r.windows(), [3_600_000]);
        assert!(r.uses_consent() && !r.uses_traits());
        let grows = |v: serde_json::Value| Rule::parse(&v).unwrap().grows_with("A");
        assert!(grows(
            json!({"all": [{"event": "A"}, {"trait": "t", "op": "exists"}]})
        ));
        assert!(grows(
            json!({"any": [{"event": "A", "count": {"op": "gt", "value": 2}}]})
        ));
        assert!(!grows(json!({"not": {"event": "A"}})));
        assert!(!grows(
            json!({"event": "A", "count": {"op": "lt", "value": 2}})
        ));
        // Viewed but did not buy: grows with views, not with purchases.
        let viewed_not_bought = json!({"all": [{"event": "A", "within": "7d"}, {"not": {"event": "B", "within": "7d"}}]});
        assert!(grows(viewed_not_bought.clone()));
        assert!(!Rule::parse(&viewed_not_bought).unwrap().grows_with("B"));
        // Another segment is the caller's to watch.
        assert!(grows(json!({"all": [{"event": "A"}, {"segment": "s"}]})));
    }
}
