//! Incremental newline-delimited JSON (`application/x-ndjson`) splitting.
//!
//! Upstream bodies arrive in arbitrary chunks: a line (even a `\r\n` pair, even a multi-byte UTF-8
//! character) may be split across two of them. The splitter keeps the unfinished tail and hands
//! out whole lines only, without their line terminator. Blank lines are skipped.

/// Largest unfinished line the splitter holds before giving up on the stream (a provider that never
/// sends a newline must not grow memory without bound).
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct NdjsonSplitter {
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    overflow: bool,
}

/// What a push reports besides the lines it delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NdjsonStatus {
    Ok,
    /// The pending line grew past [`MAX_LINE_BYTES`]; the stream cannot be trusted further.
    Overflow,
}

impl NdjsonSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk; calls `on_line(line)` for every non-blank line completed by it (without the
    /// trailing `\n` / `\r\n`).
    pub fn push(&mut self, chunk: &[u8], mut on_line: impl FnMut(&[u8])) -> NdjsonStatus {
        if self.overflow {
            return NdjsonStatus::Overflow;
        }
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let (head, tail) = rest.split_at(pos);
            rest = tail.get(1..).unwrap_or(&[]);
            if self.line.is_empty() {
                deliver(head, &mut on_line);
            } else {
                self.line.extend_from_slice(head);
                let line = std::mem::take(&mut self.line);
                deliver(&line, &mut on_line);
                self.line = line;
                self.line.clear();
            }
        }
        self.line.extend_from_slice(rest);
        if self.line.len() > MAX_LINE_BYTES {
            self.overflow = true;
            self.line = Vec::new();
            return NdjsonStatus::Overflow;
        }
        NdjsonStatus::Ok
    }

    /// Ends the stream: a last line that lacked its newline is still delivered.
    pub fn finish(&mut self, mut on_line: impl FnMut(&[u8])) {
        if self.overflow {
            return;
        }
        let line = std::mem::take(&mut self.line);
        deliver(&line, &mut on_line);
    }

    /// True when nothing is buffered: the stream ended on a line boundary.
    pub fn is_idle(&self) -> bool {
        self.line.iter().all(|b| b.is_ascii_whitespace())
    }
}

fn deliver(raw: &[u8], on_line: &mut impl FnMut(&[u8])) {
    let line = raw.strip_suffix(b"\r").unwrap_or(raw);
    if line.iter().all(|b| b.is_ascii_whitespace()) {
        return;
    }
    on_line(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = NdjsonSplitter::new();
        let mut out = Vec::new();
        for c in chunks {
            assert_eq!(s.push(c, |l| out.push(String::from_utf8(l.to_vec()).unwrap())), NdjsonStatus::Ok);
        }
        s.finish(|l| out.push(String::from_utf8(l.to_vec()).unwrap()));
        out
    }

    #[test]
    fn lines_split_anywhere_are_reassembled() {
        let whole = "{\"a\":1}\n\n{\"b\":\"caf\u{e9} \u{1f600}\"}\r\n   \r\n{\"c\":[1,2]}\n{\"d\":null}".as_bytes();
        let expected = collect(&[whole]);
        assert_eq!(expected, vec!["{\"a\":1}", "{\"b\":\"caf\u{e9} \u{1f600}\"}", "{\"c\":[1,2]}", "{\"d\":null}"]);
        for split in 0..=whole.len() {
            let (a, b) = whole.split_at(split);
            assert_eq!(collect(&[a, b]), expected, "split at {split}");
        }
        for size in [1, 2, 3, 7] {
            let chunks: Vec<&[u8]> = whole.chunks(size).collect();
            assert_eq!(collect(&chunks), expected, "{size}-byte chunks");
        }
    }

    #[test]
    fn lines_are_delivered_as_soon_as_complete() {
        let mut s = NdjsonSplitter::new();
        let mut seen = Vec::new();
        s.push(b"{\"x\":1}\n{\"y\"", |l| seen.push(l.to_vec()));
        assert_eq!(seen, vec![b"{\"x\":1}".to_vec()]);
        assert!(!s.is_idle());
        s.push(b":2}\n", |l| seen.push(l.to_vec()));
        assert_eq!(seen.len(), 2);
        assert!(s.is_idle());
        s.finish(|_| panic!("nothing pending"));
    }

    #[test]
    fn overflow_is_reported_and_sticky() {
        let mut s = NdjsonSplitter::new();
        let big = vec![b'a'; MAX_LINE_BYTES + 1];
        assert_eq!(s.push(&big, |_| panic!("no line")), NdjsonStatus::Overflow);
        assert_eq!(s.push(b"\n{}\n", |_| panic!("no lines after overflow")), NdjsonStatus::Overflow);
        s.finish(|_| panic!("no lines after overflow"));
    }

    #[test]
    fn empty_and_blank_input_yield_nothing() {
        assert!(collect(&[]).is_empty());
        assert!(collect(&[b"\n\r\n  \n"]).is_empty());
    }
}
