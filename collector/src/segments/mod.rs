//! Real-time segments (DESIGN.md §10): audiences whose membership changes
//! the moment an event, a login or a consent decision changes who someone
//! is.
//!
//! A segment is a key, a name and a [`rule::Rule`]. This module holds the
//! definitions and the current memberships, in memory, and decides what an
//! update means: which segments a change can affect ([`Segments::relevant`]),
//! in which order to evaluate them (a segment after the segments its rule
//! refers to), and what entered or left. The index (the log's consumer)
//! evaluates profiles against it after each batch and stores the changes;
//! see `store::sqlite`.

pub mod rule;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::hashing::Map;

pub use rule::{Facts, Rule, RuleError};

/// A segment as defined, and how far its membership is.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    /// `[a-z0-9_-]{1,64}`.
    pub key: String,
    /// For people.
    pub name: String,
    /// The rule as given (answered back as is).
    pub rule_json: Value,
    /// The rule, checked.
    pub rule: Rule,
    /// When it was last put (RFC 3339 UTC millis).
    pub updated_at: String,
    /// `false` while every profile is being evaluated against a new rule.
    pub ready: bool,
}

/// A membership change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The segment.
    pub segment: String,
    /// The profile.
    pub profile_id: String,
    /// Entered (`true`) or left.
    pub entered: bool,
    /// When (RFC 3339 UTC millis).
    pub at: String,
}

/// What changed about a profile in a batch, for [`Segments::relevant`].
#[derive(Debug, Default, Clone)]
pub struct Touched<'a> {
    /// Names of its new track events, each once (borrowed from the batch:
    /// this is made for every identifier of every batch).
    pub events: Vec<&'a str>,
    /// It sent an identify (traits may have changed).
    pub traits: bool,
    /// It sent consent preferences.
    pub consent: bool,
    /// It was joined to other identifiers (its events and traits are now
    /// those of more identifiers): every segment may change.
    pub merged: bool,
}

/// Buffers for [`Segments::relevant_into`], kept across the profiles of a
/// batch.
#[derive(Debug, Default)]
pub struct Scratch {
    reads: Vec<bool>,
    /// Places whose rules may stop matching with the touched events.
    shrinks: Vec<bool>,
    chosen: Vec<bool>,
    /// The places to evaluate, in order.
    pub places: Vec<usize>,
}

/// What a segment's rule reads, worked out once.
#[derive(Debug, Default, Clone)]
struct Deps {
    events: Vec<String>,
    traits: bool,
    consent: bool,
    segments: Vec<String>,
    /// `segments` as places in `order` (always before this one's).
    segment_places: Vec<usize>,
    windows: bool,
}

/// Segment key -> its place in the evaluation order.
type Places = Map<String, usize>;

/// The definitions and the current members.
#[derive(Debug, Default)]
pub struct Segments {
    defs: BTreeMap<String, Definition>,
    /// Keys, each after those its rule refers to, with what they read.
    order: Vec<(String, Deps)>,
    /// The event-condition families of every rule (each condition knows
    /// its own).
    families: state::Families,
    /// profile -> its memberships.
    members: Map<String, Membership>,
    /// segment -> how many members.
    sizes: Map<String, usize>,
    /// The segments whose rules have a `within` window.
    windowed: BTreeSet<String>,
    /// key -> its place in `order`.
    index_of: Places,
    /// The rules by place in `order` (no lookup by key per evaluation).
    rules: Vec<Rule>,
    /// Event name -> the places whose rules read events of that name, so a
    /// touched profile's events select segments by one lookup per name, not
    /// by comparing names per segment.
    /// With each place: whether its rule only grows with events of that
    /// name ([`Rule::grows_with`]).
    readers: Map<String, Vec<(usize, bool)>>,
    /// Every distinct (family, window) of the rules with windows: what a
    /// profile's next due time is the earliest of.
    window_pairs: Vec<(usize, i64)>,
}

/// One profile's segments: by key with when it entered, and the same as
/// bits by place in the evaluation order, which every evaluation reads
/// ([`Segments::member_mask`]: looking each key's place up was a tenth of
/// the indexer's time with 50 segments). The bits are set with the keys
/// and rebuilt whenever the order changes.
#[derive(Debug, Default, Clone)]
struct Membership {
    entered: BTreeMap<String, String>,
    places: Vec<u64>,
}

impl Membership {
    fn set(&mut self, place: Option<usize>, on: bool) {
        let Some(place) = place else {
            return;
        };
        let (word, bit) = (place / 64, place % 64);
        if self.places.len() <= word {
            self.places.resize(word + 1, 0);
        }
        if on {
            self.places[word] |= 1 << bit;
        } else {
            self.places[word] &= !(1 << bit);
        }
    }

    fn has(&self, place: usize) -> bool {
        self.places
            .get(place / 64)
            .is_some_and(|w| w & (1 << (place % 64)) != 0)
    }
}

impl Segments {
    /// Adds a definition as loaded at start (order is fixed by
    /// [`Segments::reorder`]).
    pub fn load(&mut self, def: Definition) {
        self.defs.insert(def.key.clone(), def);
        self.reorder();
    }

    /// A membership as loaded at start.
    pub fn load_member(&mut self, segment: &str, profile_id: String, entered_at: String) {
        let place = self.index_of.get(segment).copied();
        let m = self.members.entry(profile_id).or_default();
        m.set(place, true);
        if m.entered.insert(segment.to_owned(), entered_at).is_none() {
            *self.sizes.entry(segment.to_owned()).or_default() += 1;
        }
    }

    /// The event-condition families of every rule.
    pub fn families(&self) -> &state::Families {
        &self.families
    }

    /// Whether `rule` may be stored under `key`: every segment it refers to
    /// exists, and none of them refers back to `key`, however indirectly.
    pub fn check(&self, key: &str, rule: &Rule) -> Result<(), RuleError> {
        for other in rule.segments() {
            if other == key {
                return Err(RuleError {
                    reason: format!("the segment {key:?} cannot refer to itself"),
                    path: "rule".into(),
                });
            }
            if !self.defs.contains_key(other) {
                return Err(RuleError {
                    reason: format!("no segment {other:?}"),
                    path: "rule".into(),
                });
            }
            if self.reaches(other, key) {
                return Err(RuleError {
                    reason: format!(
                        "{other:?} refers back to {key:?}: segments cannot form a cycle"
                    ),
                    path: "rule".into(),
                });
            }
        }
        Ok(())
    }

    /// Whether `from`'s rule refers to `to`, directly or through others.
    fn reaches(&self, from: &str, to: &str) -> bool {
        let mut pending = vec![from.to_owned()];
        let mut seen = BTreeSet::new();
        while let Some(k) = pending.pop() {
            if k == to {
                return true;
            }
            if !seen.insert(k.clone()) {
                continue;
            }
            if let Some(d) = self.defs.get(&k) {
                pending.extend(d.rule.segments().into_iter().map(str::to_owned));
            }
        }
        false
    }

    /// Stores a definition (checked with [`Segments::check`]).
    pub fn put(&mut self, def: Definition) {
        self.defs.insert(def.key.clone(), def);
        self.reorder();
    }

    /// Removes a segment and its members; answers whether it existed.
    pub fn remove(&mut self, key: &str) -> bool {
        self.members.retain(|_, m| {
            m.entered.remove(key);
            !m.entered.is_empty()
        });
        self.sizes.remove(key);
        let existed = self.defs.remove(key).is_some();
        self.reorder();
        existed
    }

    /// Marks a segment's recompute done.
    pub fn set_ready(&mut self, key: &str) {
        if let Some(d) = self.defs.get_mut(key) {
            d.ready = true;
        }
    }

    /// `key` and every segment that refers to it, however indirectly, in
    /// evaluation order.
    pub fn with_dependents(&self, key: &str) -> Vec<String> {
        let mut chosen: BTreeSet<&str> = BTreeSet::new();
        chosen.insert(key);
        let mut out = Vec::new();
        for (k, deps) in &self.order {
            if k == key || deps.segments.iter().any(|s| chosen.contains(s.as_str())) {
                chosen.insert(k);
                out.push(k.clone());
            }
        }
        out
    }

    /// The segments whose rules refer to `key`, directly.
    pub fn dependents(&self, key: &str) -> Vec<String> {
        self.order
            .iter()
            .filter(|(_, deps)| deps.segments.iter().any(|s| s == key))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn reorder(&mut self) {
        // Depth-first: a segment after everything it refers to. Check()
        // keeps the graph acyclic; `seen` keeps this finite regardless.
        fn visit(
            k: &str,
            defs: &BTreeMap<String, Definition>,
            seen: &mut BTreeSet<String>,
            out: &mut Vec<String>,
        ) {
            if !seen.insert(k.to_owned()) {
                return;
            }
            if let Some(d) = defs.get(k) {
                for dep in d.rule.segments() {
                    visit(dep, defs, seen, out);
                }
                out.push(k.to_owned());
            }
        }
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for k in self.defs.keys() {
            visit(k, &self.defs, &mut seen, &mut out);
        }
        self.order = out
            .into_iter()
            .map(|k| {
                let r = &self.defs[&k].rule;
                let deps = Deps {
                    events: r.event_names().into_iter().map(str::to_owned).collect(),
                    traits: r.uses_traits(),
                    consent: r.uses_consent(),
                    segments: r.segments().into_iter().map(str::to_owned).collect(),
                    segment_places: Vec::new(),
                    windows: !r.windows().is_empty(),
                };
                (k, deps)
            })
            .collect();
        self.index_of = self
            .order
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        for (_, deps) in &mut self.order {
            deps.segment_places = deps
                .segments
                .iter()
                .filter_map(|s| self.index_of.get(s).copied())
                .collect();
        }
        self.windowed = self
            .order
            .iter()
            .filter(|(_, d)| d.windows)
            .map(|(k, _)| k.clone())
            .collect();
        self.families = state::Families::of(self.defs.values().map(|d| &d.rule));
        for d in self.defs.values_mut() {
            self.families.assign(&mut d.rule);
        }
        self.rules = self
            .order
            .iter()
            .map(|(k, _)| self.defs[k].rule.clone())
            .collect();
        self.readers = Map::default();
        for (i, (_, deps)) in self.order.iter().enumerate() {
            for name in &deps.events {
                let places = self.readers.entry(name.clone()).or_default();
                if !places.iter().any(|(p, _)| *p == i) {
                    places.push((i, self.rules[i].grows_with(name)));
                }
            }
        }
        let mut pairs = Vec::new();
        for rule in self.windowed_rules() {
            for (family, within) in state::window_pairs(rule, &self.families) {
                if !pairs.contains(&(family, within)) {
                    pairs.push((family, within));
                }
            }
        }
        self.window_pairs = pairs;
        for m in self.members.values_mut() {
            let places: Vec<usize> = m
                .entered
                .keys()
                .filter_map(|key| self.index_of.get(key).copied())
                .collect();
            m.places.clear();
            for place in places {
                m.set(Some(place), true);
            }
        }
    }

    /// One definition.
    pub fn get(&self, key: &str) -> Option<&Definition> {
        self.defs.get(key)
    }

    /// Every definition, by key.
    pub fn all(&self) -> impl Iterator<Item = &Definition> {
        self.defs.values()
    }

    /// Whether there is any segment.
    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }

    /// How many profiles are in `key`.
    pub fn size(&self, key: &str) -> usize {
        self.sizes.get(key).copied().unwrap_or(0)
    }

    /// Whether `profile_id` is in `key`.
    pub fn is_member(&self, key: &str, profile_id: &str) -> bool {
        self.members
            .get(profile_id)
            .is_some_and(|m| m.entered.contains_key(key))
    }

    /// The segments `profile_id` is in, by key.
    pub fn of_profile(&self, profile_id: &str) -> Vec<String> {
        self.members
            .get(profile_id)
            .map(|m| m.entered.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The members of `key` as (profile, entered_at), by profile id, after
    /// `after` (a cursor: the last profile of the previous page). A pass
    /// over every member of any segment: for the admin API, not the
    /// evaluation path.
    pub fn members(&self, key: &str, after: Option<&str>, limit: usize) -> Vec<(String, String)> {
        let mut ids: Vec<(&String, &String)> = self
            .members
            .iter()
            .filter(|(p, _)| after.is_none_or(|a| p.as_str() > a))
            .filter_map(|(p, m)| m.entered.get(key).map(|t| (p, t)))
            .collect();
        ids.sort_unstable();
        ids.into_iter()
            .take(limit)
            .map(|(p, t)| (p.clone(), t.clone()))
            .collect()
    }

    /// The keys to evaluate for a profile that was `touched`, in order: the
    /// segments whose rule reads what changed, and those that refer to a
    /// segment that will be evaluated (a membership may change there).
    pub fn relevant(&self, touched: &Touched<'_>) -> Vec<String> {
        self.relevant_indices(touched)
            .into_iter()
            .map(|i| self.order[i].0.clone())
            .collect()
    }

    /// [`Segments::relevant`] as places in the evaluation order (no copies
    /// of keys: this runs for every event).
    pub fn relevant_indices(&self, touched: &Touched<'_>) -> Vec<usize> {
        self.relevant_for(None, touched)
    }

    /// [`Segments::relevant_indices`] for `profile_id`, leaving out the
    /// segments it is in whose rules only grow with the events it sent when
    /// only events changed, and no segment they refer to is evaluated (it
    /// stays in them; see [`Rule::grows_with`]).
    pub fn relevant_for(&self, profile_id: Option<&str>, touched: &Touched<'_>) -> Vec<usize> {
        let member = self.member_mask(profile_id);
        self.relevant_with(&member, touched)
    }

    /// The segments `profile_id` is in, by place in the evaluation order.
    pub fn member_mask(&self, profile_id: Option<&str>) -> Vec<bool> {
        let mut member = Vec::new();
        self.member_mask_into(profile_id, &mut member);
        member
    }

    /// [`Segments::member_mask`] into `member` (a buffer the caller keeps:
    /// this runs for every profile of every batch).
    pub fn member_mask_into(&self, profile_id: Option<&str>, member: &mut Vec<bool>) {
        member.clear();
        match profile_id.and_then(|p| self.members.get(p)) {
            Some(mine) => member.extend((0..self.order.len()).map(|i| mine.has(i))),
            None => member.resize(self.order.len(), false),
        }
    }

    /// [`Segments::relevant_for`] given the profile's [`Segments::member_mask`].
    pub fn relevant_with(&self, member: &[bool], touched: &Touched<'_>) -> Vec<usize> {
        let mut scratch = Scratch::default();
        self.relevant_into(member, touched, &mut scratch);
        scratch.places
    }

    /// [`Segments::relevant_with`] into `scratch.places`, with the
    /// caller's buffers.
    pub fn relevant_into(&self, member: &[bool], touched: &Touched<'_>, scratch: &mut Scratch) {
        // It runs for every profile an event touches: places and flags, not
        // string lookups, per segment (string compares were 20% of the
        // indexer's time with 50 segments).
        let n = self.order.len();
        let Scratch {
            reads,
            shrinks,
            chosen,
            places,
        } = scratch;
        for flags in [&mut *reads, &mut *shrinks, &mut *chosen] {
            flags.clear();
            flags.resize(n, false);
        }
        places.clear();
        for name in &touched.events {
            for &(i, grows) in self.readers.get(*name).map_or(&[][..], Vec::as_slice) {
                reads[i] = true;
                shrinks[i] |= !grows;
            }
        }
        // `order` puts dependencies first, so one pass in it keeps that.
        for (i, (_, deps)) in self.order.iter().enumerate() {
            let other_change = touched.merged
                || (touched.traits && deps.traits)
                || (touched.consent && deps.consent);
            let segment_changes = deps.segment_places.iter().any(|&d| chosen[d]);
            // A member stays one when only events it grows with came.
            if !other_change
                && !segment_changes
                && !shrinks[i]
                && member.get(i).copied().unwrap_or(false)
            {
                continue;
            }
            if other_change || reads[i] || segment_changes {
                chosen[i] = true;
                places.push(i);
            }
        }
    }

    /// Whether `key`'s rule has a `within` window.
    pub fn has_windows(&self, key: &str) -> bool {
        self.windowed.contains(key)
    }

    /// Every distinct (event-condition family, window in ms) of the rules
    /// that have windows.
    pub fn window_pairs(&self) -> &[(usize, i64)] {
        &self.window_pairs
    }

    /// The rules that have a `within` window.
    pub fn windowed_rules(&self) -> impl Iterator<Item = &Rule> {
        self.order
            .iter()
            .zip(&self.rules)
            .filter(|((_, d), _)| d.windows)
            .map(|(_, r)| r)
    }

    /// Whether any of these places holds a segment with a window.
    pub fn any_windows(&self, places: &[usize]) -> bool {
        places
            .iter()
            .any(|&i| self.order.get(i).is_some_and(|(_, d)| d.windows))
    }

    /// Every key, dependencies first.
    pub fn ordered(&self) -> Vec<String> {
        self.order.iter().map(|(k, _)| k.clone()).collect()
    }

    /// Evaluates `profile_id` against `keys` (in the order given: as from
    /// [`Segments::relevant`]) with `facts`, applies what changed and
    /// answers it. `member_of` conditions see the memberships this pass has
    /// just decided.
    pub fn evaluate(
        &mut self,
        profile_id: &str,
        keys: &[String],
        facts: &mut dyn Facts,
        now: &str,
    ) -> Vec<Change> {
        let places: Vec<usize> = keys
            .iter()
            .filter_map(|k| self.index_of.get(k).copied())
            .collect();
        self.evaluate_places(profile_id, &places, facts, now)
    }

    /// [`Segments::evaluate`] for places in the evaluation order.
    pub fn evaluate_places(
        &mut self,
        profile_id: &str,
        places: &[usize],
        facts: &mut dyn Facts,
        now: &str,
    ) -> Vec<Change> {
        let mut member = self.member_mask(Some(profile_id));
        self.evaluate_with(profile_id, places, &mut member, facts, now)
    }

    /// [`Segments::evaluate_places`] given the profile's
    /// [`Segments::member_mask`] (read once for both steps).
    pub fn evaluate_with(
        &mut self,
        profile_id: &str,
        places: &[usize],
        member: &mut Vec<bool>,
        facts: &mut dyn Facts,
        now: &str,
    ) -> Vec<Change> {
        // Decided first, applied after.
        member.resize(self.order.len(), false);
        let mut decided: Vec<(usize, bool)> = Vec::new();
        for &place in places {
            let Some(rule) = self.rules.get(place) else {
                continue;
            };
            let is_in = rule.matches(&mut WithMembers {
                facts: &mut *facts,
                member,
                index_of: &self.index_of,
            });
            if is_in != member[place] {
                member[place] = is_in;
                decided.push((place, is_in));
            }
        }
        decided
            .into_iter()
            .map(|(place, is_in)| {
                let key = self.order[place].0.clone();
                self.apply(&key, profile_id, is_in, now)
            })
            .collect()
    }

    /// Takes `profile_id` out of every segment (it was merged into another
    /// profile, or erased).
    pub fn remove_profile(&mut self, profile_id: &str, now: &str) -> Vec<Change> {
        let keys = self.of_profile(profile_id);
        keys.iter()
            .map(|k| self.apply(k, profile_id, false, now))
            .collect()
    }

    fn apply(&mut self, key: &str, profile_id: &str, entered: bool, now: &str) -> Change {
        let place = self.index_of.get(key).copied();
        if entered {
            let m = self.members.entry(profile_id.to_owned()).or_default();
            m.set(place, true);
            if m.entered.insert(key.to_owned(), now.to_owned()).is_none() {
                *self.sizes.entry(key.to_owned()).or_default() += 1;
            }
        } else if let Some(m) = self.members.get_mut(profile_id) {
            m.set(place, false);
            if m.entered.remove(key).is_some()
                && let Some(n) = self.sizes.get_mut(key)
            {
                *n = n.saturating_sub(1);
            }
            if m.entered.is_empty() {
                self.members.remove(profile_id);
            }
        }
        Change {
            segment: key.to_owned(),
            profile_id: profile_id.to_owned(),
            entered,
            at: now.to_owned(),
        }
    }
}

/// Facts with `member_of` answered from the profile's memberships and
/// what this pass has decided so far.
struct WithMembers<'a, 'f> {
    facts: &'a mut (dyn Facts + 'f),
    /// By place: a member now (this pass's decisions included).
    member: &'a [bool],
    index_of: &'a Places,
}

impl Facts for WithMembers<'_, '_> {
    fn trait_value(&mut self, name: &str) -> Option<Value> {
        self.facts.trait_value(name)
    }
    fn consent_grants(&mut self, category: &str) -> bool {
        self.facts.consent_grants(category)
    }
    fn count_events(&mut self, condition: &rule::EventCondition) -> u64 {
        self.facts.count_events(condition)
    }
    fn member_of(&mut self, key: &str) -> bool {
        self.index_of
            .get(key)
            .is_some_and(|&i| self.member.get(i).copied().unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(key: &str, rule: Value) -> Definition {
        Definition {
            key: key.into(),
            name: key.into(),
            rule: Rule::parse(&rule).unwrap(),
            rule_json: rule,
            updated_at: "2026-01-01T00:00:00.000Z".into(),
            ready: true,
        }
    }

    struct Plan(&'static str);
    impl Facts for Plan {
        fn trait_value(&mut self, name: &str) -> Option<Value> {
            (name == "plan").then(|| json!(self.0))
        }
        fn consent_grants(&mut self, _: &str) -> bool {
            false
        }
        fn count_events(&mut self, _: &rule::EventCondition) -> u64 {
            0
        }
        fn member_of(&mut self, _: &str) -> bool {
            unreachable!("answered by the segments")
        }
    }

    #[test]
    fn cycles_and_unknown_references_are_refused_and_order_follows_references() {
        let mut s = Segments::default();
        s.put(def(
            "pro",
            json!({"trait": "plan", "op": "eq", "value": "pro"}),
        ));
        s.put(def(
            "pro-vip",
            json!({"all": [{"segment": "pro"}, {"trait": "vip", "op": "exists"}]}),
        ));
        let refers = |k: &str| Rule::parse(&json!({"segment": k})).unwrap();
        assert!(s.check("x", &refers("pro-vip")).is_ok());
        assert_eq!(
            s.check("x", &refers("nope")).unwrap_err().reason,
            "no segment \"nope\""
        );
        assert!(s.check("pro", &refers("pro")).is_err(), "itself");
        assert!(
            s.check("pro", &refers("pro-vip")).is_err(),
            "through another"
        );
        s.put(def("a-last", json!({"segment": "pro-vip"})));
        let order = s.ordered().to_vec();
        let at = |k: &str| order.iter().position(|x| x == k).unwrap();
        assert!(at("pro") < at("pro-vip") && at("pro-vip") < at("a-last"));
    }

    #[test]
    fn a_change_evaluates_what_can_change_and_what_follows_it() {
        let mut s = Segments::default();
        s.put(def(
            "pro",
            json!({"trait": "plan", "op": "eq", "value": "pro"}),
        ));
        s.put(def("pro-too", json!({"segment": "pro"})));
        s.put(def("buyers", json!({"event": "Order Completed"})));
        let traits = Touched {
            traits: true,
            ..Touched::default()
        };
        assert_eq!(s.relevant(&traits), ["pro", "pro-too"]);
        let bought = Touched {
            events: vec!["Order Completed"],
            ..Touched::default()
        };
        assert_eq!(s.relevant(&bought), ["buyers"]);
        let keys = s.relevant(&traits);
        let changes = s.evaluate("user:u", &keys, &mut Plan("pro"), "t1");
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(changes.iter().all(|c| c.entered));
        assert_eq!(s.of_profile("user:u"), ["pro", "pro-too"]);
        assert!(
            s.evaluate("user:u", &keys, &mut Plan("pro"), "t2")
                .is_empty()
        );
        let left = s.evaluate("user:u", &keys, &mut Plan("free"), "t3");
        assert_eq!(left.iter().filter(|c| !c.entered).count(), 2);
        assert_eq!(s.size("pro"), 0);
        s.evaluate("user:u", &keys, &mut Plan("pro"), "t4");
        assert_eq!(s.remove_profile("user:u", "t5").len(), 2);
        assert!(s.of_profile("user:u").is_empty());
    }

    #[test]
    fn a_member_of_a_rule_that_only_grows_with_events_is_not_evaluated_again_for_events() {
        let mut s = Segments::default();
        s.put(def("viewers", json!({"event": "Viewed"})));
        s.put(def(
            "few",
            json!({"event": "Viewed", "count": {"op": "lt", "value": 3}}),
        ));
        s.put(def(
            "pro-viewers",
            json!({"all": [{"event": "Viewed"}, {"trait": "plan", "op": "eq", "value": "pro"}]}),
        ));
        let viewed = Touched {
            events: vec!["Viewed"],
            ..Touched::default()
        };
        let all = s.relevant_for(Some("user:u"), &viewed).len();
        assert_eq!(all, 3);
        s.load_member("viewers", "user:u".into(), "t".into());
        s.load_member("few", "user:u".into(), "t".into());
        s.load_member("pro-viewers", "user:u".into(), "t".into());
        let keys: Vec<&str> = s
            .relevant_for(Some("user:u"), &viewed)
            .into_iter()
            .map(|i| s.ordered()[i].clone())
            .map(|k| if k == "few" { "few" } else { "other" })
            .collect();
        assert_eq!(keys, ["few"], "only `few` can be left by more events");
        let identified = Touched {
            traits: true,
            ..viewed.clone()
        };
        assert_eq!(
            s.relevant_for(Some("user:u"), &identified).len(),
            2,
            "traits changed"
        );
    }

    #[test]
    fn a_member_is_not_evaluated_for_events_its_rule_only_grows_with() {
        let mut s = Segments::default();
        s.put(def(
            "viewed-not-bought",
            json!({"all": [{"event": "Viewed", "within": "7d"}, {"not": {"event": "Bought", "within": "7d"}}]}),
        ));
        s.put(def(
            "few",
            json!({"event": "Viewed", "count": {"op": "lt", "value": 3}}),
        ));
        s.put(def(
            "viewers-in-few",
            json!({"all": [{"event": "Viewed"}, {"segment": "few"}]}),
        ));
        s.put(def(
            "viewers-not-in-vnb",
            json!({"all": [{"event": "Viewed"}, {"not": {"segment": "viewed-not-bought"}}]}),
        ));
        for key in [
            "viewed-not-bought",
            "few",
            "viewers-in-few",
            "viewers-not-in-vnb",
        ] {
            s.load_member(key, "user:u".into(), "t".into());
        }
        let chosen = |events: Vec<&'static str>| -> Vec<String> {
            let touched = Touched {
                events,
                ..Touched::default()
            };
            let mut keys: Vec<String> = s
                .relevant_for(Some("user:u"), &touched)
                .into_iter()
                .map(|i| s.ordered()[i].clone())
                .collect();
            keys.sort();
            keys
        };
        // A view: `few` may be left, so what refers to it is evaluated too;
        // viewed-not-bought stays, and so does what refers only to it.
        assert_eq!(chosen(vec!["Viewed"]), ["few", "viewers-in-few"]);
        // A purchase can take someone out of viewed-not-bought, and so into
        // the segment that refers to it negatively.
        assert_eq!(
            chosen(vec!["Bought"]),
            ["viewed-not-bought", "viewers-not-in-vnb"]
        );
    }
}
