//! The tracker: turns calls into messages, keeps identity and the queue, and
//! decides what to send.
//!
//! It does no I/O of its own beyond the [`Env`] seams: the browser module
//! asks it for the next batch body, sends it, and reports the outcome with
//! [`Tracker::delivered`]. That keeps delivery logic testable natively.

use weft_protocol::json::Writer;
use weft_protocol::message::write_batch;
use weft_protocol::{Context, Json, LibraryContext, Message, MessageType};

use crate::env::Env;
use crate::ids::uuid_v4;
use crate::queue::Queue;

/// Storage keys. Prefixed so they never collide with the site's own.
pub mod keys {
    /// The anonymous (device) identifier.
    pub const ANONYMOUS_ID: &str = "weft.aid";
    /// The identified user's ID.
    pub const USER_ID: &str = "weft.uid";
    /// The persisted queue.
    pub const QUEUE: &str = "weft.queue";
}

/// Settings read from the script tag.
#[derive(Debug, Clone)]
pub struct Config {
    /// The source's write key.
    pub write_key: String,
    /// Messages per batch.
    pub batch_count: usize,
    /// Bytes per batch body.
    pub batch_bytes: usize,
    /// Cap of the queue, in bytes of encoded messages.
    pub queue_bytes: usize,
}

impl Config {
    /// Defaults for a write key: 20 messages, bodies under the keepalive
    /// budget, a 256 KB queue.
    pub fn new(write_key: String) -> Self {
        Config {
            write_key,
            batch_count: 20,
            batch_bytes: weft_protocol::limits::KEEPALIVE_BUDGET_BYTES - 1024,
            queue_bytes: 256 * 1024,
        }
    }
}

/// A call from the page, before the tracker adds identity and timing.
#[derive(Debug, Clone, Default)]
pub struct Call {
    /// `track`: the event name; `page`: the page name.
    pub name: Option<String>,
    /// `track`/`page` properties or `identify` traits, as JSON text.
    pub data: Option<Json>,
}

/// What a click auto-capture records of the element: never an input's value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClickedElement {
    /// Lowercase tag name.
    pub tag: String,
    /// The `id` attribute.
    pub id: Option<String>,
    /// The `class` attribute.
    pub classes: Option<String>,
    /// The `href` attribute (links).
    pub href: Option<String>,
    /// The element's text; trimmed and shortened when encoded.
    pub text: String,
}

/// Longest element text recorded, in characters.
pub const MAX_CLICK_TEXT_CHARS: usize = 64;

impl ClickedElement {
    /// The `properties` of the `Element Clicked` event.
    pub fn to_properties(&self) -> Json {
        let mut w = Writer::new();
        w.object_start();
        w.opt_string("tag", Some(&self.tag));
        w.opt_string("id", self.id.as_deref());
        w.opt_string("classes", self.classes.as_deref());
        w.opt_string("href", self.href.as_deref());
        let text = short_text(&self.text);
        w.opt_string(
            "text",
            Some(&text).filter(|t| !t.is_empty()).map(|t| t.as_str()),
        );
        w.object_end();
        Json::from_trusted(w.finish())
    }
}

/// Collapses white space and keeps at most [`MAX_CLICK_TEXT_CHARS`]
/// characters.
pub fn short_text(text: &str) -> String {
    // Built char by char rather than cut with a slice: no slicing, so no
    // panic path (and its formatting code) in the shipped wasm.
    let mut out = String::new();
    let mut chars = 0;
    for word in text.split_ascii_whitespace() {
        if chars > 0 {
            if chars == MAX_CLICK_TEXT_CHARS {
                break;
            }
            out.push(' ');
            chars += 1;
        }
        for c in word.chars() {
            if chars == MAX_CLICK_TEXT_CHARS {
                return out;
            }
            out.push(c);
            chars += 1;
        }
    }
    out
}

/// The SDK's state for one page.
pub struct Tracker<E: Env> {
    env: E,
    config: Config,
    anonymous_id: String,
    user_id: Option<String>,
    queue: Queue,
}

impl<E: Env> Tracker<E> {
    /// Starts a tracker: reads or creates the anonymous ID and restores the
    /// persisted queue.
    pub fn new(env: E, config: Config) -> Self {
        let anonymous_id = match env.get(keys::ANONYMOUS_ID) {
            Some(id) if !id.is_empty() => id,
            _ => {
                let id = uuid_v4(&env);
                env.set(keys::ANONYMOUS_ID, &id);
                id
            }
        };
        let user_id = env.get(keys::USER_ID).filter(|u| !u.is_empty());
        let mut queue = Queue::new(config.queue_bytes);
        if let Some(saved) = env.get(keys::QUEUE) {
            queue.restore(&saved);
        }
        Tracker {
            env,
            config,
            anonymous_id,
            user_id,
            queue,
        }
    }

    /// The host environment.
    pub fn env(&self) -> &E {
        &self.env
    }

    /// The anonymous ID of this browser.
    pub fn anonymous_id(&self) -> &str {
        &self.anonymous_id
    }

    /// The identified user, if any.
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }

    /// Number of messages waiting.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Records a page view.
    pub fn page(&mut self, call: Call, context: Context) {
        let mut m = Message::new(MessageType::Page);
        m.name = call.name;
        m.properties = call.data;
        self.enqueue(m, context);
    }

    /// Records a named event.
    pub fn track(&mut self, event: String, properties: Option<Json>, context: Context) {
        let mut m = Message::new(MessageType::Track);
        m.event = Some(event);
        m.properties = properties;
        self.enqueue(m, context);
    }

    /// Ties this browser to `user_id` and remembers it for later messages.
    pub fn identify(&mut self, user_id: String, traits: Option<Json>, context: Context) {
        self.env.set(keys::USER_ID, &user_id);
        self.user_id = Some(user_id);
        let mut m = Message::new(MessageType::Identify);
        m.traits = traits;
        self.enqueue(m, context);
    }

    /// Records an auto-captured click.
    pub fn click(&mut self, element: &ClickedElement, context: Context) {
        self.track(
            "Element Clicked".into(),
            Some(element.to_properties()),
            context,
        );
    }

    fn enqueue(&mut self, mut m: Message, mut context: Context) {
        m.message_id = Some(uuid_v4(&self.env));
        m.anonymous_id = Some(self.anonymous_id.clone());
        m.user_id = self.user_id.clone();
        m.timestamp = Some(self.env.now_iso());
        context.library = Some(LibraryContext {
            name: crate::LIBRARY_NAME.into(),
            version: crate::LIBRARY_VERSION.into(),
        });
        m.context = Some(context.to_json());
        self.queue.push(m.to_json());
        self.persist();
    }

    /// `true` when a full batch is waiting and should go now rather than at
    /// the next interval.
    pub fn batch_ready(&self) -> bool {
        self.queue.len() >= self.config.batch_count
    }

    /// The body of the next request, or `None` when nothing is queued or a
    /// request is already in flight. The caller must answer with
    /// [`Tracker::delivered`].
    pub fn next_batch(&mut self) -> Option<String> {
        let sent_at = self.env.now_iso();
        let messages = self
            .queue
            .take_batch(self.config.batch_count, self.config.batch_bytes);
        if messages.is_empty() {
            return None;
        }
        Some(write_batch(messages, &sent_at, &self.config.write_key))
    }

    /// The outcome of the request from [`Tracker::next_batch`]: `true` when
    /// the collector accepted it, `false` to send it again later.
    pub fn delivered(&mut self, ok: bool) {
        if ok {
            self.queue.ack();
            self.persist();
        } else {
            self.queue.nack();
        }
    }

    fn persist(&self) {
        if self.queue.is_empty() {
            self.env.remove(keys::QUEUE);
        } else {
            self.env.set(keys::QUEUE, &self.queue.serialize());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{Clock, Random, Storage};
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;
    use std::rc::Rc;

    /// An in-memory host: shared storage (so a second tracker sees what the
    /// first stored, like a reload), a fixed clock and counting randomness.
    #[derive(Clone, Default)]
    struct FakeEnv {
        storage: Rc<RefCell<HashMap<String, String>>>,
        counter: Rc<Cell<u8>>,
    }

    impl Storage for FakeEnv {
        fn get(&self, key: &str) -> Option<String> {
            self.storage.borrow().get(key).cloned()
        }
        fn set(&self, key: &str, value: &str) {
            self.storage.borrow_mut().insert(key.into(), value.into());
        }
        fn remove(&self, key: &str) {
            self.storage.borrow_mut().remove(key);
        }
    }
    impl Clock for FakeEnv {
        fn now_iso(&self) -> String {
            "2026-11-23T10:00:00.000Z".into()
        }
    }
    impl Random for FakeEnv {
        fn fill(&self, buf: &mut [u8]) {
            self.counter.set(self.counter.get() + 1);
            buf.fill(self.counter.get());
        }
    }

    fn body_messages(body: &str) -> Vec<Message> {
        let batch: weft_protocol::Batch = serde_json::from_str(body).expect("batch parses");
        assert_eq!(batch.write_key.as_deref(), Some("wk_test"));
        assert!(batch.sent_at.is_some());
        batch.batch
    }

    fn tracker(env: &FakeEnv) -> Tracker<FakeEnv> {
        Tracker::new(env.clone(), Config::new("wk_test".into()))
    }

    #[test]
    fn anonymous_id_is_created_once_and_survives_a_reload() {
        let env = FakeEnv::default();
        let first = tracker(&env).anonymous_id().to_owned();
        assert_eq!(first.len(), 36);
        assert_eq!(tracker(&env).anonymous_id(), first);
    }

    #[test]
    fn messages_carry_identity_timing_and_context() {
        let env = FakeEnv::default();
        let mut t = tracker(&env);
        t.page(Call::default(), Context::default());
        t.identify(
            "user-1".into(),
            Some(Json::from_trusted(r#"{"plan":"pro"}"#)),
            Context::default(),
        );
        t.track("Bought".into(), None, Context::default());
        let msgs = body_messages(&t.next_batch().unwrap());
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[0].kind, MessageType::Page);
        assert_eq!(msgs[0].user_id, None);
        assert_eq!(msgs[1].kind, MessageType::Identify);
        assert_eq!(
            msgs[1].traits.as_ref().unwrap().as_str(),
            r#"{"plan":"pro"}"#
        );
        assert_eq!(msgs[2].event.as_deref(), Some("Bought"));
        for m in &msgs {
            assert_eq!(m.anonymous_id.as_deref(), Some(t.anonymous_id()));
            assert!(m.message_id.is_some());
            assert!(m.context.as_ref().unwrap().as_str().contains("weft.js"));
        }
        assert_eq!(msgs[2].user_id.as_deref(), Some("user-1"));
        // Distinct message IDs.
        assert_ne!(msgs[0].message_id, msgs[1].message_id);
    }

    #[test]
    fn failed_delivery_resends_the_same_messages_and_queue_survives_reload() {
        let env = FakeEnv::default();
        let mut t = tracker(&env);
        t.track("A".into(), None, Context::default());
        let first = body_messages(&t.next_batch().unwrap());
        assert!(t.next_batch().is_none(), "one request in flight at a time");
        t.delivered(false);

        // A reload before the retry: the queue comes back from storage.
        let mut t2 = tracker(&env);
        let again = body_messages(&t2.next_batch().unwrap());
        assert_eq!(first, again, "same messageIds on retry");
        t2.delivered(true);
        assert_eq!(t2.queued(), 0);
        assert!(env.get(keys::QUEUE).is_none());
    }

    #[test]
    fn click_properties_are_short_and_never_empty_keys() {
        let el = ClickedElement {
            tag: "button".into(),
            id: Some("buy".into()),
            classes: None,
            href: None,
            text: "  Buy\n   now  ".into(),
        };
        let v: serde_json::Value = serde_json::from_str(el.to_properties().as_str()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"tag":"button","id":"buy","text":"Buy now"})
        );

        assert_eq!(
            short_text(&"é".repeat(100)).chars().count(),
            MAX_CLICK_TEXT_CHARS
        );
        assert_eq!(short_text("   "), "");
    }

    #[test]
    fn short_text_is_the_collapsed_text_cut_at_the_limit() {
        // The definition, with the slicing the shipped code avoids.
        fn by_slicing(text: &str) -> String {
            let joined = text.split_ascii_whitespace().collect::<Vec<_>>().join(" ");
            match joined.char_indices().nth(MAX_CLICK_TEXT_CHARS) {
                Some((cut, _)) => joined[..cut].to_owned(),
                None => joined,
            }
        }
        let mut inputs = vec![
            String::new(),
            " \t\n ".into(),
            "one".into(),
            "  a  b\tc\nd  ".into(),
        ];
        // Words ending just before, at and after the limit, a space landing
        // on it, multi-byte characters across it.
        for len in MAX_CLICK_TEXT_CHARS - 2..=MAX_CLICK_TEXT_CHARS + 2 {
            inputs.push("x".repeat(len));
            inputs.push(format!("{} yz", "x".repeat(len)));
            inputs.push(format!("{}  \n  é€😀 tail", "é".repeat(len)));
        }
        for text in &inputs {
            assert_eq!(short_text(text), by_slicing(text), "{text:?}");
        }
    }

    #[test]
    fn batch_ready_at_count() {
        let env = FakeEnv::default();
        let mut t = Tracker::new(
            env.clone(),
            Config {
                batch_count: 2,
                ..Config::new("wk_test".into())
            },
        );
        t.track("A".into(), None, Context::default());
        assert!(!t.batch_ready());
        t.track("B".into(), None, Context::default());
        assert!(t.batch_ready());
        assert_eq!(body_messages(&t.next_batch().unwrap()).len(), 2);
    }
}
