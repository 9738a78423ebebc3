//! The DATA receiver against RFC 5321 §4.5.2 written as plainly as possible
//! ([`reference`]), over every short input and over generated ones, cut into
//! reads at every (or arbitrary) places.

use super::*;

use proptest::prelude::*;

/// RFC 5321 §4.5.2, line by line: lines end with `<CRLF>`; a line that is
/// exactly `.` ends the data; a line starting with `.` loses it. Returns the
/// content of the complete lines, then `Some(bytes consumed)` if the data ended,
/// or `None` and what a streaming receiver can already have handed on of the
/// unfinished last line (all of it but a held `.` or `.` `<CR>`).
pub(crate) fn reference(input: &[u8]) -> (Vec<u8>, Option<usize>) {
    let mut content = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &input[pos..];
        let Some(i) = rest.windows(2).position(|w| w == b"\r\n") else {
            let partial = match rest {
                b"." | b".\r" => &[][..],
                [b'.', tail @ ..] => tail,
                _ => rest,
            };
            content.extend_from_slice(partial);
            return (content, None);
        };
        let line = &rest[..i];
        if line == b"." {
            return (content, Some(pos + i + 2));
        }
        content.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        content.extend_from_slice(b"\r\n");
        pos += i + 2;
    }
}

/// Feeds `input` cut at `cuts` (sorted offsets into it), the way the session
/// does: each read is offered until the receiver stops consuming it. Returns the
/// content and, if the data ended, the offset just past the end.
fn receive(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Option<usize>) {
    let mut receiver = DataReceiver::new();
    let mut content = Vec::new();
    let mut start = 0;
    for end in cuts.iter().copied().chain(std::iter::once(input.len())) {
        let (used, done) = receiver.ingest(&input[start..end], &mut Bounded::new(&mut content, usize::MAX));
        if done {
            return (content, Some(start + used));
        }
        assert_eq!(used, end - start, "a receiver that has not ended consumes everything");
        start = end;
    }
    (content, None)
}

fn check(input: &[u8], cuts: &[usize]) {
    assert_eq!(receive(input, cuts), reference(input), "input {input:?} cut at {cuts:?}");
}

/// Every input of up to 7 bytes from CR, LF, NUL, `.` and a letter, after the
/// `DATA` line (so at a line start): whole, byte by byte, and cut once at every
/// place; and the same followed by a real end of data.
#[test]
fn every_short_input_ends_exactly_at_the_first_crlf_dot_crlf() {
    const ALPHABET: [u8; 5] = [b'\r', b'\n', 0, b'.', b'a'];
    let (mut inputs, mut ended) = (0, 0);
    for len in 0..=7u32 {
        for n in 0..5usize.pow(len) {
            let mut input: Vec<u8> = (0..len).map(|i| ALPHABET[n / 5usize.pow(i) % 5]).collect();
            for terminated in [false, true] {
                if terminated {
                    input.extend_from_slice(b"\r\n.\r\n");
                }
                check(&input, &[]);
                check(&input, &(1..input.len()).collect::<Vec<_>>());
                if len <= 5 {
                    for cut in 0..=input.len() {
                        check(&input, &[cut]);
                    }
                }
                inputs += 1;
                ended += usize::from(reference(&input).1.is_some());
            }
        }
    }
    // 2 × (5^0 + … + 5^7) inputs; every terminated one ends.
    assert_eq!(inputs, 2 * 97_656);
    assert!(ended >= 97_656, "{ended}");
}

/// The smuggling terminators of CVE-2023-51764 (Postfix), CVE-2023-51765
/// (sendmail) and CVE-2023-51766 (Exim), and smtp-proto's own: none ends the
/// data, each is content (dot-unstuffed where the dot starts a line).
#[test]
fn smuggling_terminators_are_content() {
    for (terminator, content) in [
        (&b"\n.\n"[..], &b"\n.\n"[..]),
        (b"\n.\r\n", b"\n.\r\n"),
        (b"\r.\r\n", b"\r.\r\n"),
        (b"\r\n.\n", b"\r\n\n"),
        (b"\r.\r", b"\r.\r"),
        (b"\r\n.\r", b"\r\n\r"),
        (b"\r\n.\r\r\n", b"\r\n\r\r\n"),
        (b"\r\r\n.\r\r\n", b"\r\r\n\r\r\n"),
        (b"\r\n\x00.\r\n", b"\r\n\x00.\r\n"),
        (b"\r\n.\x00\r\n", b"\r\n\x00\r\n"),
    ] {
        let mut input = b"hello".to_vec();
        input.extend_from_slice(terminator);
        input.extend_from_slice(b"MAIL FROM:<x@y>\r\n");
        let (got, end) = receive(&input, &[]);
        assert_eq!(end, None, "{terminator:?} ended the data");
        let mut expected = b"hello".to_vec();
        expected.extend_from_slice(content);
        expected.extend_from_slice(b"MAIL FROM:<x@y>\r\n");
        assert_eq!(got, expected, "{terminator:?}");
    }
}

#[test]
fn a_dot_line_right_after_data_ends_an_empty_message() {
    assert_eq!(receive(b".\r\nQUIT\r\n", &[]), (Vec::new(), Some(3)));
    assert_eq!(receive(b"..\r\n.\r\n", &[1, 2, 3]), (b".\r\n".to_vec(), Some(7)));
}

#[test]
fn bounded_keeps_nothing_past_its_limit_and_says_so() {
    let mut buf = Vec::new();
    let mut sink = Bounded::new(&mut buf, 10);
    sink.put(b"0123456789");
    assert!(!sink.overflowed());
    sink.put(b"x");
    sink.put(b"");
    assert!(sink.overflowed());
    assert_eq!(buf, b"0123456789");
    assert!(buf.capacity() <= 10);
    let mut buf = Vec::new();
    let mut sink = Bounded::new(&mut buf, 1000);
    for _ in 0..999 {
        sink.put(b"y");
    }
    assert!(buf.capacity() <= 1000, "{}", buf.capacity());
}

#[test]
fn a_chunk_is_exactly_its_size_and_a_zero_chunk_is_complete_at_once() {
    let mut chunk = ChunkReceiver::new(5, false);
    let mut buf = Vec::new();
    assert_eq!(chunk.ingest(b"\r\n.", &mut Bounded::new(&mut buf, 100)), (3, false));
    assert_eq!(chunk.ingest(b"\r\nQUIT\r\n", &mut Bounded::new(&mut buf, 100)), (2, true));
    assert_eq!(buf, b"\r\n.\r\n");
    assert_eq!(ChunkReceiver::new(0, true).ingest(b"", &mut Discard), (0, true));
}

/// Pieces that make line starts likely: the bytes of the alphabet, and the
/// smuggling shapes whole.
pub(crate) fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(vec![b'\r', b'\n', 0u8, b'.', b'a']).prop_map(|b| vec![b]),
        1 => prop::sample::select(vec![
            &b"\r\n"[..], b"\r\n.", b"\r\n.\r", b"\r\n..", b"\n.\n", b"\r.\r", b".\r\r\n", b"\r\n\0.\r\n",
        ])
        .prop_map(<[u8]>::to_vec),
    ]
}

fn input_and_cuts() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    (prop::collection::vec(piece(), 0..60), any::<bool>()).prop_flat_map(|(pieces, terminated)| {
        let mut input: Vec<u8> = pieces.concat();
        if terminated {
            input.extend_from_slice(b"\r\n.\r\n");
        }
        let len = input.len();
        (Just(input), prop::collection::vec(0..=len, 0..8)).prop_map(|(input, mut cuts)| {
            cuts.sort_unstable();
            (input, cuts)
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// Any input, cut anywhere: the data ends exactly at the first `<CRLF>.<CRLF>`
    /// (counting the `DATA` line's `<CRLF>`), and the content is the input up to
    /// there with dot-stuffing undone.
    #[test]
    fn generated_inputs_end_exactly_at_the_first_crlf_dot_crlf((input, cuts) in input_and_cuts()) {
        prop_assert_eq!(receive(&input, &cuts), reference(&input));
    }

    /// A draining receiver (a refused message) ends where a keeping one does.
    #[test]
    fn draining_ends_where_receiving_ends((input, cuts) in input_and_cuts()) {
        let mut drain = Drain::Data(DataReceiver::new());
        let mut start = 0;
        let mut end = None;
        for cut in cuts.iter().copied().chain(std::iter::once(input.len())) {
            let (used, done) = drain.ingest(&input[start..cut]);
            if done {
                end = Some(start + used);
                break;
            }
            start = cut;
        }
        prop_assert_eq!(end, reference(&input).1);
    }
}
