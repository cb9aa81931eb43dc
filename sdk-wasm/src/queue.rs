//! The queue of messages waiting to be sent, and the batch bodies made
//! of them.
//!
//! A message is kept encoded (JSON text, without its `context`) beside the
//! [`Part`]s its context is made of: the page's members, the library's,
//! the session's and consent's. Messages made on one page share the same
//! parts (one allocation each), so a batch puts the parts every message of
//! it has once, in the batch-level `context` that the collector merges
//! into each message (the message's own members winning: DESIGN.md §4),
//! and only the others in each message. The queue is bounded in bytes;
//! when a push would exceed the cap the oldest messages are dropped and
//! counted.
//!
//! Persistence format, one line each (encoded JSON never contains a raw
//! newline or tab: the writer and `JSON.stringify` escape them): a part is
//! a tab and its text; a message is its JSON text, then a tab and the
//! numbers of its parts in the order they were written (`0,1,2`). A line
//! of JSON alone is a message with its context inside (an older queue).

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use weft_protocol::json::{cut, parse_u64, push_escaped, push_u64};

/// A piece of a message's `context`: one or more members as JSON text
/// without braces (`"locale":"de-DE","screen":{..}`), never empty.
pub type Part = Arc<String>;

/// What a part costs in the queue's byte count: it is shared.
const PART_COST: usize = 8;

/// A queued message.
#[derive(Debug, Clone)]
pub struct Item {
    /// The message as a JSON object, without `context` unless it came
    /// from an older queue.
    pub body: String,
    /// The members of its `context`.
    pub parts: Vec<Part>,
}

impl Item {
    /// The bytes it counts for against the queue's cap.
    fn cost(&self) -> usize {
        self.body.len() + PART_COST * self.parts.len()
    }

    /// Its size on the wire with its whole context, at most.
    pub fn wire_len(&self) -> usize {
        let context = self.parts.iter().map(|p| p.len() + 1).sum::<usize>();
        self.body.len() + if context > 0 { context + 12 } else { 0 }
    }

    fn has(&self, part: &Part) -> bool {
        self.parts.iter().any(|p| same(p, part))
    }
}

fn same(a: &Part, b: &Part) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

/// A bounded FIFO of encoded messages.
#[derive(Debug, Default)]
pub struct Queue {
    /// Oldest first; the first `in_flight` are in the request in flight.
    items: Vec<Item>,
    bytes: usize,
    cap_bytes: usize,
    /// How many items at the front are in a request that has not answered.
    in_flight: usize,
    /// Messages dropped because the queue was full.
    pub dropped: u32,
}

impl Queue {
    /// An empty queue holding at most `cap_bytes` of messages.
    pub fn new(cap_bytes: usize) -> Self {
        Queue {
            cap_bytes,
            ..Default::default()
        }
    }

    /// Number of queued messages, in flight or not.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// `true` while a request carries some of the messages.
    pub fn in_flight(&self) -> bool {
        self.in_flight > 0
    }

    /// `true` when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Appends a message, dropping the oldest messages that are not in
    /// flight until it fits. A message larger than the whole cap is dropped.
    pub fn push(&mut self, item: Item) {
        let cost = item.cost();
        if cost > self.cap_bytes {
            self.dropped += 1;
            return;
        }
        let mut over = (self.bytes + cost).saturating_sub(self.cap_bytes);
        if over > 0 {
            let in_flight = self.in_flight;
            self.dropped += self.remove_where(&mut |index, old| {
                let drop = index >= in_flight && over > 0;
                if drop {
                    over = over.saturating_sub(old.cost());
                }
                drop
            });
        }
        self.bytes += cost;
        self.items.push(item);
    }

    /// Marks up to `max_count` messages, at most `max_bytes` on the wire in
    /// all, as in flight and returns them; empty if a request is already in
    /// flight or nothing is queued. At least one message is taken when any
    /// is queued.
    pub fn take_batch(&mut self, max_count: usize, max_bytes: usize) -> &[Item] {
        if self.in_flight > 0 {
            return &[];
        }
        let n = fitting(self.items.iter().take(max_count), max_bytes, true);
        self.in_flight = n;
        self.items.get(..n).unwrap_or_default()
    }

    /// The messages not in flight, at most `max_bytes` on the wire in all
    /// (oldest first, stopping at the first that does not fit), for a last
    /// request as the page goes away. Nothing changes until
    /// [`Queue::drop_unsent`].
    pub fn peek_unsent(&self, max_bytes: usize) -> &[Item] {
        let rest = self.items.get(self.in_flight..).unwrap_or_default();
        let n = fitting(rest.iter(), max_bytes, false);
        rest.get(..n).unwrap_or_default()
    }

    /// Forgets the first `n` messages after those in flight (sent by
    /// [`Queue::peek_unsent`]'s caller).
    pub fn drop_unsent(&mut self, n: usize) {
        let start = self.in_flight;
        self.remove_where(&mut |index, _| index >= start && index < start + n);
    }

    /// The request in flight was accepted: forget its messages.
    pub fn ack(&mut self) {
        let in_flight = self.in_flight;
        self.remove_where(&mut |index, _| index < in_flight);
        self.in_flight = 0;
    }

    /// Removes the messages for which `gone(index, message)` says so, in
    /// order; returns how many. One body for every caller (a `dyn`
    /// closure): the wasm holds it once.
    fn remove_where(&mut self, gone: &mut dyn FnMut(usize, &Item) -> bool) -> u32 {
        let mut index = 0;
        let mut removed = 0;
        let bytes = &mut self.bytes;
        self.items.retain(|item| {
            let remove = gone(index, item);
            index += 1;
            if remove {
                *bytes -= item.cost();
                removed += 1;
            }
            !remove
        });
        removed
    }

    /// The request in flight failed: its messages are sent again later,
    /// first and with the same messageIds.
    pub fn nack(&mut self) {
        self.in_flight = 0;
    }

    /// Removes everything, in flight or not.
    pub fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
        self.in_flight = 0;
    }

    /// The persistence form (see the module docs).
    pub fn serialize(&self) -> String {
        let mut table: Vec<&Part> = Vec::new();
        let mut out = String::with_capacity(self.bytes + 8 * self.items.len());
        for item in &self.items {
            let mut refs = String::new();
            for part in &item.parts {
                let index = match table.iter().position(|t| Arc::ptr_eq(t, part)) {
                    Some(i) => i,
                    None => {
                        out.push_str("\t");
                        out.push_str(part);
                        out.push_str("\n");
                        table.push(part);
                        table.len() - 1
                    }
                };
                refs.push_str(if refs.is_empty() { "\t" } else { "," });
                push_u64(&mut refs, index as u64);
            }
            out.push_str(&item.body);
            out.push_str(&refs);
            out.push_str("\n");
        }
        out
    }

    /// Restores messages from [`Queue::serialize`] output, within the cap.
    pub fn restore(&mut self, text: &str) {
        let mut table: Vec<Part> = Vec::new();
        let mut rest = text;
        // Each turn takes at least one byte off `rest`.
        while !rest.is_empty() {
            let (line, more) = cut(rest, b'\n').unwrap_or((rest, ""));
            rest = more;
            match cut(line, b'\t') {
                _ if line.is_empty() => {}
                Some(("", part)) => table.push(Arc::new(part.to_owned())),
                split => {
                    let (body, mut refs) = split.unwrap_or((line, ""));
                    let mut parts = Vec::new();
                    while !refs.is_empty() {
                        let (r, more) = cut(refs, b',').unwrap_or((refs, ""));
                        refs = more;
                        if let Some(part) = parse_u64(r).and_then(|n| table.get(n as usize)) {
                            parts.push(part.clone());
                        }
                    }
                    self.push(Item {
                        body: body.to_owned(),
                        parts,
                    });
                }
            }
        }
    }
}

/// How many of `items` fit in `max_bytes` on the wire (`at_least_one`: the
/// first even if it does not).
fn fitting<'a>(
    items: impl Iterator<Item = &'a Item>,
    max_bytes: usize,
    at_least_one: bool,
) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for item in items {
        bytes += item.wire_len();
        if bytes > max_bytes && !(at_least_one && n == 0) {
            break;
        }
        n += 1;
    }
    n
}

/// The body of `POST /v1/batch` for `items`: the parts every message has
/// go once in the batch-level `context`, with `extra` (members of the
/// batch's own, such as the time zone); each message carries the others
/// in its own `context`. The collector merges the two (the message's own
/// members winning), so what it stores is each message with its whole
/// context. A batch holding a message of an older queue, whose context is
/// inside its text, shares no parts.
pub fn write_batch(items: &[Item], extra: &str, sent_at: &str, write_key: &str) -> String {
    // A part is shared when every message has it (so none is when a
    // message of an older queue, without parts, is in the batch).
    let shared = |part: &Part| items.iter().all(|i| i.has(part));
    let mut out =
        String::with_capacity(items.iter().map(Item::wire_len).sum::<usize>() + extra.len() + 128);
    out.push_str("{\"batch\":[");
    let mut sep = "";
    for item in items {
        out.push_str(sep);
        sep = ",";
        match item.body.strip_suffix("}") {
            Some(head) => {
                out.push_str(head);
                let mut open = ",\"context\":{";
                for part in item.parts.iter().filter(|p| !shared(p)) {
                    out.push_str(open);
                    out.push_str(part);
                    open = ",";
                }
                if open == "," {
                    out.push_str("}");
                }
                out.push_str("}");
            }
            None => out.push_str(&item.body),
        }
    }
    out.push_str("]");
    let mut open = ",\"context\":{";
    let first = items.first().map_or(&[][..], |i| &i.parts[..]);
    for member in first
        .iter()
        .filter(|p| shared(p))
        .map(|p| p.as_str())
        .chain(Some(extra))
        .filter(|m| !m.is_empty())
    {
        out.push_str(open);
        out.push_str(member);
        open = ",";
    }
    if open == "," {
        out.push_str("}");
    }
    out.push_str(",\"sentAt\":");
    push_escaped(&mut out, sent_at);
    out.push_str(",\"writeKey\":");
    push_escaped(&mut out, write_key);
    out.push_str("}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(body: &str) -> Item {
        Item {
            body: body.to_owned(),
            parts: Vec::new(),
        }
    }

    fn bodies(items: &[Item]) -> Vec<&str> {
        items.iter().map(|i| i.body.as_str()).collect()
    }

    fn queue_of(cap: usize, items: &[&str]) -> Queue {
        let mut q = Queue::new(cap);
        for i in items {
            q.push(item(i));
        }
        q
    }

    #[test]
    fn batches_respect_count_and_bytes() {
        let mut q = queue_of(1000, &["aaaa", "bbbb", "cccc", "dddd"]);
        assert_eq!(bodies(q.take_batch(3, 1000)), ["aaaa", "bbbb", "cccc"]);
        q.ack();
        assert_eq!(bodies(q.take_batch(3, 1000)), ["dddd"]);
        q.ack();
        assert!(bodies(q.take_batch(3, 1000)).is_empty());

        let mut q = queue_of(1000, &["aaaa", "bbbb", "cccc"]);
        assert_eq!(bodies(q.take_batch(10, 9)), ["aaaa", "bbbb"]);
        q.nack();
        // An oversize first message still goes out alone.
        assert_eq!(bodies(q.take_batch(10, 2)), ["aaaa"]);
    }

    #[test]
    fn only_one_batch_in_flight_and_failures_resend_in_order() {
        let mut q = queue_of(1000, &["a", "b"]);
        assert_eq!(bodies(q.take_batch(1, 100)), ["a"]);
        assert!(bodies(q.take_batch(1, 100)).is_empty());
        q.nack();
        assert_eq!(bodies(q.take_batch(5, 100)), ["a", "b"]);
        q.push(item("c"));
        q.ack();
        assert_eq!(bodies(q.take_batch(5, 100)), ["c"]);
    }

    #[test]
    fn full_queue_drops_oldest_but_never_in_flight() {
        let mut q = queue_of(8, &["aaa", "bbb"]);
        assert_eq!(bodies(q.take_batch(1, 100)), ["aaa"]);
        q.push(item("ccc"));
        assert_eq!(q.dropped, 1, "bbb was the oldest not in flight");
        q.ack();
        assert_eq!(bodies(q.take_batch(5, 100)), ["ccc"]);
        q.push(item("way too large"));
        assert_eq!(q.dropped, 2);
    }

    #[test]
    fn a_large_push_drops_as_many_of_the_oldest_as_it_needs() {
        let mut q = queue_of(10, &["aaa", "bbb", "ccc"]);
        assert_eq!(bodies(q.take_batch(1, 100)), ["aaa"]);
        q.push(item("dddddd"));
        assert_eq!(q.dropped, 2, "bbb and ccc, never aaa in flight");
        assert_eq!(q.serialize(), "aaa\ndddddd\n");
        q.ack();
        assert_eq!(q.len(), 1);
        q.push(item("eeee"));
        assert_eq!(q.dropped, 2, "6 + 4 bytes fit in 10");
        assert_eq!(bodies(q.take_batch(5, 100)), ["dddddd", "eeee"]);
    }

    #[test]
    fn the_last_request_takes_what_is_not_in_flight() {
        let mut q = queue_of(1000, &["aa", "bb", "cc", "dd"]);
        assert_eq!(bodies(q.take_batch(1, 100)), ["aa"]);
        assert_eq!(bodies(q.peek_unsent(4)), ["bb", "cc"]);
        assert_eq!(bodies(q.peek_unsent(5)), ["bb", "cc"]);
        assert_eq!(bodies(q.peek_unsent(1)), Vec::<&str>::new());
        q.drop_unsent(2);
        assert_eq!(q.serialize(), "aa\ndd\n");
        q.ack();
        assert_eq!(bodies(q.take_batch(5, 100)), ["dd"]);
        q.ack();
        assert!(q.is_empty());
        assert_eq!(q.bytes, 0);
    }

    fn with_parts(body: &str, parts: &[&Part]) -> Item {
        Item {
            body: body.to_owned(),
            parts: parts.iter().map(|p| Arc::clone(p)).collect(),
        }
    }

    #[test]
    fn parts_are_stored_once_and_shared_again_after_a_reload() {
        let page: Part = Arc::new(r#""page":{"path":"/"}"#.into());
        let lib: Part = Arc::new(r#""library":{"name":"weft.js"}"#.into());
        let mut q = Queue::new(1000);
        q.push(with_parts(r#"{"n":1}"#, &[&page, &lib]));
        q.push(with_parts(r#"{"n":2}"#, &[&page, &lib]));
        q.push(item(r#"{"n":3,"context":{"old":true}}"#));
        let text = q.serialize();
        assert_eq!(
            text,
            "\t\"page\":{\"path\":\"/\"}\n\t\"library\":{\"name\":\"weft.js\"}\n\
             {\"n\":1}\t0,1\n{\"n\":2}\t0,1\n{\"n\":3,\"context\":{\"old\":true}}\n"
        );
        let mut back = Queue::new(1000);
        back.restore(&text);
        assert_eq!(back.serialize(), text);
        let restored = back.take_batch(2, 1000);
        assert!(Arc::ptr_eq(&restored[0].parts[0], &restored[1].parts[0]));
        // An older queue's line: the whole message, context inside.
        let mut old = Queue::new(1000);
        old.restore("{\"n\":1,\"context\":{\"a\":1}}\n{\"n\":2}");
        assert_eq!(
            bodies(old.take_batch(5, 1000)),
            [r#"{"n":1,"context":{"a":1}}"#, r#"{"n":2}"#]
        );
    }

    #[test]
    fn a_batch_shares_the_parts_every_message_has() {
        let page: Part = Arc::new(r#""page":{"path":"/"}"#.into());
        let other: Part = Arc::new(r#""page":{"path":"/b"}"#.into());
        let lib: Part = Arc::new(r#""library":{"name":"weft.js"}"#.into());
        // Equal text counts as the same part (one restored, one new).
        let lib_again: Part = Arc::new((*lib).clone());
        let items = [
            with_parts(r#"{"n":1}"#, &[&page, &lib]),
            with_parts(r#"{"n":2}"#, &[&other, &lib_again]),
        ];
        assert_eq!(
            write_batch(&items, r#""timezone":"UTC""#, "T", "wk"),
            r#"{"batch":[{"n":1,"context":{"page":{"path":"/"}}},{"n":2,"context":{"page":{"path":"/b"}}}],"context":{"library":{"name":"weft.js"},"timezone":"UTC"},"sentAt":"T","writeKey":"wk"}"#
        );
        // A message from an older queue: nothing is shared.
        let mixed = [items[0].clone(), item(r#"{"n":3,"context":{"a":1}}"#)];
        assert_eq!(
            write_batch(&mixed, "", "T", "wk"),
            r#"{"batch":[{"n":1,"context":{"page":{"path":"/"},"library":{"name":"weft.js"}}},{"n":3,"context":{"a":1}}],"sentAt":"T","writeKey":"wk"}"#
        );
    }

    #[test]
    fn persistence_round_trips() {
        let q = queue_of(1000, &[r#"{"a":"x\ny"}"#, r#"{"b":1}"#]);
        let mut back = Queue::new(1000);
        back.restore(&q.serialize());
        assert_eq!(back.serialize(), q.serialize());
        assert_eq!(back.len(), 2);
        let mut empty = Queue::new(10);
        empty.restore("");
        assert!(empty.is_empty());
    }
}
