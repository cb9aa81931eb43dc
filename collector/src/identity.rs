//! Identity resolution: which person each identifier and each event belongs
//! to (DESIGN.md §6), as pure functions over the links seen so far.
//!
//! - A *link* ties a device (`anonymousId`) to a login (`userId`) at a time:
//!   every message that carries both makes one.
//! - An *alias* joins two user IDs (`previousId` -> `userId`).
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
    format!("user:{canonical_user}")
}

/// The `profile_id` of a device never linked to a user.
pub fn device_profile_id(anonymous_id: &str) -> String {
    format!("anon:{anonymous_id}")
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

/// The resolved identity graph.
#[derive(Debug, Default, Clone)]
pub struct Graph {
    /// user ID -> the profile's canonical user ID (the smallest).
    canonical: BTreeMap<String, String>,
    /// device -> its links, in time order (ties broken by user ID).
    devices: BTreeMap<String, Vec<(String, String)>>,
}

impl Graph {
    /// Resolves links and aliases. Junk identifiers are ignored.
    pub fn build(links: &[Link], aliases: &[Alias], junk: &[String]) -> Graph {
        let mut users: BTreeSet<&str> = BTreeSet::new();
        let mut devices: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for l in links {
            if is_junk(&l.anonymous_id, junk) || is_junk(&l.user_id, junk) {
                continue;
            }
            users.insert(&l.user_id);
            devices
                .entry(l.anonymous_id.clone())
                .or_default()
                .push((l.at.clone(), l.user_id.clone()));
        }
        for links in devices.values_mut() {
            links.sort();
            links.dedup();
        }
        // Union-find over user IDs joined by aliases; the root of each set
        // is its smallest ID, so the result does not depend on order.
        let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
        fn find<'a>(parent: &mut BTreeMap<&'a str, &'a str>, x: &'a str) -> &'a str {
            let mut root = x;
            while let Some(&p) = parent.get(root) {
                if p == root {
                    break;
                }
                root = p;
            }
            // Path compression.
            let mut cur = x;
            while let Some(&p) = parent.get(cur) {
                if p == root {
                    break;
                }
                parent.insert(cur, root);
                cur = p;
            }
            root
        }
        for u in &users {
            parent.insert(u, u);
        }
        for a in aliases {
            if is_junk(&a.previous_id, junk) || is_junk(&a.user_id, junk) {
                continue;
            }
            for id in [a.previous_id.as_str(), a.user_id.as_str()] {
                parent.entry(id).or_insert(id);
            }
            let (ra, rb) = (
                find(&mut parent, &a.previous_id),
                find(&mut parent, &a.user_id),
            );
            if ra != rb {
                let (small, large) = if ra < rb { (ra, rb) } else { (rb, ra) };
                parent.insert(large, small);
            }
        }
        let ids: Vec<&str> = parent.keys().copied().collect();
        let canonical = ids
            .into_iter()
            .map(|u| (u.to_owned(), find(&mut parent, u).to_owned()))
            .collect();
        Graph { canonical, devices }
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
        let links = self.devices.get(device)?;
        let i = links.partition_point(|(t, _)| t.as_str() < at);
        links
            .get(i)
            .or_else(|| links.last())
            .map(|(_, u)| u.as_str())
    }

    /// The most recent user of a device (the profile a lookup by this
    /// anonymousId answers).
    pub fn latest_user(&self, device: &str) -> Option<&str> {
        self.devices.get(device)?.last().map(|(_, u)| u.as_str())
    }

    /// The profile an event belongs to: by its user when it has one, else by
    /// its device and time; a never-linked device is its own profile.
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
            None => device_profile_id(device),
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
}

/// Who an identifier is.
#[derive(Debug, Clone)]
pub enum Identity {
    /// A person: a user's alias component and the devices linked to it.
    Person(Component),
    /// A device never linked to a user (it may also be unknown).
    Device(String),
}

/// A person's identifiers and the edges between them.
#[derive(Debug, Clone)]
pub struct Component {
    /// The profile's ID (from its smallest user ID).
    pub profile_id: String,
    /// The user IDs, the one resolution started from first.
    pub users: Vec<String>,
    /// The devices linked to them.
    pub devices: Vec<String>,
    /// Every link of those devices, other people's on shared devices
    /// included (they decide who an anonymous event belongs to).
    pub links: Vec<Link>,
    /// The aliases that join the users.
    pub aliases: Vec<Alias>,
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
        let graph = Graph::build(&edges.device_links(id)?, &[], &[]);
        match graph.latest_user(id) {
            Some(u) => u.to_owned(),
            None => return Ok(Identity::Device(id.to_owned())),
        }
    };
    // The alias component of the user. An alias whose previousId is a
    // device (Segment's `alias(userId, anonymousId)`) links that device
    // instead of joining a user.
    let mut users = vec![start_user];
    let mut aliases: Vec<Alias> = Vec::new();
    let mut devices: Vec<String> = Vec::new();
    let mut i = 0;
    while i < users.len() && users.len() < max_users {
        let u = users[i].clone();
        i += 1;
        for a in edges.aliases_of(&u)? {
            if a.user_id == u && !edges.is_user(&a.previous_id)? {
                if !devices.contains(&a.previous_id) {
                    devices.push(a.previous_id.clone());
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
            if !devices.contains(&d) {
                devices.push(d);
            }
        }
    }
    let mut links = Vec::new();
    for d in &devices {
        links.extend(edges.device_links(d)?);
    }
    let graph = Graph::build(&links, &aliases, &[]);
    let profile_id = user_profile_id(graph.profile_of_user(&users[0]));
    Ok(Identity::Person(Component {
        profile_id,
        users,
        devices,
        links,
        aliases,
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
        let g1 = Graph::build(&links, &aliases, &[]);
        let mut rl = links.clone();
        rl.reverse();
        let mut ra = aliases.clone();
        ra.reverse();
        let g2 = Graph::build(&rl, &ra, &[]);
        assert_eq!(g1.canonical, g2.canonical);
        assert_eq!(g1.devices, g2.devices);
    }
}
