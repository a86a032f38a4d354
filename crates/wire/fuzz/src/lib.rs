//! Helpers shared by the fuzz targets of `pgwarden-wire`.

use std::ops::Range;

use pgwarden_wire::startup::parse_options;

/// How a target reads its input: a flags byte whose low four bits count the
/// cut bytes that follow, the cut bytes, then the stream itself. The cuts let
/// libFuzzer choose where a socket read ends, which is where incremental
/// decoders go wrong.
pub struct Plan<'a> {
    /// The high four bits of the first byte; each target gives them a meaning.
    pub flags: u8,
    cuts: &'a [u8],
    pub data: &'a [u8],
}

impl<'a> Plan<'a> {
    pub fn parse(input: &'a [u8]) -> Option<Plan<'a>> {
        let (&first, rest) = input.split_first()?;
        let n = usize::from(first & 0x0f);
        if rest.len() < n {
            return None;
        }
        let (cuts, data) = rest.split_at(n);
        Some(Plan {
            flags: first & 0xf0,
            cuts,
            data,
        })
    }

    /// The reads, as ranges of `data`. Each cut byte is a read length minus
    /// one, used in turn; without cuts the stream arrives one byte at a time,
    /// the harshest split.
    pub fn reads(&self) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < self.data.len() {
            let len = match self.cuts {
                [] => 1,
                cuts => usize::from(cuts[i % cuts.len()]) + 1,
            };
            let end = (pos + len).min(self.data.len());
            out.push(pos..end);
            pos = end;
            i += 1;
        }
        out
    }

    /// The whole stream in one read.
    pub fn whole(&self) -> Vec<Range<usize>> {
        let all = 0..self.data.len();
        std::iter::once(all).filter(|r| !r.is_empty()).collect()
    }
}

/// Writes settings back as an `options` value that must parse to the same
/// settings: `-c` and the setting as its own word, with the characters the
/// parser treats specially escaped.
pub fn format_options(settings: &[(String, String)]) -> String {
    let mut out = String::new();
    for (name, value) in settings {
        out.push_str("-c ");
        for c in name
            .chars()
            .chain(std::iter::once('='))
            .chain(value.chars())
        {
            if c == '\\' || c.is_ascii_whitespace() {
                out.push('\\');
            }
            out.push(c);
        }
        out.push(' ');
    }
    out
}

/// What must hold for any `options` string: an error, or settings with a
/// usable name that survive being written back and parsed again. A value
/// whose last word is a bare `-c` must be refused, never read as no setting.
pub fn check_options(options: &str) {
    let parsed = parse_options(options);
    if !options.contains('\\') && options.split_ascii_whitespace().last() == Some("-c") {
        assert!(parsed.is_err(), "an empty -c was accepted: {options:?}");
    }
    let Ok(settings) = parsed else { return };
    for (name, _) in &settings {
        assert!(!name.is_empty(), "empty setting name from {options:?}");
        assert!(
            !name.contains('-') && !name.contains('='),
            "setting name {name:?} from {options:?}"
        );
    }
    let again = parse_options(&format_options(&settings));
    assert_eq!(again.as_ref(), Ok(&settings), "options {options:?}");
}
