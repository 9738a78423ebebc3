//! A sans-IO reader of `text/event-stream` (the WHATWG Server-Sent Events
//! format): bytes in, complete events out. Lines are bounded
//! ([`MAX_SSE_LINE`]); an over-long line is an error, never a growing buffer.

/// Longest accepted line of the event stream, in bytes.
pub const MAX_SSE_LINE: usize = 64 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// `event:` (empty means `message`).
    pub event: String,
    /// `id:` of this event, if it carried one.
    pub id: Option<String>,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

/// A line over [`MAX_SSE_LINE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the event stream sent a line over {MAX_SSE_LINE} bytes")]
pub struct SseLineTooLong;

/// The reader's state: the partial line and the event being assembled.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    pending: SseEvent,
    has_data: bool,
    /// The last `\r` ended a line; a following `\n` belongs to it.
    after_cr: bool,
}

impl SseParser {
    /// A fresh reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the events completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, SseLineTooLong> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_done(&line) {
                        out.push(event);
                    }
                }
                _ => {
                    if self.line.len() >= MAX_SSE_LINE {
                        return Err(SseLineTooLong);
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(out)
    }

    fn line_done(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.pending);
            let had = std::mem::replace(&mut self.has_data, false);
            return had.then_some(event);
        }
        if line[0] == b':' {
            return None; // comment (keep-alive)
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned()),
            None => (text.into_owned(), String::new()),
        };
        match field.as_str() {
            "event" => self.pending.event = value,
            "id" if !value.contains('\0') => self.pending.id = Some(value),
            "data" => {
                if self.has_data {
                    self.pending.data.push('\n');
                }
                self.pending.data.push_str(&value);
                self.has_data = true;
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_comments_and_split_chunks() {
        let stream = b": keep-alive\n\nevent: message.received\nid: 01HX\ndata: {\"a\":1}\n\n:ka\r\nevent: x\r\ndata: one\r\ndata: two\r\n\r\n";
        // Every split point gives the same events.
        for split in 0..stream.len() {
            let mut p = SseParser::new();
            let mut got = p.feed(&stream[..split]).unwrap();
            got.extend(p.feed(&stream[split..]).unwrap());
            assert_eq!(got.len(), 2, "split at {split}");
            assert_eq!(got[0].event, "message.received");
            assert_eq!(got[0].id.as_deref(), Some("01HX"));
            assert_eq!(got[0].data, "{\"a\":1}");
            assert_eq!(got[1].data, "one\ntwo");
            assert_eq!(got[1].id, None);
        }
    }

    #[test]
    fn an_event_without_data_is_not_dispatched() {
        let mut p = SseParser::new();
        assert!(p.feed(b"event: x\nid: 1\n\n").unwrap().is_empty());
    }

    #[test]
    fn line_limit() {
        let mut p = SseParser::new();
        let long = vec![b'a'; MAX_SSE_LINE];
        assert!(p.feed(&long).is_ok());
        assert_eq!(p.feed(b"a"), Err(SseLineTooLong));
        let mut p = SseParser::new();
        let mut ok = vec![b'a'; MAX_SSE_LINE];
        ok.push(b'\n');
        assert!(p.feed(&ok).is_ok());
    }
}
