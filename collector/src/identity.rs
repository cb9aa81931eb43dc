//! Identity resolution: which person each identifier and each event belongs
//! to (DESIGN.md §6), as pure functions over the links seen so far.
//!
//! - A *link* ties a device (`anonymousId`) to a login (`userId`) at a time:
//!   every message that carries both makes one.
//! - An *alias* joins two user IDs (`previousId` -> `userId`).
//! - A *same-device* edge joins two anonymous IDs of one browser: the
//!   collector's server cookie named the earlier one on a message of the
//!   later one (the page's own storage was wiped). A device is the set of
//!   anonymous IDs such edges join; its smallest ID names it, and its links
//!   are the links of all of them.
//! - A profile is a set of user IDs joined by aliases (its `profile_id` is
//!   the smallest of them, so it does not depend on arrival order), with the
//!   devices linked to them. A device linked to no user is a profile of its
//!   own (`anon:<id>`).
//! - Merge protection: a device linked to two users never joins their
//!   profiles. Its anonymous-only events are attributed by time: to the user
//!   of the first link at or after the event, else the last one before.
//! - Junk identifiers (`null`, `guest`, `0`, ...) never link anything.
//!
//! Everything here is computed from the whole set of links, sorted first,
//! so any arrival order of the same messages gives the same answer.

use std::collections::{BTreeMap, BTreeSet};

/// Identifier values that SDKs and sites send by mistake; never linked.
pub const JUNK_IDS: [&str; 11] = [
    "",
    "null",
    "undefined",
    "0",
    "-1",
    "anonymous",
    "guest",
    "[object object]",
    "nan",
    "none",
    "nil",
];

/// Whether `id` is junk: one of [`JUNK_IDS`] or `extra`, compared
/// case-insensitively after trimming.
pub fn is_junk(id: &str, extra: &[String]) -> bool {
    let id = id.trim();
    JUNK_IDS.iter().any(|j| id.eq_ignore_ascii_case(j))
        || extra.iter().any(|j| id.eq_ignore_ascii_case(j.trim()))
}

/// The `profile_id` of a profile of users, from its canonical user ID.
pub fn user_profile_id(canonical_user: &str) -> String {
    // (Made for every identifier of every indexed batch: no formatter.)
    ["user:", canonical_user].concat()
}

/// The `profile_id` of a device never linked to a user.
pub fn device_profile_id(anonymous_id: &str) -> String {
    ["anon:", anonymous_id].concat()
}

/// The identifier a `profile_id` was made from (the canonical user, or the
/// device): what resolves to that profile again.
pub fn profile_identifier(profile_id: &str) -> &str {
    profile_id
        .strip_prefix("user:")
        .or_else(|| profile_id.strip_prefix("anon:"))
        .unwrap_or(profile_id)
}

/// A device seen logged in as a user.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Link {
    /// When (RFC 3339 UTC millis, so text order is time order).
    pub at: String,
    /// The device.
    pub anonymous_id: String,
    /// The user.
    pub user_id: String,
    /// The message that made the link.
    pub message_id: String,
}

/// Two user IDs joined by an `alias` call.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Alias {
    /// When.
    pub at: String,
    /// The earlier user ID.
    pub previous_id: String,
    /// The user ID it joins.
    pub user_id: String,
    /// The alias message.
    pub message_id: String,
}

/// Two anonymous IDs of one browser, joined by the collector's server
/// cookie: a message of `anonymous_id` arrived with a cookie naming
/// `same_as` (the page's storage had been wiped, the cookie had not).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SameDevice {
    /// When (the message's timestamp).
    pub at: String,
    /// The anonymous ID of the message.
    pub anonymous_id: String,
    /// The anonymous ID the cookie carried.
    pub same_as: String,
    /// The message that made the edge.
    pub message_id: String,
}

/// Why a [`SameDevice`] edge exists, as the graph API names it.
pub const SAME_DEVICE_REASON: &str = "server_cookie";

/// The resolved identity graph.
#[derive(Debug, Default, Clone)]
pub struct Graph {
    /// user ID -> the profile's canonical user ID (the smallest).
    canonical: BTreeMap<String, String>,
    /// device (its smallest anonymous ID) -> its links, in time order (ties
    /// broken by user ID).
    devices: BTreeMap<String, Vec<(String, String)>>,
    /// anonymous ID -> its device's smallest anonymous ID, for the IDs
    /// that same-device edges join (others are their own device).
    device_of: BTreeMap<String, String>,
}

/// Union-find over identifiers; the root of each set is its smallest
/// member, so the result does not depend on the order of the unions.
#[derive(Default)]
struct Sets<'a> {
    parent: BTreeMap<&'a str, &'a str>,
}

impl<'a> Sets<'a> {
    fn add(&mut self, x: &'a str) {
        self.parent.entry(x).or_insert(x);
    }

    fn find(&mut self, x: &'a str) -> &'a str {
        let mut root = x;
        while let Some(&p) = self.parent.get(root) {
            if p == root {
                break;
            }
            root = p;
        }
        // Path compression.
        let mut cur = x;
        while let Some(&p) = self.parent.get(cur) {
            if p == root {
                break;
            }
            self.parent.insert(cur, root);
            cur = p;
        }
        root
    }

    fn union(&mut self, a: &'a str, b: &'a str) {
        self.add(a);
        self.add(b);
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            let (small, large) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.parent.insert(large, small);
        }
    }

    /// Every member with its root.
    fn roots(mut self) -> BTreeMap<String, String> {
        let ids: Vec<&str> = self.parent.keys().copied().collect();
        ids.into_iter()
            .map(|x| (x.to_owned(), self.find(x).to_owned()))
            .collect()
    }
}

impl Graph {
    /// Resolves links, aliases and same-device edges. Junk identifiers are
    /// ignored.
    pub fn build(
        links: &[Link],
        aliases: &[Alias],
        same_devices: &[SameDevice],
        junk: &[String],
    ) -> Graph {
        let mut same: Sets<'_> = Sets::default();
        for s in same_devices {
            if !is_junk(&s.anonymous_id, junk) && !is_junk(&s.same_as, junk) {
                same.union(&s.anonymous_id, &s.same_as);
            }
        }
        let device_of = same.roots();
        let device = |id: &str| device_of.get(id).cloned().unwrap_or_else(|| id.to_owned());
        let mut users: BTreeSet<&str> = BTreeSet::new();
        let mut devices: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for l in links {
            if is_junk(&l.anonymous_id, junk) || is_junk(&l.user_id, junk) {
                continue;
            }
            users.insert(&l.user_id);
            devices
                .entry(device(&l.anonymous_id))
                .or_default()
                .push((l.at.clone(), l.user_id.clone()));
        }
        for links in devices.values_mut() {
            links.sort();
            links.dedup();
        }
        // User IDs joined by aliases.
        let mut joined: Sets<'_> = Sets::default();
        for u in &users {
            joined.add(u);
        }
        for a in aliases {
            if !is_junk(&a.previous_id, junk) && !is_junk(&a.user_id, junk) {
                joined.union(&a.previous_id, &a.user_id);
            }
        }
        Graph {
            canonical: joined.roots(),
            devices,
            device_of,
        }
    }

    /// The device an anonymous ID is part of (its smallest anonymous ID).
    pub fn device_of<'a>(&'a self, anonymous_id: &'a str) -> &'a str {
        self.device_of
            .get(anonymous_id)
            .map(String::as_str)
            .unwrap_or(anonymous_id)
    }

    /// The profile a user ID belongs to (its canonical user ID).
    pub fn profile_of_user<'a>(&'a self, user_id: &'a str) -> &'a str {
        self.canonical
            .get(user_id)
            .map(String::as_str)
            .unwrap_or(user_id)
    }

    /// The user an anonymous-only event at `at` on `device` belongs to: the
    /// user of the first link at or after `at`, else of the last link
    /// before. `None` for a device never linked.
    pub fn user_at(&self, device: &str, at: &str) -> Option<&str> {
        let links = self.devices.get(self.device_of(device))?;
        let i = links.partition_point(|(t, _)| t.as_str() < at);
        links
            .get(i)
            .or_else(|| links.last())
            .map(|(_, u)| u.as_str())
    }

    /// The most recent user of a device (the profile a lookup by this
    /// anonymousId answers).
    pub fn latest_user(&self, device: &str) -> Option<&str> {
        self.devices
            .get(self.device_of(device))?
            .last()
            .map(|(_, u)| u.as_str())
    }

    /// The profile an event belongs to: by its user when it has one, else by
    /// its device and time; a never-linked device is its own profile (named
    /// by its smallest anonymous ID).
    pub fn profile_of_event(
        &self,
        anonymous_id: Option<&str>,
        user_id: Option<&str>,
        at: &str,
    ) -> Option<String> {
        if let Some(u) = user_id {
            return Some(user_profile_id(self.profile_of_user(u)));
        }
        let device = anonymous_id?;
        Some(match self.user_at(device, at) {
            Some(u) => user_profile_id(self.profile_of_user(u)),
            None => device_profile_id(self.device_of(device)),
        })
    }
}

/// The identity edges a backend stores, as resolution asks for them. Each
/// backend implements this over its own tables (SQLite today, PostgreSQL
/// next); [`resolve`] walks them the same way for all of them.
pub trait Edges {
    /// The backend's error.
    type Error;
    /// Whether `id` was seen as a user ID: in a link or an event as
    /// `userId`, on the user side of an alias, or only ever as an alias's
    /// `previousId` (a user ID joined to another).
    fn is_user(&self, id: &str) -> Result<bool, Self::Error>;
    /// The links of a device, an alias whose `previousId` is the device
    /// counting as one (Segment's `alias(userId, anonymousId)`).
    fn device_links(&self, device: &str) -> Result<Vec<Link>, Self::Error>;
    /// The aliases with `user` on either side.
    fn aliases_of(&self, user: &str) -> Result<Vec<Alias>, Self::Error>;
    /// The devices linked to `user`.
    fn devices_of(&self, user: &str) -> Result<Vec<String>, Self::Error>;
    /// The same-device edges with `device` on either side.
    fn same_devices(&self, device: &str) -> Result<Vec<SameDevice>, Self::Error>;
}

/// Most anonymous IDs one device may hold before the walk stops (a
/// browser whose storage is wiped daily makes one a day).
const MAX_DEVICE_IDS: usize = 1_000;

/// Who an identifier is.
#[derive(Debug, Clone)]
pub enum Identity {
    /// A person: a user's alias component and the devices linked to it.
    Person(Component),
    /// A device never linked to a user (it may also be unknown).
    Device(Device),
}

/// A device's anonymous IDs (one, unless the server cookie joined more)
/// and the edges that joined them.
#[derive(Debug, Clone)]
pub struct Device {
    /// The anonymous IDs, sorted: the first names the device.
    pub ids: Vec<String>,
    /// The same-device edges between them.
    pub edges: Vec<SameDevice>,
}

impl Device {
    /// The `profile_id` of the device as a profile of its own.
    pub fn profile_id(&self) -> String {
        device_profile_id(&self.ids[0])
    }
}

/// The device `id` is part of: the anonymous IDs same-device edges join
/// to it (at most [`MAX_DEVICE_IDS`]), with those edges.
pub fn device<E: Edges>(edges: &E, id: &str) -> Result<Device, E::Error> {
    let mut ids = vec![id.to_owned()];
    let mut found: Vec<SameDevice> = Vec::new();
    let mut i = 0;
    while i < ids.len() && ids.len() < MAX_DEVICE_IDS {
        let d = ids[i].clone();
        i += 1;
        for e in edges.same_devices(&d)? {
            for other in [&e.anonymous_id, &e.same_as] {
                if !ids.contains(other) {
                    ids.push(other.clone());
                }
            }
            if !found.contains(&e) {
                found.push(e);
            }
        }
    }
    ids.sort();
    found.sort();
    Ok(Device { ids, edges: found })
}

/// A person's identifiers and the edges between them.
#[derive(Debug, Clone)]
pub struct Component {
    /// The profile's ID (from its smallest user ID).
    pub profile_id: String,
    /// The user IDs, the one resolution started from first.
    pub users: Vec<String>,
    /// The anonymous IDs linked to them, and those of the same devices.
    pub devices: Vec<String>,
    /// Every link of those devices, other people's on shared devices
    /// included (they decide who an anonymous event belongs to).
    pub links: Vec<Link>,
    /// The aliases that join the users.
    pub aliases: Vec<Alias>,
    /// The same-device edges between the anonymous IDs.
    pub same_devices: Vec<SameDevice>,
    /// The graph built from them, for attributing events by time.
    pub graph: Graph,
}

impl Component {
    /// Whether an event of this component's identifiers is this person's:
    /// one with a user ID of theirs, or an anonymous-only one on their
    /// device that time attributes to them.
    pub fn owns(&self, anonymous_id: Option<&str>, user_id: Option<&str>, at: &str) -> bool {
        match user_id {
            Some(u) => self.users.iter().any(|x| x == u),
            None => {
                self.graph
                    .profile_of_event(anonymous_id, None, at)
                    .as_deref()
                    == Some(self.profile_id.as_str())
            }
        }
    }
}

/// Resolves `id` (a user ID or a device) to its identity: the user's alias
/// component (at most `max_users` user IDs are walked), or for a device,
/// the component of its most recent user, or the device alone.
pub fn resolve<E: Edges>(edges: &E, id: &str, max_users: usize) -> Result<Identity, E::Error> {
    let start_user = if edges.is_user(id)? {
        id.to_owned()
    } else {
        let device = device(edges, id)?;
        let mut links = Vec::new();
        for d in &device.ids {
            links.extend(edges.device_links(d)?);
        }
        let graph = Graph::build(&links, &[], &device.edges, &[]);
        match graph.latest_user(id) {
            Some(u) => u.to_owned(),
            None => return Ok(Identity::Device(device)),
        }
    };
    // The alias component of the user. An alias whose previousId is a
    // device (Segment's `alias(userId, anonymousId)`) links that device
    // instead of joining a user.
    let mut users = vec![start_user];
    let mut aliases: Vec<Alias> = Vec::new();
    let mut linked: Vec<String> = Vec::new();
    let mut i = 0;
    while i < users.len() && users.len() < max_users {
        let u = users[i].clone();
        i += 1;
        for a in edges.aliases_of(&u)? {
            if a.user_id == u && !edges.is_user(&a.previous_id)? {
                if !linked.contains(&a.previous_id) {
                    linked.push(a.previous_id.clone());
                }
                continue;
            }
            for other in [&a.previous_id, &a.user_id] {
                if !users.contains(other) {
                    users.push(other.clone());
                }
            }
            if !aliases.contains(&a) {
                aliases.push(a);
            }
        }
    }
    for u in &users {
        for d in edges.devices_of(u)? {
            if !linked.contains(&d) {
                linked.push(d);
            }
        }
    }
    // Each linked anonymous ID with the others of its device.
    let mut devices: Vec<String> = Vec::new();
    let mut same_devices: Vec<SameDevice> = Vec::new();
    for d in linked {
        if devices.contains(&d) {
            continue;
        }
        let device = device(edges, &d)?;
        for id in device.ids {
            if !devices.contains(&id) {
                devices.push(id);
            }
        }
        for e in device.edges {
            if !same_devices.contains(&e) {
                same_devices.push(e);
            }
        }
    }
    let mut links = Vec::new();
    for d in &devices {
        links.extend(edges.device_links(d)?);
    }
    let graph = Graph::build(&links, &aliases, &same_devices, &[]);
    let profile_id = user_profile_id(graph.profile_of_user(&users[0]));
    Ok(Identity::Person(Component {
        profile_id,
        users,
        devices,
        links,
        aliases,
        same_devices,
        graph,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(at: &str, anon: &str, user: &str) -> Link {
        Link {
            at: at.into(),
            anonymous_id: anon.into(),
            user_id: user.into(),
            message_id: format!("m-{anon}-{user}-{at}"),
        }
    }

    fn alias(at: &str, previous: &str, user: &str) -> Alias {
        Alias {
            at: at.into(),
            previous_id: previous.into(),
            user_id: user.into(),
            message_id: format!("a-{previous}-{user}"),
        }
    }

    #[test]
    fn a_profile_id_gives_back_the_identifier_it_was_made_from() {
        for id in ["u1", "anon:x", "user:y", ""] {
            assert_eq!(profile_identifier(&user_profile_id(id)), id);
            assert_eq!(profile_identifier(&device_profile_id(id)), id);
        }
    }

    #[test]
    fn junk_ids_are_recognised_case_insensitively() {
        for j in [
            "",
            " null ",
            "UNDEFINED",
            "0",
            "-1",
            "Guest",
            "[object Object]",
            "NaN",
            "None",
        ] {
            assert!(is_junk(j, &[]), "{j:?}");
        }
        assert!(is_junk("test-user", &["TEST-USER".into()]));
        for ok in ["alice", "00", "u-0", "guestbook"] {
            assert!(!is_junk(ok, &[]), "{ok:?}");
        }
    }

    #[test]
    fn shared_device_is_attributed_by_time_and_never_merges_people() {
        // Alice logs in at 10:00, Bob at 11:00, Alice again at 12:00.
        let g = Graph::build(
            &[
                link("2026-11-23T10:00:00.000Z", "d", "alice"),
                link("2026-11-23T11:00:00.000Z", "d", "bob"),
                link("2026-11-23T12:00:00.000Z", "d", "alice"),
            ],
            &[],
            &[],
            &[],
        );
        let at = |t: &str| g.profile_of_event(Some("d"), None, t);
        assert_eq!(
            at("2026-11-23T09:00:00.000Z").as_deref(),
            Some("user:alice"),
            "browsed, then logged in"
        );
        assert_eq!(at("2026-11-23T10:30:00.000Z").as_deref(), Some("user:bob"));
        assert_eq!(
            at("2026-11-23T11:00:00.000Z").as_deref(),
            Some("user:bob"),
            "at the login itself"
        );
        assert_eq!(
            at("2026-11-23T11:30:00.000Z").as_deref(),
            Some("user:alice")
        );
        assert_eq!(
            at("2026-11-23T13:00:00.000Z").as_deref(),
            Some("user:alice"),
            "after the last login"
        );
        assert_ne!(g.profile_of_user("alice"), g.profile_of_user("bob"));
        assert_eq!(g.latest_user("d"), Some("alice"));
    }

    #[test]
    fn aliases_join_users_and_the_profile_id_is_the_smallest() {
        let g = Graph::build(
            &[
                link("2026-11-23T10:00:00.000Z", "d1", "zed"),
                link("2026-11-23T10:00:00.000Z", "d2", "amy"),
            ],
            &[
                alias("2026-11-23T11:00:00.000Z", "zed", "mike"),
                alias("2026-11-23T11:00:00.000Z", "mike", "amy"),
            ],
            &[],
            &[],
        );
        for u in ["zed", "mike", "amy"] {
            assert_eq!(g.profile_of_user(u), "amy");
        }
        assert_eq!(
            g.profile_of_event(Some("d1"), None, "2026-11-23T09:00:00.000Z")
                .as_deref(),
            Some("user:amy")
        );
    }

    #[test]
    fn junk_links_do_not_link_and_unlinked_devices_are_their_own_profile() {
        let g = Graph::build(
            &[
                link("2026-11-23T10:00:00.000Z", "d", "null"),
                link("2026-11-23T10:00:00.000Z", "undefined", "bob"),
            ],
            &[alias("2026-11-23T10:00:00.000Z", "guest", "bob")],
            &[],
            &[],
        );
        assert_eq!(
            g.profile_of_event(Some("d"), None, "2026-11-23T11:00:00.000Z")
                .as_deref(),
            Some("anon:d")
        );
        assert_eq!(g.profile_of_user("bob"), "bob");
        assert_eq!(g.latest_user("undefined"), None);
    }

    #[test]
    fn order_of_links_does_not_matter() {
        let links = vec![
            link("2026-11-23T10:00:00.000Z", "d", "a"),
            link("2026-11-23T11:00:00.000Z", "d", "b"),
            link("2026-11-23T11:00:00.000Z", "e", "b"),
        ];
        let aliases = vec![alias("t", "b", "c"), alias("t", "c", "a2")];
        let g1 = Graph::build(&links, &aliases, &[], &[]);
        let mut rl = links.clone();
        rl.reverse();
        let mut ra = aliases.clone();
        ra.reverse();
        let g2 = Graph::build(&rl, &ra, &[], &[]);
        assert_eq!(g1.canonical, g2.canonical);
        assert_eq!(g1.devices, g2.devices);
    }

    fn same(at: &str, anon: &str, same_as: &str) -> SameDevice {
        SameDevice {
            at: at.into(),
            anonymous_id: anon.into(),
            same_as: same_as.into(),
            message_id: format!("s-{anon}-{same_as}"),
        }
    }

    #[test]
    fn anonymous_ids_of_one_device_share_its_links_and_its_profile() {
        // d1 logged in as alice; the storage was wiped, the cookie named d1
        // on d2's first message, later d3's; d2 and d3 never logged in.
        let links = [link("2026-11-23T10:00:00.000Z", "d1", "alice")];
        let same_devices = [
            same("2026-11-30T10:00:00.000Z", "d2", "d1"),
            same("2026-12-07T10:00:00.000Z", "d3", "d2"),
        ];
        let g = Graph::build(&links, &[], &same_devices, &[]);
        for d in ["d1", "d2", "d3"] {
            assert_eq!(g.device_of(d), "d1");
            assert_eq!(
                g.profile_of_event(Some(d), None, "2026-12-08T00:00:00.000Z")
                    .as_deref(),
                Some("user:alice"),
                "{d}"
            );
        }
        // Without a login, the device is one anonymous profile, named by
        // its smallest ID whatever the order of the edges.
        let mut reversed = same_devices.to_vec();
        reversed.reverse();
        for edges in [&same_devices[..], &reversed[..]] {
            let g = Graph::build(&[], &[], edges, &[]);
            for d in ["d3", "d2", "d1"] {
                assert_eq!(
                    g.profile_of_event(Some(d), None, "2026-12-08T00:00:00.000Z")
                        .as_deref(),
                    Some("anon:d1")
                );
            }
        }
        // A junk ID joins nothing.
        let g = Graph::build(&[], &[], &[same("t", "d9", "null")], &[]);
        assert_eq!(g.device_of("d9"), "d9");
    }

    /// The edges of a small graph, as a backend would answer them.
    #[derive(Default)]
    struct Table {
        links: Vec<Link>,
        same: Vec<SameDevice>,
    }

    impl Edges for Table {
        type Error = std::convert::Infallible;
        fn is_user(&self, id: &str) -> Result<bool, Self::Error> {
            Ok(self.links.iter().any(|l| l.user_id == id))
        }
        fn device_links(&self, device: &str) -> Result<Vec<Link>, Self::Error> {
            Ok(self
                .links
                .iter()
                .filter(|l| l.anonymous_id == device)
                .cloned()
                .collect())
        }
        fn aliases_of(&self, _: &str) -> Result<Vec<Alias>, Self::Error> {
            Ok(Vec::new())
        }
        fn devices_of(&self, user: &str) -> Result<Vec<String>, Self::Error> {
            Ok(self
                .links
                .iter()
                .filter(|l| l.user_id == user)
                .map(|l| l.anonymous_id.clone())
                .collect())
        }
        fn same_devices(&self, device: &str) -> Result<Vec<SameDevice>, Self::Error> {
            Ok(self
                .same
                .iter()
                .filter(|s| s.anonymous_id == device || s.same_as == device)
                .cloned()
                .collect())
        }
    }

    #[test]
    fn resolution_walks_same_device_edges_from_either_end() {
        let mut t = Table {
            links: Vec::new(),
            same: vec![same("2026-11-30T10:00:00.000Z", "d2", "d1")],
        };
        let Ok(Identity::Device(d)) = resolve(&t, "d2", 100) else {
            panic!("d2 is a device");
        };
        assert_eq!(d.ids, ["d1", "d2"]);
        assert_eq!(d.profile_id(), "anon:d1");
        assert_eq!(d.edges.len(), 1);
        // Once d1 logs in, both IDs resolve to the person, with both IDs.
        t.links
            .push(link("2026-12-01T10:00:00.000Z", "d1", "alice"));
        for id in ["d2", "alice"] {
            let Ok(Identity::Person(c)) = resolve(&t, id, 100) else {
                panic!("{id} is a person");
            };
            assert_eq!(c.profile_id, "user:alice");
            let mut devices = c.devices.clone();
            devices.sort();
            assert_eq!(devices, ["d1", "d2"]);
            assert_eq!(c.same_devices.len(), 1);
            assert!(c.owns(Some("d2"), None, "2026-11-30T10:00:00.000Z"));
        }
    }
}
