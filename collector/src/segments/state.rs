//! What segment rules need to know about a profile, kept up to date event
//! by event instead of recomputed from the profile's whole history.
//!
//! Re-reading a profile's events on each of its new events costs time in
//! proportion to its history (measured: 265 µs per event with 50 segments
//! and 480 events per profile). Instead each profile has a
//! [`ProfileState`]: its merged traits, its latest consent, and for each
//! *family* of event conditions (same event name and property filters,
//! whatever the count or window) the times of its matching events. A new
//! event updates the state in O(families); a rule then reads counts by
//! binary search. A state is built from the history once (when first
//! needed, and again after the profile merged with another).

use crate::hashing;

use serde_json::Value;

use super::rule::{Compare, EventCondition, Facts, Rule};

/// Event conditions that match the same events: the same name and the same
/// property filters (counts and windows differ).
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The track event's name.
    pub name: String,
    /// Property filters, all of which must hold.
    pub filters: Vec<Compare>,
    /// The longest window a condition counts it within: only then are its
    /// events' times kept (a count is enough otherwise), and only those
    /// still inside that window (older ones can never count again).
    pub window_ms: Option<i64>,
}

/// By event name: its families, and the properties they filter by (looked
/// up once per event, so by hash rather than by comparing every family's
/// name).
#[derive(Debug, Default, Clone)]
struct Named {
    families: Vec<usize>,
    properties: Vec<String>,
}

/// The families of a set of rules.
#[derive(Debug, Default, Clone)]
pub struct Families(Vec<Family>, hashing::Map<String, Named>);

impl Families {
    /// The families of every event condition of `rules`.
    pub fn of<'r>(rules: impl IntoIterator<Item = &'r Rule>) -> Families {
        let mut out = Families::default();
        for rule in rules {
            visit(rule, &mut |e| {
                if let Some(i) = out.find(e) {
                    out.0[i].window_ms = out.0[i].window_ms.max(e.within_ms);
                } else {
                    let named = out.1.entry(e.name.clone()).or_default();
                    named.families.push(out.0.len());
                    for c in &e.filters {
                        if !named.properties.contains(&c.name) {
                            named.properties.push(c.name.clone());
                        }
                    }
                    out.0.push(Family {
                        name: e.name.clone(),
                        filters: e.filters.clone(),
                        window_ms: e.within_ms,
                    });
                }
            });
        }
        out
    }

    /// The family of a condition: the one [`Families::assign`] set in it
    /// (the segments assign every rule whenever their families change),
    /// else found by name and filters.
    pub fn index(&self, e: &EventCondition) -> Option<usize> {
        if e.family < self.0.len() {
            return Some(e.family);
        }
        self.find(e)
    }

    fn find(&self, e: &EventCondition) -> Option<usize> {
        self.0
            .iter()
            .position(|f| f.name == e.name && f.filters == e.filters)
    }

    /// Sets each event condition's family in `rule`.
    pub fn assign(&self, rule: &mut Rule) {
        rule.event_conditions_mut(&mut |e| {
            e.family = self.find(e).unwrap_or(usize::MAX);
        });
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The families an event named `name` may match.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (usize, &'a Family)> + 'a {
        self.1
            .get(name)
            .map_or(&[][..], |n| &n.families[..])
            .iter()
            .map(|&i| (i, &self.0[i]))
    }

    /// The properties the families of events named `name` filter by.
    pub fn filtered_properties(&self, name: &str) -> &[String] {
        self.1.get(name).map_or(&[], |n| &n.properties)
    }
}

fn visit<'r>(rule: &'r Rule, f: &mut impl FnMut(&'r EventCondition)) {
    match rule {
        Rule::All(rs) | Rule::Any(rs) => rs.iter().for_each(|r| visit(r, f)),
        Rule::Not(r) => visit(r, f),
        Rule::Event(e) => f(e),
        _ => {}
    }
}

/// Event time and LSN: the order in which a profile's calls count ("the
/// latest identify wins" is by event time, then by log order).
pub type When = (i64, u64);

/// One event of a profile, as a state update sees it.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// Event time (ms) and LSN.
    pub when: When,
    /// A track event's name.
    pub track: Option<&'a str>,
    /// An identify call.
    pub identify: bool,
    /// Its body mentions consent preferences.
    pub consent: bool,
}

/// An event's body as a state update reads it: whole (identify calls and
/// consent carriers), or only the properties the families filter by (most
/// events: no map is built for them).
#[derive(Debug, Clone)]
pub enum Body<'a> {
    /// The parsed body.
    Full(Value),
    /// Some of `properties`, by name.
    Properties(Vec<(std::borrow::Cow<'a, str>, Value)>),
}

impl Body<'_> {
    /// The property `name`.
    pub fn property(&self, name: &str) -> Option<&Value> {
        match self {
            Body::Full(b) => b.get("properties")?.get(name),
            // The last of a repeated name, as a parse into a map keeps.
            Body::Properties(props) => props.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v),
        }
    }
}

/// A profile's facts for segment rules.
#[derive(Debug, Default, Clone)]
pub struct ProfileState {
    /// trait -> (value, when it was set).
    traits: hashing::Map<String, (Value, When)>,
    /// The latest `categoryPreferences`, and when.
    consent: Option<(Value, When)>,
    /// Per family: its matching events.
    tallies: Vec<Tally>,
    /// When the indexer last scheduled this profile's next window change
    /// (the value it put in its due times): unchanged, the map is not
    /// touched again. Whoever removes the due time clears it.
    pub scheduled: std::cell::Cell<Option<i64>>,
    /// The profile's memberships by place, as the indexer's last batch left
    /// them (saves a lookup in the segments' map per profile per batch).
    /// Whatever else changes its memberships (a recompute, the tick)
    /// clears it.
    pub member: Option<Vec<bool>>,
}

/// A profile's events of one family: how many, and for a family with a
/// window ([`Family::window_ms`]) their times (ms, sorted), with the oldest
/// and newest beside them so the common questions (all within the window?
/// in time order?) do not touch the list, which is mostly out of the cache.
#[derive(Debug, Default, Clone)]
struct Tally {
    count: u64,
    first: i64,
    last: i64,
    times: Vec<i64>,
}

impl Tally {
    /// Drops the times at or before `cutoff`.
    fn forget_until(&mut self, cutoff: i64) {
        let gone = self.times.len() - self.after(cutoff);
        if gone > 0 {
            self.times.drain(..gone);
            self.first = self.times.first().copied().unwrap_or(self.last);
        }
    }

    /// How many of the times are after `cutoff`.
    fn after(&self, cutoff: i64) -> usize {
        if self.times.is_empty() || self.first > cutoff {
            return self.times.len();
        }
        self.times.len() - first_after(&self.times, cutoff)
    }

    /// The oldest time after `cutoff`.
    fn oldest_after(&self, cutoff: i64) -> Option<i64> {
        if self.times.is_empty() || self.first > cutoff {
            return self.times.first().map(|_| self.first);
        }
        self.times.get(first_after(&self.times, cutoff)).copied()
    }
}

impl ProfileState {
    /// An empty state for `families`.
    pub fn new(families: &Families) -> ProfileState {
        ProfileState {
            tallies: vec![Tally::default(); families.len()],
            ..ProfileState::default()
        }
    }

    /// Takes one event into account at `now_ms`. `body` gives the event's
    /// parsed body when asked (only identify calls, consent carriers and
    /// events some family filters by property need it).
    pub fn add<'b>(
        &mut self,
        families: &Families,
        event: &Seen<'_>,
        now_ms: i64,
        read_body: &mut dyn FnMut() -> Option<Body<'b>>,
    ) {
        // The body, parsed at most once, and only if something needs it.
        let mut parsed: Option<Option<Body<'b>>> = None;
        let mut body = |parsed: &mut Option<Option<Body<'b>>>| {
            if parsed.is_none() {
                *parsed = Some(read_body());
            }
        };
        if event.identify {
            body(&mut parsed);
            if let Some(Some(Body::Full(b))) = &parsed {
                for (k, v) in identify_traits(b) {
                    match self.traits.get_mut(k) {
                        Some((_, at)) if *at > event.when => {}
                        Some(old) => *old = (v.clone(), event.when),
                        None => {
                            self.traits.insert(k.clone(), (v.clone(), event.when));
                        }
                    }
                }
            }
        }
        if event.consent && self.consent.as_ref().is_none_or(|(_, at)| *at < event.when) {
            body(&mut parsed);
            if let Some(Some(Body::Full(b))) = &parsed {
                let prefs = &b["context"]["consent"]["categoryPreferences"];
                if prefs.is_object() {
                    self.consent = Some((prefs.clone(), event.when));
                }
            }
        }
        if let Some(name) = event.track {
            for (i, family) in families.named(name) {
                if !family.filters.is_empty() {
                    body(&mut parsed);
                    let Some(Some(b)) = &parsed else {
                        continue;
                    };
                    if !family.filters.iter().all(|f| f.holds(b.property(&f.name))) {
                        continue;
                    }
                }
                let tally = &mut self.tallies[i];
                tally.count += 1;
                let Some(window) = family.window_ms else {
                    continue;
                };
                let at = event.when.0;
                // Out of every window already (time only moves on).
                let cutoff = now_ms.saturating_sub(window);
                if at <= cutoff {
                    continue;
                }
                // Each time the list doubles, what left the window goes:
                // memory in proportion to the events inside it, not to the
                // whole history, at an amortized cost per event.
                if tally.times.len() >= 64 && tally.times.len().is_power_of_two() {
                    tally.forget_until(cutoff);
                }
                // Events mostly come in time order: appended without a
                // search (a binary search over a long history missed the
                // cache on most steps: 13% of the indexer's time).
                if tally.times.is_empty() {
                    (tally.first, tally.last) = (at, at);
                    tally.times.push(at);
                } else if tally.last <= at {
                    tally.last = at;
                    tally.times.push(at);
                } else {
                    let place = tally.times.partition_point(|t| *t <= at);
                    tally.times.insert(place, at);
                    tally.first = tally.first.min(at);
                }
            }
        }
    }

    /// The facts at `now_ms` (for [`Rule::matches`]; `member_of` is
    /// answered by the segments).
    pub fn facts<'s>(&'s self, families: &'s Families, now_ms: i64) -> StateFacts<'s> {
        StateFacts {
            state: self,
            families,
            now_ms,
        }
    }

    /// When, at the earliest, one of the windows `pairs` (family, window in
    /// ms: [`window_pairs`]) lets one of this profile's events go: its
    /// memberships may change then without a new event.
    pub fn next_change_of(&self, pairs: &[(usize, i64)], now_ms: i64) -> Option<i64> {
        pairs
            .iter()
            .filter_map(|&(family, w)| {
                let oldest = self.tallies.get(family)?.oldest_after(now_ms - w)?;
                Some(oldest + w)
            })
            .min()
    }
}

/// The index of the first of the sorted `times` after `cutoff`. A window
/// usually holds all of a profile's events, or its newest few, so this
/// looks at the oldest first and then gallops back from the newest: a few
/// reads near the ends instead of a binary search through the middle of a
/// long history (which missed the cache on most steps).
fn first_after(times: &[i64], cutoff: i64) -> usize {
    let n = times.len();
    if times.first().is_none_or(|&t| t > cutoff) {
        return 0;
    }
    // Here times[0] <= cutoff: find the last step back from the end that
    // is still after it.
    let mut step = 1;
    while step < n && times[n - step] > cutoff {
        step *= 2;
    }
    let low = n.saturating_sub(step);
    let high = n - step / 2;
    low + times[low..high].partition_point(|&t| t <= cutoff)
}

/// The (family, window in ms) of each of `rule`'s event conditions with a
/// `within` window.
pub fn window_pairs(rule: &Rule, families: &Families) -> Vec<(usize, i64)> {
    let mut out = Vec::new();
    visit(rule, &mut |e| {
        if let (Some(w), Some(i)) = (e.within_ms, families.index(e)) {
            out.push((i, w));
        }
    });
    out
}

/// An identify's traits: those in `context.traits` (where RudderStack's
/// SDKs put them) overlaid by the top-level `traits` (Segment's place), so
/// a key given in both takes the top-level value.
/// Given in that order: a caller that keeps the last value of a key gets
/// that overlay.
pub fn identify_traits(body: &Value) -> impl Iterator<Item = (&String, &Value)> {
    let at = |at: &str| {
        body.pointer(at)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
    };
    at("/context/traits").chain(at("/traits"))
}

/// A [`ProfileState`] as [`Facts`].
pub struct StateFacts<'s> {
    state: &'s ProfileState,
    families: &'s Families,
    now_ms: i64,
}

impl Facts for StateFacts<'_> {
    fn trait_value(&mut self, name: &str) -> Option<Value> {
        self.state.traits.get(name).map(|(v, _)| v.clone())
    }

    fn consent_grants(&mut self, category: &str) -> bool {
        category == "necessary"
            || self
                .state
                .consent
                .as_ref()
                .is_some_and(|(p, _)| p[category] == Value::Bool(true))
    }

    fn count_events(&mut self, c: &EventCondition) -> u64 {
        let Some(i) = self.families.index(c) else {
            return 0;
        };
        let Some(tally) = self.state.tallies.get(i) else {
            return 0;
        };
        match c.within_ms {
            Some(w) => tally.after(self.now_ms - w) as u64,
            None => tally.count,
        }
    }

    fn member_of(&mut self, _: &str) -> bool {
        // Answered from the memberships by `Segments::evaluate`.
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> Vec<Rule> {
        [
            json!({"event": "Viewed", "within": "1h"}),
            json!({"event": "Viewed", "count": {"op": "gte", "value": 3}}),
            json!({"event": "Viewed", "where": [{"property": "cat", "op": "eq", "value": "shoes"}]}),
            json!({"all": [{"trait": "plan", "op": "eq", "value": "pro"}, {"consent": "marketing"}]}),
        ]
        .iter()
        .map(|r| Rule::parse(r).unwrap())
        .collect()
    }

    fn track(ms: i64, lsn: u64) -> Seen<'static> {
        Seen {
            when: (ms, lsn),
            track: Some("Viewed"),
            identify: false,
            consent: false,
        }
    }

    #[test]
    fn families_share_times_and_counts_follow_windows_filters_and_order() {
        let rules = rules();
        let families = Families::of(&rules);
        assert_eq!(families.len(), 2, "same name and filters: one family");
        let mut s = ProfileState::new(&families);
        let hour = 3_600_000;
        let shoes = || Some(Body::Full(json!({"properties": {"cat": "shoes"}})));
        let hats = || {
            Some(Body::Properties(vec![(
                std::borrow::Cow::Borrowed("cat"),
                json!("hats"),
            )]))
        };
        s.add(&families, &track(10 * hour, 1), 0, &mut shoes.clone());
        s.add(&families, &track(12 * hour, 3), 0, &mut hats.clone());
        // Late: an older event arrives after a newer one.
        s.add(&families, &track(11 * hour, 2), 0, &mut hats.clone());
        let now = 12 * hour + 1;
        let matches = |s: &ProfileState, r: &Rule| r.matches(&mut s.facts(&families, now));
        assert!(matches(&s, &rules[0]), "one in the last hour");
        assert!(matches(&s, &rules[1]), "three in all");
        assert!(matches(&s, &rules[2]), "one with shoes");
        let later = 13 * hour + 1;
        assert!(!rules[0].matches(&mut s.facts(&families, later)));
        let pairs = window_pairs(&rules[0], &families);
        assert_eq!(s.next_change_of(&pairs, now), Some(13 * hour));
        assert_eq!(s.next_change_of(&pairs, later), None);
        // The oldest arrives last: counts and the next change see it.
        s.add(&families, &track(9 * hour, 4), 0, &mut hats.clone());
        let at_ten = 10 * hour - 1;
        assert_eq!(s.next_change_of(&pairs, at_ten), Some(10 * hour));
        let tally = &s.tallies[0];
        assert_eq!(
            (tally.first, tally.last, tally.count),
            (9 * hour, 12 * hour, 4)
        );
        assert_eq!(tally.after(10 * hour + 30 * 60_000), 2, "11:00 and 12:00");
        assert_eq!(tally.after(0), 4);
    }

    #[test]
    fn first_after_agrees_with_a_binary_search() {
        for n in 0..40usize {
            let times: Vec<i64> = (0..n as i64).map(|i| i * 10 + (i % 3)).collect();
            for cutoff in -5..(n as i64 * 10 + 15) {
                assert_eq!(
                    first_after(&times, cutoff),
                    times.partition_point(|&t| t <= cutoff),
                    "n {n} cutoff {cutoff}"
                );
            }
        }
        // Equal times.
        let times = [1, 5, 5, 5, 9];
        for cutoff in 0..11 {
            assert_eq!(
                first_after(&times, cutoff),
                times.partition_point(|&t| t <= cutoff)
            );
        }
    }

    #[test]
    fn the_latest_identify_and_consent_win_by_event_time() {
        let rules = rules();
        let families = Families::of(&rules);
        let mut s = ProfileState::new(&families);
        let call = |ms: i64, identify: bool, consent: bool| Seen {
            when: (ms, ms as u64),
            track: None,
            identify,
            consent,
        };
        let body = |plan: &str, marketing: bool| {
            json!({"traits": {"plan": plan},
                   "context": {"consent": {"categoryPreferences": {"marketing": marketing}}}})
        };
        s.add(&families, &call(2, true, true), 0, &mut || {
            Some(Body::Full(body("pro", true)))
        });
        // An older call arriving later changes nothing.
        s.add(&families, &call(1, true, true), 0, &mut || {
            Some(Body::Full(body("free", false)))
        });
        assert!(rules[3].matches(&mut s.facts(&families, 10)));
        s.add(&families, &call(3, false, true), 0, &mut || {
            Some(Body::Full(body("x", false)))
        });
        assert!(
            !rules[3].matches(&mut s.facts(&families, 10)),
            "consent withdrawn"
        );
        let mut read = false;
        s.add(&families, &call(4, false, false), 0, &mut || {
            read = true;
            None
        });
        assert!(!read, "a body is read only when something needs it");
    }

    #[test]
    fn times_that_left_the_longest_window_are_forgotten() {
        let rules = rules();
        let families = Families::of(&rules);
        let mut s = ProfileState::new(&families);
        let minute = 60_000;
        let none = &mut || None;
        // Twenty hours of an event a minute, each added as it happens.
        for i in 1..=1200 {
            s.add(&families, &track(i * minute, i as u64), i * minute, none);
        }
        let now = 1200 * minute;
        let tally = &s.tallies[0];
        assert_eq!(tally.count, 1200, "the count keeps every event");
        assert_eq!(tally.after(now - 60 * minute), 60, "the last hour");
        assert!(
            tally.times.len() <= 128,
            "kept {} times for a one-hour window",
            tally.times.len()
        );
        assert_eq!(
            s.next_change_of(&window_pairs(&rules[0], &families), now),
            Some(now - 59 * minute + 60 * minute)
        );
        // An event older than the window when it arrives is counted, not kept.
        s.add(&families, &track(now - 2 * 60 * minute, 9999), now, none);
        assert_eq!(
            (s.tallies[0].count, s.tallies[0].after(now - 60 * minute)),
            (1201, 60)
        );
    }
}
