//! Message data as it arrives: where `DATA` ends, and `BDAT` chunks. Sans-IO.
//!
//! [`DataReceiver`] is RFC 5321 §4.5.2 over bytes: lines end with `<CRLF>`
//! only; a line that is exactly `.` ends the data, and any other line starting
//! with `.` loses that first `.` (dot-stuffing). So **only `<CRLF>.<CRLF>` ends
//! `DATA`** — the `<CRLF>` that ends the `DATA` command line counts as the first
//! one — and every other dot line (`<LF>.<LF>`, `<CR>.<CR>`, `<CRLF>.<LF>`,
//! `<CRLF>.<CR><CRLF>`, …) is message content: smuggling sequences stay inside
//! the one message.
//!
//! We do not use `smtp-proto`'s `DataReceiver`: in smtp-proto 0.2.5 it ends data
//! on `<CRLF> "." <CR>+ <LF>`, so `<CRLF>.<CR><CRLF>` ended a message early and
//! the rest of the stream ran as commands (a second, forged transaction). It also
//! starts as if in the middle of a line, so a `.` right after `DATA` was missed.
//!
//! The receivers never buffer: they hand content to a [`Sink`] — [`Bounded`]
//! keeps it up to the message size limit and then only notes the overflow;
//! [`Discard`] keeps nothing (draining a message that will be refused).

use std::sync::LazyLock;

use memchr::memmem::Finder;

/// Where content goes.
pub(crate) trait Sink {
    /// Appends message content.
    fn put(&mut self, bytes: &[u8]);
}

/// Keeps content up to `limit` bytes; content past it is dropped and
/// [`Bounded::overflowed`] says so. The buffer's capacity never exceeds `limit`.
pub(crate) struct Bounded<'a> {
    buf: &'a mut Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl<'a> Bounded<'a> {
    /// A sink appending to `buf` up to `limit` bytes in total.
    pub(crate) fn new(buf: &'a mut Vec<u8>, limit: usize) -> Self {
        Self { buf, limit, overflowed: false }
    }

    /// Whether content was dropped because it would have passed the limit.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed
    }
}

impl Sink for Bounded<'_> {
    fn put(&mut self, bytes: &[u8]) {
        if self.overflowed {
            return;
        }
        let needed = self.buf.len().saturating_add(bytes.len());
        if needed > self.limit {
            self.overflowed = true;
            return;
        }
        if needed > self.buf.capacity() {
            // Grow geometrically, but never past the limit.
            let target = needed.max(self.buf.capacity().saturating_mul(2)).min(self.limit);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }
}

/// Keeps nothing.
pub(crate) struct Discard;

impl Sink for Discard {
    fn put(&mut self, _: &[u8]) {}
}

/// Where the bytes so far left the data, as far as its end and dot-stuffing go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// At the start of a line (after `<CRLF>`, or the `DATA` command's).
    Start,
    /// A `.` at the start of a line, held back.
    Dot,
    /// A `.` and a `<CR>` at the start of a line, both held back.
    DotCr,
    /// Inside a line, the last byte a `<CR>`.
    Cr,
    /// Inside a line.
    Middle,
}

/// A line start that begins with a dot: everything before it is plain content.
static CRLF_DOT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\r\n."));

/// The `DATA` receiver (module docs): content with dot-stuffing undone, up to
/// the first `<CRLF>.<CRLF>`.
#[derive(Debug, Clone)]
pub(crate) struct DataReceiver {
    line: Line,
}

impl DataReceiver {
    /// A receiver at the start of the first line: the `DATA` command's `<CRLF>`
    /// has just been read.
    pub(crate) fn new() -> Self {
        Self { line: Line::Start }
    }

    /// Consumes a prefix of `input`, putting the content it holds into `sink`.
    /// Returns how many bytes it consumed and whether that prefix ends with the
    /// end of data (then the bytes after it are not data). State carries over
    /// between calls, so input may be cut anywhere.
    pub(crate) fn ingest(&mut self, input: &[u8], sink: &mut impl Sink) -> (usize, bool) {
        let mut at = 0;
        while let Some(&byte) = input.get(at) {
            match self.line {
                Line::Middle => {
                    let rest = &input[at..];
                    match CRLF_DOT.find(rest) {
                        Some(i) => {
                            sink.put(&rest[..i + 2]);
                            at += i + 3;
                            self.line = Line::Dot;
                        }
                        None => {
                            sink.put(rest);
                            at = input.len();
                            self.line = if rest.ends_with(b"\r\n") {
                                Line::Start
                            } else if rest.ends_with(b"\r") {
                                Line::Cr
                            } else {
                                Line::Middle
                            };
                        }
                    }
                }
                Line::Start if byte == b'.' => {
                    at += 1;
                    self.line = Line::Dot;
                }
                Line::Cr if byte == b'\n' => {
                    sink.put(b"\n");
                    at += 1;
                    self.line = Line::Start;
                }
                Line::Start | Line::Cr => self.line = Line::Middle,
                Line::Dot if byte == b'\r' => {
                    at += 1;
                    self.line = Line::DotCr;
                }
                // A dot-stuffed line: the held `.` is dropped.
                Line::Dot => self.line = Line::Middle,
                Line::DotCr if byte == b'\n' => {
                    self.line = Line::Start;
                    return (at + 1, true);
                }
                // `.` `<CR>` and something else: the `.` was stuffing, the `<CR>` is content.
                Line::DotCr => {
                    sink.put(b"\r");
                    self.line = Line::Cr;
                }
            }
        }
        (at, false)
    }
}

/// One `BDAT` chunk: exactly its declared size, nothing interpreted.
#[derive(Debug, Clone)]
pub(crate) struct ChunkReceiver {
    left: usize,
    /// Whether this is the `LAST` chunk.
    pub(crate) last: bool,
}

impl ChunkReceiver {
    /// A chunk of `size` bytes.
    pub(crate) fn new(size: usize, last: bool) -> Self {
        Self { left: size, last }
    }

    /// Consumes up to the rest of the chunk from `input` into `sink`; returns how
    /// many bytes it consumed and whether the chunk is complete.
    pub(crate) fn ingest(&mut self, input: &[u8], sink: &mut impl Sink) -> (usize, bool) {
        let n = self.left.min(input.len());
        sink.put(&input[..n]);
        self.left -= n;
        (n, self.left == 0)
    }
}

/// Data read only to find where it ends (a refused message or chunk).
#[derive(Debug, Clone)]
pub(crate) enum Drain {
    /// The rest of a `DATA` transfer.
    Data(DataReceiver),
    /// The rest of a `BDAT` chunk.
    Chunk(ChunkReceiver),
}

impl Drain {
    /// Consumes a prefix of `input`; returns how many bytes and whether the
    /// transfer ended.
    pub(crate) fn ingest(&mut self, input: &[u8]) -> (usize, bool) {
        match self {
            Self::Data(receiver) => receiver.ingest(input, &mut Discard),
            Self::Chunk(receiver) => receiver.ingest(input, &mut Discard),
        }
    }
}

#[cfg(test)]
#[path = "data_tests.rs"]
pub(crate) mod tests;
