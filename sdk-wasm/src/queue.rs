//! The queue of messages waiting to be sent.
//!
//! Messages are kept encoded (JSON text), because that is what is sent and
//! what is persisted: a batch is a concatenation, not a re-encoding. The
//! queue is bounded in bytes; when a push would exceed the cap the oldest
//! messages are dropped and counted.
//!
//! Persistence format: the messages joined by `\n`. Encoded JSON never
//! contains a raw newline (the writer and `JSON.stringify` escape it), so
//! no parser is needed to read it back.

/// A bounded FIFO of encoded messages.
#[derive(Debug, Default)]
pub struct Queue {
    /// Oldest first; the first `in_flight` are in the request in flight.
    items: Vec<String>,
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

    /// `true` when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Appends a message, dropping the oldest messages that are not in
    /// flight until it fits. A message larger than the whole cap is dropped.
    pub fn push(&mut self, message: String) {
        if message.len() > self.cap_bytes {
            self.dropped += 1;
            return;
        }
        let mut over = (self.bytes + message.len()).saturating_sub(self.cap_bytes);
        if over > 0 {
            // `retain` rather than `remove(i)`: no index that could panic.
            let mut index = 0;
            let in_flight = self.in_flight;
            let (bytes, dropped) = (&mut self.bytes, &mut self.dropped);
            self.items.retain(|old| {
                let drop = index >= in_flight && over > 0;
                index += 1;
                if drop {
                    over = over.saturating_sub(old.len());
                    *bytes -= old.len();
                    *dropped += 1;
                }
                !drop
            });
        }
        self.bytes += message.len();
        self.items.push(message);
    }

    /// Marks up to `max_count` messages, at most `max_bytes` in all, as in
    /// flight and returns them; empty if a request is already in flight or
    /// nothing is queued. At least one message is taken when any is queued.
    pub fn take_batch(&mut self, max_count: usize, max_bytes: usize) -> Vec<&str> {
        if self.in_flight > 0 {
            return Vec::new();
        }
        let mut bytes = 0;
        let mut n = 0;
        for item in self.items.iter().take(max_count) {
            if n > 0 && bytes + item.len() > max_bytes {
                break;
            }
            bytes += item.len();
            n += 1;
        }
        self.in_flight = n;
        self.items.iter().take(n).map(String::as_str).collect()
    }

    /// The messages not in flight, at most `max_bytes` in all (oldest first,
    /// stopping at the first that does not fit), for a last request as the
    /// page goes away. Nothing changes until [`Queue::drop_unsent`].
    pub fn peek_unsent(&self, max_bytes: usize) -> Vec<&str> {
        let mut bytes = 0;
        self.items
            .iter()
            .skip(self.in_flight)
            .take_while(|item| {
                bytes += item.len();
                bytes <= max_bytes
            })
            .map(String::as_str)
            .collect()
    }

    /// Forgets the first `n` messages after those in flight (sent by
    /// [`Queue::peek_unsent`]'s caller).
    pub fn drop_unsent(&mut self, n: usize) {
        let mut index = 0;
        let (start, bytes) = (self.in_flight, &mut self.bytes);
        self.items.retain(|item| {
            let sent = index >= start && index < start + n;
            index += 1;
            if sent {
                *bytes -= item.len();
            }
            !sent
        });
    }

    /// The request in flight was accepted: forget its messages.
    pub fn ack(&mut self) {
        let mut index = 0;
        let (in_flight, bytes) = (self.in_flight, &mut self.bytes);
        self.items.retain(|item| {
            let sent = index < in_flight;
            index += 1;
            if sent {
                *bytes -= item.len();
            }
            !sent
        });
        self.in_flight = 0;
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
        let mut out = String::with_capacity(self.bytes + self.items.len());
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(item);
        }
        out
    }

    /// Restores messages from [`Queue::serialize`] output, within the cap.
    pub fn restore(&mut self, text: &str) {
        for line in text.split('\n').filter(|l| !l.is_empty()) {
            self.push(line.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_of(cap: usize, items: &[&str]) -> Queue {
        let mut q = Queue::new(cap);
        for i in items {
            q.push((*i).to_owned());
        }
        q
    }

    #[test]
    fn batches_respect_count_and_bytes() {
        let mut q = queue_of(1000, &["aaaa", "bbbb", "cccc", "dddd"]);
        assert_eq!(q.take_batch(3, 1000), ["aaaa", "bbbb", "cccc"]);
        q.ack();
        assert_eq!(q.take_batch(3, 1000), ["dddd"]);
        q.ack();
        assert!(q.take_batch(3, 1000).is_empty());

        let mut q = queue_of(1000, &["aaaa", "bbbb", "cccc"]);
        assert_eq!(q.take_batch(10, 9), ["aaaa", "bbbb"]);
        q.nack();
        // An oversize first message still goes out alone.
        assert_eq!(q.take_batch(10, 2), ["aaaa"]);
    }

    #[test]
    fn only_one_batch_in_flight_and_failures_resend_in_order() {
        let mut q = queue_of(1000, &["a", "b"]);
        assert_eq!(q.take_batch(1, 100), ["a"]);
        assert!(q.take_batch(1, 100).is_empty());
        q.nack();
        assert_eq!(q.take_batch(5, 100), ["a", "b"]);
        q.push("c".into());
        q.ack();
        assert_eq!(q.take_batch(5, 100), ["c"]);
    }

    #[test]
    fn full_queue_drops_oldest_but_never_in_flight() {
        let mut q = queue_of(8, &["aaa", "bbb"]);
        assert_eq!(q.take_batch(1, 100), ["aaa"]);
        q.push("ccc".into());
        assert_eq!(q.dropped, 1, "bbb was the oldest not in flight");
        q.ack();
        assert_eq!(q.take_batch(5, 100), ["ccc"]);
        q.push("way too large".into());
        assert_eq!(q.dropped, 2);
    }

    #[test]
    fn a_large_push_drops_as_many_of_the_oldest_as_it_needs() {
        let mut q = queue_of(10, &["aaa", "bbb", "ccc"]);
        assert_eq!(q.take_batch(1, 100), ["aaa"]);
        q.push("dddddd".into());
        assert_eq!(q.dropped, 2, "bbb and ccc, never aaa in flight");
        assert_eq!(q.serialize(), "aaa\ndddddd");
        q.ack();
        assert_eq!(q.len(), 1);
        q.push("eeee".into());
        assert_eq!(q.dropped, 2, "6 + 4 bytes fit in 10");
        assert_eq!(q.take_batch(5, 100), ["dddddd", "eeee"]);
    }

    #[test]
    fn the_last_request_takes_what_is_not_in_flight() {
        let mut q = queue_of(1000, &["aa", "bb", "cc", "dd"]);
        assert_eq!(q.take_batch(1, 100), ["aa"]);
        assert_eq!(q.peek_unsent(4), ["bb", "cc"]);
        assert_eq!(q.peek_unsent(5), ["bb", "cc"]);
        assert_eq!(q.peek_unsent(1), Vec::<&str>::new());
        q.drop_unsent(2);
        assert_eq!(q.serialize(), "aa\ndd");
        q.ack();
        assert_eq!(q.take_batch(5, 100), ["dd"]);
        q.ack();
        assert!(q.is_empty());
        assert_eq!(q.bytes, 0);
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
