//! Masking secret values before anything the launcher relays leaves it: the run's log,
//! failure messages and outputs. Each value becomes `***` in its literal form, in base64
//! (standard and URL-safe alphabets, padded or not, alone or at any of the three byte
//! alignments inside longer base64), JSON-escaped and URL-encoded, even when it arrives
//! split across pieces of output. Text that could be the start of a value is held back
//! until the next piece says whether it is one.
//!
//! Encoded forms are found by decoding, not by listing them: the text is read through
//! several views at once (as it is; with line breaks left out, as wrapped base64 has
//! them; with JSON string escapes decoded; with URL percent-encoding decoded), and each
//! view is searched for the values and their base64 and JSON forms with one Aho-Corasick
//! automaton. So `\u00e9` and `é`, `%2f` and `%2F`, `+` and `%20` are all seen, however an
//! encoder chose to write them, and scanning stays linear in the text whatever the number
//! of values.

use std::collections::VecDeque;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use gantry_proto::agent::RunReport;

/// What replaces a masked value.
pub(crate) const MASK: &str = "***";

/// The shortest encoded form searched for: a base64 fragment shorter than this would mask
/// ordinary characters of any base64 text. Values themselves are at least
/// [`gantry_domain::validation::MIN_SECRET_LENGTH`] characters long, so each of them has
/// longer fragments at every alignment.
const MIN_FORM_LENGTH: usize = 4;

/// Streams text through, masking a set of values.
pub(crate) struct Masker {
    values: Vec<String>,
    automaton: Automaton,
    scan: Scan,
}

// Never the values, nor the text held back (it may be the start of one).
impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field("values", &self.values.len())
            .field("held_bytes", &self.scan.held.len())
            .finish_non_exhaustive()
    }
}

impl Masker {
    /// Masks `values` and their encoded forms. An empty value is nothing to hide.
    pub(crate) fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut values: Vec<String> =
            values.into_iter().filter(|value| !value.is_empty()).map(str::to_owned).collect();
        values.sort_unstable();
        values.dedup();
        let automaton = Automaton::new(&forms_of(&values));
        Self { values, automaton, scan: Scan::default() }
    }

    /// Masks `values` too from now on, and returns what can be released now. The text
    /// held back so far is read again with them: a value it may begin (an old one or a
    /// new one) is still masked when the rest comes.
    pub(crate) fn add<'a>(&mut self, values: impl IntoIterator<Item = &'a str>) -> String {
        let mut all = std::mem::take(&mut self.values);
        all.extend(values.into_iter().map(str::to_owned));
        let held = std::mem::take(&mut self.scan.held);
        *self = Self::new(all.iter().map(String::as_str));
        // Held text starts where no view was inside an escape or a possible value, so
        // fresh views read it as the old ones would have from there.
        self.push(&held)
    }

    /// The masked text that can be released now; a possible start of a value is kept
    /// for the next call.
    pub(crate) fn push(&mut self, text: &str) -> String {
        if self.values.is_empty() {
            return text.to_owned();
        }
        self.scan.push(&self.automaton, text);
        self.scan.release(&self.automaton, false)
    }

    /// Releases what is held, masked: the output ended, so no value continues it.
    pub(crate) fn finish(&mut self) -> String {
        if self.values.is_empty() {
            return std::mem::take(&mut self.scan.held);
        }
        self.scan.end(&self.automaton);
        self.scan.release(&self.automaton, true)
    }

    /// `text` masked as a whole, apart from the stream.
    pub(crate) fn masked(&self, text: &str) -> String {
        if self.values.is_empty() {
            return text.to_owned();
        }
        let mut scan = Scan::default();
        scan.push(&self.automaton, text);
        scan.end(&self.automaton);
        scan.release(&self.automaton, true)
    }

    /// `report` with every text it carries to the server masked: a failure's message,
    /// output values (and the keys of maps among them), a commit's message and author.
    pub(crate) fn masked_report(&self, mut report: RunReport) -> RunReport {
        if self.values.is_empty() {
            return report;
        }
        match &mut report {
            RunReport::Failed { message } => *message = self.masked(message),
            RunReport::CommitResolved { message, author, .. } => {
                *message = self.masked(message);
                // A repository's author can write anything in its name and address too.
                if let Some(author) = author {
                    author.name = self.masked(&author.name);
                    author.email = self.masked(&author.email);
                }
            }
            RunReport::Outputs { outputs } => {
                for output in outputs {
                    output.name = self.masked(&output.name);
                    output.value = output.value.take().map(|value| self.masked_json(value));
                }
            }
            RunReport::PhaseStarted { .. }
            | RunReport::Planned { .. }
            | RunReport::WorkspaceStored { .. }
            | RunReport::Applied
            | RunReport::Performed
            | RunReport::Stopped => {}
        }
        report
    }

    fn masked_json(&self, value: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::String(text) => Value::String(self.masked(&text)),
            // A number can be a value too (a PIN, an account number): shown masked, it
            // becomes a string.
            Value::Number(number) => {
                let text = number.to_string();
                let masked = self.masked(&text);
                if masked == text { Value::Number(number) } else { Value::String(masked) }
            }
            Value::Array(items) => {
                Value::Array(items.into_iter().map(|item| self.masked_json(item)).collect())
            }
            Value::Object(entries) => Value::Object(
                entries
                    .into_iter()
                    .map(|(key, item)| (self.masked(&key), self.masked_json(item)))
                    .collect(),
            ),
            other @ (Value::Null | Value::Bool(_)) => other,
        }
    }
}

/// Every form of `values` searched for in each view: the value, its base64 forms and its
/// JSON-escaped forms (a view that decodes one level of JSON escapes then also finds
/// values escaped twice, as a JSON document printed inside a quoted string shows them).
fn forms_of(values: &[String]) -> Vec<Vec<u8>> {
    let mut forms = Vec::new();
    for value in values {
        forms.push(value.as_bytes().to_vec());
        forms.extend(base64_forms(value.as_bytes()).into_iter().map(String::into_bytes));
        forms.extend(json_forms(value).into_iter().map(String::into_bytes));
    }
    forms.retain(|form| !form.is_empty());
    forms.sort_unstable();
    forms.dedup();
    forms
}

/// How `value` can appear in base64 text: encoded alone (standard and URL-safe alphabets,
/// padded or not), and the characters that depend only on the value when it sits at any
/// of the three byte offsets inside a longer encoded text.
fn base64_forms(value: &[u8]) -> Vec<String> {
    let mut forms = Vec::new();
    for engine in [&STANDARD, &URL_SAFE] {
        let alone = engine.encode(value);
        forms.push(alone.trim_end_matches('=').to_owned());
        forms.push(alone);
        for offset in 0..3usize {
            let mut shifted = vec![0u8; offset];
            shifted.extend_from_slice(value);
            let encoded = engine.encode(&shifted);
            // Characters made only of the value's bits: after the offset's bits, before
            // the bits the next byte of the surrounding text would add.
            let start = (offset * 8).div_ceil(6);
            let end = (offset + value.len()) * 8 / 6;
            if end > start && end - start >= MIN_FORM_LENGTH {
                forms.push(encoded[start..end].to_owned());
            }
        }
    }
    forms
}

/// `value` inside a JSON string as encoders write it: `serde_json` (quotes, backslashes
/// and control characters escaped); Go's `encoding/json`, which Terraform's `jsonencode`
/// and `-json` outputs use (also `<`, `>`, `&`, U+2028 and U+2029 as `\uXXXX`); and
/// ASCII-only as Python's `json` writes it (every non-ASCII character as `\uXXXX`).
fn json_forms(value: &str) -> Vec<String> {
    let escaped = |escape_non_ascii: bool| {
        let mut form = String::with_capacity(value.len() * 2);
        for c in value.chars() {
            match c {
                '"' => form.push_str("\\\""),
                '\\' => form.push_str("\\\\"),
                '\n' => form.push_str("\\n"),
                '\r' => form.push_str("\\r"),
                '\t' => form.push_str("\\t"),
                '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => push_unicode_escape(&mut form, c),
                c if c.is_control() || (escape_non_ascii && !c.is_ascii()) => {
                    push_unicode_escape(&mut form, c);
                }
                c => form.push(c),
            }
        }
        form
    };
    let mut forms = vec![escaped(false), escaped(true)];
    if let Ok(quoted) = serde_json::to_string(value) {
        forms.push(quoted[1..quoted.len() - 1].to_owned());
    }
    forms
}

/// `c` as JSON `\uXXXX` escapes: a surrogate pair outside the Basic Multilingual Plane.
fn push_unicode_escape(form: &mut String, c: char) {
    let mut units = [0u16; 2];
    for unit in c.encode_utf16(&mut units) {
        form.push_str(&format!("\\u{unit:04x}"));
    }
}

/// A stretch of the stream, in bytes from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
}

/// The streaming state: what is held back, what each view has read, what to mask.
struct Scan {
    /// Text received but not released yet.
    held: String,
    /// Where `held` starts in the stream.
    held_from: usize,
    views: [View; 4],
    /// Stretches found to be a form of a value, each at whole characters.
    spans: Vec<Span>,
}

impl Scan {
    fn push(&mut self, automaton: &Automaton, text: &str) {
        let from = self.held_from + self.held.len();
        self.held.push_str(text);
        for (index, c) in text.char_indices() {
            for view in &mut self.views {
                view.read(automaton, c, from + index, &mut self.spans);
            }
        }
    }

    /// The output ended: an escape left incomplete was plain text after all.
    fn end(&mut self, automaton: &Automaton) {
        for view in &mut self.views {
            view.end(automaton, &mut self.spans);
        }
    }

    /// Releases, masked, the text no view may still find the start of a value in (all of
    /// it when `ended`).
    fn release(&mut self, automaton: &Automaton, ended: bool) -> String {
        let end = self.held_from + self.held.len();
        let mut until = if ended {
            end
        } else {
            self.views.iter().map(|view| view.needed_from(automaton, end)).min().unwrap_or(end)
        };
        let spans = merged(std::mem::take(&mut self.spans));
        // A stretch to mask that reaches past `until` is released whole, later.
        if let Some(straddling) = spans.iter().find(|span| span.start < until && span.end > until) {
            until = straddling.start;
        }
        let mut output = String::with_capacity(until - self.held_from);
        let mut at = self.held_from;
        for span in spans.iter().take_while(|span| span.end <= until) {
            output.push_str(&self.held[at - self.held_from..span.start - self.held_from]);
            output.push_str(MASK);
            at = span.end;
        }
        output.push_str(&self.held[at - self.held_from..until - self.held_from]);
        self.spans = spans.into_iter().filter(|span| span.end > until).collect();
        self.held.drain(..until - self.held_from);
        self.held_from = until;
        if ended {
            for view in &mut self.views {
                view.reset();
            }
        }
        output
    }
}

/// `spans` sorted, overlapping ones joined (adjacent ones stay apart: two values side by
/// side are two masks).
fn merged(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_unstable_by_key(|span| (span.start, span.end));
    let mut joined: Vec<Span> = Vec::with_capacity(spans.len());
    for span in spans {
        match joined.last_mut() {
            Some(last) if span.start < last.end => last.end = last.end.max(span.end),
            _ => joined.push(span),
        }
    }
    joined
}

/// How a view reads the text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Decoding {
    /// As it is.
    #[default]
    Literal,
    /// Without line breaks: base64 tools wrap their output.
    Unwrapped,
    /// JSON string escapes decoded: `\"`, `\\`, `\/`, `\n`..., `\uXXXX` (surrogate pairs
    /// too).
    Json,
    /// URL encoding decoded: `%XX` in either case, `+` as a space.
    Url,
}

/// The text as one decoding reads it, fed through the automaton.
#[derive(Default)]
struct View {
    decoding: Decoding,
    /// The automaton's state after the decoded bytes so far.
    state: u32,
    /// Where each of the last decoded bytes (at most as many as the longest form) came
    /// from: the character or escape that decoded to it.
    recent: VecDeque<Span>,
    /// An escape begun but not complete yet.
    escape: String,
    /// Where `escape` starts.
    escape_from: usize,
}

impl Default for Scan {
    fn default() -> Self {
        let view = |decoding| View { decoding, ..View::default() };
        Self {
            held: String::new(),
            held_from: 0,
            views: [
                view(Decoding::Literal),
                view(Decoding::Unwrapped),
                view(Decoding::Json),
                view(Decoding::Url),
            ],
            spans: Vec::new(),
        }
    }
}

/// What an escape begun in the text turned out to be.
enum Escape {
    /// More characters are needed to tell.
    Incomplete,
    /// Not an escape: its first character is plain text.
    Invalid,
    /// The first `consumed` bytes of the escape's text decode to `bytes`.
    Decoded { bytes: Decoded, consumed: usize },
}

/// Up to four decoded bytes.
struct Decoded {
    bytes: [u8; 4],
    len: usize,
}

impl Decoded {
    fn byte(byte: u8) -> Self {
        Self { bytes: [byte, 0, 0, 0], len: 1 }
    }

    fn char(c: char) -> Self {
        let mut bytes = [0u8; 4];
        let len = c.encode_utf8(&mut bytes).len();
        Self { bytes, len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl View {
    /// Reads character `c`, which sits at `at` in the stream.
    fn read(&mut self, automaton: &Automaton, c: char, at: usize, spans: &mut Vec<Span>) {
        let span = Span { start: at, end: at + c.len_utf8() };
        if !self.escape.is_empty() {
            self.escape.push(c);
            self.resolve_escape(automaton, spans);
            return;
        }
        match (self.decoding, c) {
            (Decoding::Unwrapped, '\n' | '\r') => {}
            (Decoding::Json, '\\') | (Decoding::Url, '%') => {
                self.escape.push(c);
                self.escape_from = at;
            }
            (Decoding::Url, '+') => self.decoded(automaton, b" ", span, spans),
            _ => self.decoded(automaton, Decoded::char(c).as_slice(), span, spans),
        }
    }

    fn resolve_escape(&mut self, automaton: &Automaton, spans: &mut Vec<Span>) {
        let escape = match self.decoding {
            Decoding::Json => json_escape(self.escape.as_bytes()),
            Decoding::Url => url_escape(self.escape.as_bytes()),
            Decoding::Literal | Decoding::Unwrapped => Escape::Invalid,
        };
        let (decoded, consumed) = match escape {
            Escape::Incomplete => return,
            // The escape character stands for itself.
            Escape::Invalid => (Decoded::byte(self.escape.as_bytes()[0]), 1),
            Escape::Decoded { bytes, consumed } => (bytes, consumed),
        };
        let text = std::mem::take(&mut self.escape);
        let from = self.escape_from;
        self.decoded(
            automaton,
            decoded.as_slice(),
            Span { start: from, end: from + consumed },
            spans,
        );
        // What followed the escape is read again, as text of its own.
        for (index, c) in text[consumed..].char_indices() {
            self.read(automaton, c, from + consumed + index, spans);
        }
    }

    /// Feeds the bytes that `source` decoded to, noting every form that ends here.
    fn decoded(
        &mut self,
        automaton: &Automaton,
        bytes: &[u8],
        source: Span,
        spans: &mut Vec<Span>,
    ) {
        for &byte in bytes {
            self.state = automaton.next(self.state, byte);
            if self.state == 0 {
                // Nothing begun: where earlier bytes came from no longer matters. Most
                // bytes of a log go this way.
                self.recent.clear();
                continue;
            }
            self.recent.push_back(source);
            if self.recent.len() > automaton.longest {
                self.recent.pop_front();
            }
            let matched = automaton.matched(self.state);
            if matched > 0 {
                let first = self.recent[self.recent.len() - matched];
                spans.push(Span { start: first.start, end: source.end });
            }
        }
    }

    /// Where the text this view may still find a form in starts: the decoded bytes that
    /// could begin one, or an escape not complete yet.
    fn needed_from(&self, automaton: &Automaton, end: usize) -> usize {
        // The depth never exceeds the bytes fed since the last reset, nor the longest
        // form, which is as many as `recent` keeps.
        match automaton.depth(self.state) {
            0 if self.escape.is_empty() => end,
            0 => self.escape_from,
            depth => self.recent[self.recent.len() - depth].start,
        }
    }

    fn end(&mut self, automaton: &Automaton, spans: &mut Vec<Span>) {
        let text = std::mem::take(&mut self.escape);
        let from = self.escape_from;
        for (index, c) in text.char_indices() {
            let span = Span { start: from + index, end: from + index + c.len_utf8() };
            self.decoded(automaton, Decoded::char(c).as_slice(), span, spans);
        }
    }

    fn reset(&mut self) {
        self.state = 0;
        self.recent.clear();
        self.escape.clear();
    }
}

/// Reads a JSON string escape (`escape` starts with `\`).
fn json_escape(escape: &[u8]) -> Escape {
    let Some(&kind) = escape.get(1) else { return Escape::Incomplete };
    let simple = match kind {
        b'"' => b'"',
        b'\\' => b'\\',
        b'/' => b'/',
        b'b' => 0x08,
        b'f' => 0x0c,
        b'n' => b'\n',
        b'r' => b'\r',
        b't' => b'\t',
        b'u' => return json_unicode_escape(escape),
        _ => return Escape::Invalid,
    };
    Escape::Decoded { bytes: Decoded::byte(simple), consumed: 2 }
}

/// `\uXXXX`, or a surrogate pair `\uXXXX\uXXXX`. A surrogate without its other half
/// decodes to U+FFFD, as encoders that meet one write it.
fn json_unicode_escape(escape: &[u8]) -> Escape {
    let replacement =
        Escape::Decoded { bytes: Decoded::char(char::REPLACEMENT_CHARACTER), consumed: 6 };
    let first = match hex4(&escape[2..]) {
        Hex::Invalid => return Escape::Invalid,
        Hex::Incomplete => return Escape::Incomplete,
        Hex::Value(first) => first,
    };
    if !(0xd800..0xdc00).contains(&first) {
        return match char::from_u32(u32::from(first)) {
            Some(c) => Escape::Decoded { bytes: Decoded::char(c), consumed: 6 },
            None => replacement,
        };
    }
    match escape.get(6..8) {
        None if escape.len() == 6 || escape[6..] == *b"\\" => return Escape::Incomplete,
        Some(b"\\u") => {}
        _ => return replacement,
    }
    match hex4(&escape[8..]) {
        Hex::Incomplete => Escape::Incomplete,
        Hex::Value(second) if (0xdc00..0xe000).contains(&second) => {
            let code = 0x10000 + ((u32::from(first) - 0xd800) << 10) + (u32::from(second) - 0xdc00);
            match char::from_u32(code) {
                Some(c) => Escape::Decoded { bytes: Decoded::char(c), consumed: 12 },
                None => replacement,
            }
        }
        Hex::Value(_) | Hex::Invalid => replacement,
    }
}

/// Reads a URL percent-escape (`escape` starts with `%`).
fn url_escape(escape: &[u8]) -> Escape {
    let digits = &escape[1..];
    if digits.iter().take(2).any(|digit| !digit.is_ascii_hexdigit()) {
        return Escape::Invalid;
    }
    match digits {
        [high, low, ..] => Escape::Decoded {
            bytes: Decoded::byte(hex_value(*high) << 4 | hex_value(*low)),
            consumed: 3,
        },
        _ => Escape::Incomplete,
    }
}

enum Hex {
    Incomplete,
    Invalid,
    Value(u16),
}

/// The four hexadecimal digits `digits` starts with.
fn hex4(digits: &[u8]) -> Hex {
    let digits = &digits[..digits.len().min(4)];
    if digits.iter().any(|digit| !digit.is_ascii_hexdigit()) {
        return Hex::Invalid;
    }
    if digits.len() < 4 {
        return Hex::Incomplete;
    }
    Hex::Value(digits.iter().fold(0u16, |value, &digit| value << 4 | u16::from(hex_value(digit))))
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

/// Aho-Corasick over bytes. Written here rather than taken from the `aho-corasick` crate
/// because streaming needs what that crate does not expose: the depth of each state (how
/// many of the last bytes may begin a form), which says how much text to hold back.
struct Automaton {
    nodes: Vec<Node>,
    /// The start state's transitions for every byte: most bytes of a log leave it there.
    root: Box<[u32; 256]>,
    /// The length of the longest form.
    longest: usize,
}

#[derive(Default)]
struct Node {
    /// Sorted by byte.
    children: Vec<(u8, u32)>,
    /// The state of the longest proper suffix of this state's bytes that begins a form.
    fail: u32,
    /// How many bytes lead here from the start state.
    depth: u32,
    /// The length of the longest form that ends with this state's bytes; 0 for none.
    matched: u32,
}

impl Automaton {
    fn new(forms: &[Vec<u8>]) -> Self {
        let mut nodes = vec![Node::default()];
        for form in forms {
            let mut state = 0;
            for &byte in form {
                state = match nodes[state].children.binary_search_by_key(&byte, |&(b, _)| b) {
                    Ok(index) => nodes[state].children[index].1 as usize,
                    Err(index) => {
                        let child = nodes.len();
                        let depth = nodes[state].depth + 1;
                        nodes.push(Node { depth, ..Node::default() });
                        nodes[state].children.insert(index, (byte, child as u32));
                        child
                    }
                };
            }
            nodes[state].matched = form.len() as u32;
        }
        let mut root = Box::new([0u32; 256]);
        for &(byte, child) in &nodes[0].children {
            root[usize::from(byte)] = child;
        }
        let mut automaton =
            Self { nodes, root, longest: forms.iter().map(Vec::len).max().unwrap_or(0) };
        // Breadth first: a failure link points to a shallower state, complete already.
        let mut queue: VecDeque<u32> =
            automaton.nodes[0].children.iter().map(|&(_, child)| child).collect();
        while let Some(state) = queue.pop_front() {
            for index in 0..automaton.nodes[state as usize].children.len() {
                let (byte, child) = automaton.nodes[state as usize].children[index];
                let fail = automaton.next(automaton.nodes[state as usize].fail, byte);
                let inherited = automaton.nodes[fail as usize].matched;
                let node = &mut automaton.nodes[child as usize];
                node.fail = fail;
                node.matched = node.matched.max(inherited);
                queue.push_back(child);
            }
        }
        automaton
    }

    fn next(&self, mut state: u32, byte: u8) -> u32 {
        loop {
            if state == 0 {
                return self.root[usize::from(byte)];
            }
            let node = &self.nodes[state as usize];
            if let Ok(index) = node.children.binary_search_by_key(&byte, |&(b, _)| b) {
                return node.children[index].1;
            }
            state = node.fail;
        }
    }

    fn depth(&self, state: u32) -> usize {
        self.nodes[state as usize].depth as usize
    }

    fn matched(&self, state: u32) -> usize {
        self.nodes[state as usize].matched as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_proto::api::Output;
    use proptest::prelude::*;
    use serde_json::json;

    /// Has a character of each kind some encoding writes differently: a space, quotes, a
    /// backslash, HTML-sensitive characters, a non-ASCII one, and base64's `+` and `/`.
    const SECRET: &str = "s3cr3t \"q\" \\ <&> é+/~ 4711";
    /// Outside the Basic Multilingual Plane: JSON writes it as a surrogate pair.
    const KEY: &str = "key-🔑-value";

    /// `input` masked as a whole, and streamed cut at every character boundary, and one
    /// character at a time: each way gives `expect`.
    fn check(values: &[&str], input: &str, expect: &str) {
        let masker = Masker::new(values.iter().copied());
        assert_eq!(masker.masked(input), expect, "whole: {input:?}");
        let cuts: Vec<usize> =
            (0..=input.len()).filter(|&cut| input.is_char_boundary(cut)).collect();
        for &cut in &cuts {
            let mut masker = Masker::new(values.iter().copied());
            let mut output = masker.push(&input[..cut]);
            output.push_str(&masker.push(&input[cut..]));
            output.push_str(&masker.finish());
            assert_eq!(output, expect, "cut at {cut}: {input:?}");
        }
        let mut masker = Masker::new(values.iter().copied());
        let mut output: String = input.chars().map(|c| masker.push(&c.to_string())).collect();
        output.push_str(&masker.finish());
        assert_eq!(output, expect, "one character at a time: {input:?}");
    }

    /// Percent-encoding of every byte but RFC 3986's unreserved characters.
    fn url_encoded(value: &str, upper: bool, space_as_plus: bool) -> String {
        value
            .bytes()
            .map(|byte| match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(byte).to_string()
                }
                b' ' if space_as_plus => "+".to_owned(),
                _ if upper => format!("%{byte:02X}"),
                _ => format!("%{byte:02x}"),
            })
            .collect()
    }

    #[test]
    fn literal_values_are_masked_wherever_they_appear() {
        let cases = [
            ("password=hunter22 and again hunter22.", "password=*** and again ***."),
            ("hunter22hunter22", "******"),
            ("no secret here, hunter2 is not it", "no secret here, hunter2 is not it"),
            ("", ""),
        ];
        for (input, expect) in cases {
            check(&["hunter22"], input, expect);
        }
        check(&[SECRET], &format!("value: {SECRET}\n"), "value: ***\n");
        check(&[KEY], &format!("[{KEY}]"), "[***]");
    }

    #[test]
    fn base64_forms_are_masked_alone_in_both_alphabets_with_and_without_padding() {
        // Three lengths: no padding, `==`, `=`.
        for secret in [SECRET.to_owned(), format!("{SECRET}!"), format!("{SECRET}!!")] {
            for engine in [&STANDARD, &URL_SAFE] {
                let padded = engine.encode(&secret);
                let unpadded = padded.trim_end_matches('=');
                check(&[&secret], &format!("b64 {padded}\n"), "b64 ***\n");
                check(&[&secret], &format!("b64 {unpadded}.\n"), "b64 ***.\n");
            }
        }
        // Its standard encoding has `+`, its URL-safe one `-`.
        assert_eq!(URL_SAFE.encode("~~~~~~"), "fn5-fn5-");
        check(&["~~~~~~"], "fn5-fn5- fn5+fn5+", "*** ***");
    }

    #[test]
    fn base64_forms_are_masked_at_every_alignment_inside_longer_base64() {
        for engine in [&STANDARD, &URL_SAFE] {
            for prefix in ["", "x", "xy", "xyz"] {
                let embedded = engine.encode(format!("{prefix}{SECRET}tail"));
                let output = Masker::new([SECRET]).masked(&embedded);
                assert!(output.contains(MASK), "{prefix:?}: {embedded} → {output}");
                for form in base64_forms(SECRET.as_bytes()) {
                    assert!(!output.contains(&form), "{prefix:?}: {form} in {output}");
                }
                // Only a few characters around the value, which also hold bits of its
                // neighbours, are left.
                assert!(output.len() <= embedded.len() - SECRET.len(), "{output}");
            }
        }
    }

    #[test]
    fn wrapped_base64_is_masked_across_its_line_breaks() {
        let encoded = STANDARD.encode(SECRET);
        let wrapped = format!("{}\n{}\n", &encoded[..10], &encoded[10..]);
        check(&[SECRET], &wrapped, "***\n");
        let crlf = format!("{}\r\n{}", &encoded[..20], &encoded[20..]);
        check(&[SECRET], &crlf, "***");
    }

    #[test]
    fn json_escaped_forms_are_masked_however_the_encoder_wrote_them() {
        let serde = serde_json::to_string(SECRET).unwrap();
        assert_eq!(serde, r#""s3cr3t \"q\" \\ <&> é+/~ 4711""#);
        let cases = [
            // serde_json, JavaScript.
            (serde.clone(), r#""***""#.to_owned()),
            // Go: HTML-sensitive characters escaped.
            (
                r#"{"token":"s3cr3t \"q\" \\ \u003c\u0026\u003e é+/~ 4711"}"#.to_owned(),
                r#"{"token":"***"}"#.to_owned(),
            ),
            // Python: ASCII only.
            (r#"["s3cr3t \"q\" \\ <&> \u00e9+/~ 4711"]"#.to_owned(), r#"["***"]"#.to_owned()),
            // Upper-case hexadecimal digits, an escaped solidus.
            (r#"s3cr3t \"q\" \\ \u003C&> \u00E9+\/~ 4711"#.to_owned(), "***".to_owned()),
            // Every character escaped.
            (SECRET.chars().map(|c| format!("\\u{:04x}", u32::from(c))).collect(), MASK.to_owned()),
            // A JSON document inside a JSON string: escaped twice.
            (
                serde_json::to_string(&json!({ "token": SECRET }).to_string()).unwrap(),
                r#""{\"token\":\"***\"}""#.to_owned(),
            ),
            // Terraform's `jsonencode` shown in a plan: Go's escapes, escaped again.
            (
                r#""\"s3cr3t \\\"q\\\" \\\\ \\u003c\\u0026\\u003e é+/~ 4711\"""#.to_owned(),
                r#""\"***\"""#.to_owned(),
            ),
        ];
        for (input, expect) in cases {
            check(&[SECRET], &input, &expect);
        }
        check(&[KEY], r#""key-\ud83d\udd11-value""#, r#""***""#);
        check(&[KEY], r#""key-\uD83D\uDD11-value""#, r#""***""#);
        check(&["line one\nline two\tend"], r#"{"v":"line one\nline two\tend"}"#, r#"{"v":"***"}"#);
    }

    #[test]
    fn url_encoded_forms_are_masked_in_either_case_with_either_space() {
        for upper in [true, false] {
            for space_as_plus in [true, false] {
                let encoded = url_encoded(SECRET, upper, space_as_plus);
                check(
                    &[SECRET],
                    &format!("https://x.test/?t={encoded}&n=1"),
                    "https://x.test/?t=***&n=1",
                );
            }
        }
        assert_eq!(
            url_encoded(SECRET, true, true),
            "s3cr3t+%22q%22+%5C+%3C%26%3E+%C3%A9%2B%2F~+4711"
        );
        // Only some characters encoded, as `encodeURIComponent` or a hand-written URL does.
        check(&[SECRET], "s3cr3t%20%22q%22%20%5c%20<&>%20é%2B/~%204711", "***");
        check(&[KEY], &format!("k={}", url_encoded(KEY, false, false)), "k=***");
    }

    #[test]
    fn text_that_only_looks_like_an_escape_passes_through_whole() {
        let inputs = [
            "héllo wörld ✓\n",
            r#"C:\Users\x "quoted" \u00e9 \ud83d alone \uZZZZ \u12"#,
            "100% done, 50%off, a+b=c, %zz %4 %",
            "trailing backslash \\",
            "trailing escape \\u00",
            "\r\n\r\n",
        ];
        for input in inputs {
            check(&["hunter22"], input, input);
            check(&[SECRET, KEY], input, input);
        }
    }

    #[test]
    fn held_text_that_turns_out_not_to_be_a_value_is_released() {
        let mut masker = Masker::new(["hunter22"]);
        assert_eq!(masker.push("a hun"), "a ");
        assert_eq!(masker.push("gry cat"), "hungry cat");
        assert_eq!(masker.push(" hunt"), " ");
        assert_eq!(masker.finish(), "hunt");
        let mut masker = Masker::new(["abcd", "abcdefgh"]);
        assert_eq!(masker.push("x abcde"), "x ", "abcde may still become abcdefgh");
        assert_eq!(masker.finish(), "***e", "the output ended: abcd is masked");
        let mut masker = Masker::new([SECRET]);
        assert_eq!(masker.push("done 100%"), "done 100", "%XX may follow");
        assert_eq!(masker.push("\n"), "%\n");
    }

    #[test]
    fn the_longest_value_wins_and_overlapping_values_are_one_mask() {
        check(&["abcd", "abcdefgh"], "xabcdefghx abcdx", "x***x ***x");
        check(&["abcdef", "defghi"], "abcdefghi", "***");
    }

    #[test]
    fn values_added_later_are_masked_from_then_on() {
        let mut masker = Masker::new(["hunter22"]);
        let mut output = masker.push("hunter22 then sealed-v");
        output.push_str(&masker.add(["sealed-value"]));
        output.push_str(&masker.push("sealed-value and hunter22 and "));
        output.push_str(&masker.push(&STANDARD.encode("sealed-value")));
        output.push_str(&masker.finish());
        assert_eq!(output, "*** then sealed-v*** and *** and ***");
        let mut masker = Masker::new(["hunter22"]);
        assert_eq!(masker.push("held: hunte"), "held: ");
        assert_eq!(masker.add(["sealed-value"]), "", "hunte may still become hunter22");
        assert_eq!(masker.push("r22 sealed-"), "*** ");
        assert_eq!(masker.push("value"), "");
        assert_eq!(masker.finish(), MASK);
        let mut masker = Masker::new([]);
        assert_eq!(masker.push("before "), "before ");
        assert_eq!(masker.add(["opened-value"]), "");
        assert_eq!(masker.push("opened-value"), "");
        assert_eq!(masker.finish(), MASK);
    }

    #[test]
    fn short_and_empty_values_are_masked_literally_or_ignored() {
        // Launchers refuse secrets this short where they are set; a masker given one
        // still masks it rather than letting it through.
        check(&["abc"], "abc xabcx", "*** x***x");
        assert!(Masker::new([""]).values.is_empty());
        check(&[""], "anything", "anything");
    }

    #[test]
    fn reports_are_masked_in_every_text_they_carry() {
        let masker = Masker::new([SECRET, "123456"]);
        let failed = masker.masked_report(RunReport::Failed {
            message: format!("cannot reach https://x.test/?t={}", url_encoded(SECRET, true, true)),
        });
        let RunReport::Failed { message } = failed else { panic!("{failed:?}") };
        assert_eq!(message, "cannot reach https://x.test/?t=***");
        let outputs = masker.masked_report(RunReport::Outputs {
            outputs: vec![
                Output { name: "plain".into(), value: Some(json!("nothing secret")), sensitive: false },
                Output {
                    name: "leaked".into(),
                    value: Some(json!({ "a": [SECRET, STANDARD.encode(SECRET)], SECRET: 1, "pin": 123456, "n": 7 })),
                    sensitive: false,
                },
                Output { name: "hidden".into(), value: None, sensitive: true },
            ],
        });
        let RunReport::Outputs { outputs } = outputs else { panic!("{outputs:?}") };
        assert_eq!(outputs[0].value, Some(json!("nothing secret")));
        assert_eq!(
            outputs[1].value,
            Some(json!({ "a": ["***", "***"], "***": 1, "pin": "***", "n": 7 }))
        );
        assert_eq!(outputs[2].value, None);
        let commit: RunReport = serde_json::from_value(json!({
            "kind": "commit_resolved", "sha": "0123abc", "message": format!("rotate {SECRET}"),
            "author": {
                "name": format!("dev {SECRET}"), "email": format!("{SECRET}@example.com"),
                "authored_at": "2026-12-02T10:00:00Z",
            },
        }))
        .unwrap();
        let commit = masker.masked_report(commit);
        let RunReport::CommitResolved { message, author: Some(author), .. } = commit else {
            panic!("{commit:?}")
        };
        assert_eq!(message, "rotate ***");
        assert_eq!((author.name.as_str(), author.email.as_str()), ("dev ***", "***@example.com"));
        assert!(matches!(masker.masked_report(RunReport::Applied), RunReport::Applied));
    }

    #[test]
    fn debug_output_shows_no_value_and_no_held_text() {
        let mut masker = Masker::new(["hunter22"]);
        assert_eq!(masker.push("hunte"), "");
        let shown = format!("{masker:?}");
        assert!(!shown.contains("hunte"), "{shown}");
        assert_eq!(shown, "Masker { values: 1, held_bytes: 5, .. }");
    }

    /// Every encoded form of `secret` the masker promises to mask, by name.
    fn encoded_forms(secret: &str) -> Vec<(String, String)> {
        let mut forms = vec![("literal".to_owned(), secret.to_owned())];
        for (alphabet, engine) in [("standard", &STANDARD), ("url-safe", &URL_SAFE)] {
            let padded = engine.encode(secret);
            forms.push((format!("base64 {alphabet}"), padded.clone()));
            forms.push((
                format!("base64 {alphabet} unpadded"),
                padded.trim_end_matches('=').to_owned(),
            ));
        }
        let serde = serde_json::to_string(secret).unwrap();
        forms.push(("json".to_owned(), serde[1..serde.len() - 1].to_owned()));
        forms.extend(json_forms(secret).into_iter().map(|form| ("json ascii".to_owned(), form)));
        for (upper, space_as_plus) in [(true, true), (true, false), (false, true), (false, false)] {
            let name = format!("url upper={upper} plus={space_as_plus}");
            forms.push((name, url_encoded(secret, upper, space_as_plus)));
        }
        forms
    }

    fn streamed(values: &[&str], text: &str, cuts: &[usize]) -> String {
        let mut cuts: Vec<usize> = cuts
            .iter()
            .map(|cut| cut % (text.len() + 1))
            .filter(|&cut| text.is_char_boundary(cut))
            .collect();
        cuts.sort_unstable();
        let mut masker = Masker::new(values.iter().copied());
        let mut output = String::new();
        let mut start = 0;
        for cut in cuts.into_iter().chain([text.len()]) {
            output.push_str(&masker.push(&text[start..cut]));
            start = cut;
        }
        output.push_str(&masker.finish());
        output
    }

    proptest! {
        #[test]
        fn no_encoded_form_survives_any_split(
            secret in "[a-zA-Z0-9 \"\\\\<>&+/=%_.~é🔑-]{4,24}",
            form in 0usize..16,
            before in "[ a-z0-9=\n]{0,40}",
            after in "[ a-z0-9=\n]{0,40}",
            cuts in prop::collection::vec(0usize..400, 0..8),
        ) {
            let forms = encoded_forms(&secret);
            let (name, encoded) = &forms[form % forms.len()];
            let text = format!("{before}{encoded}{after}{encoded}");
            let output = streamed(&[&secret], &text, &cuts);
            prop_assert!(!output.contains(encoded.as_str()), "{name}: {text:?} → {output:?}");
            prop_assert!(!output.contains(&secret), "{name}: {text:?} → {output:?}");
            prop_assert_eq!(&output, &Masker::new([secret.as_str()]).masked(&text));
        }

        #[test]
        fn no_base64_alignment_survives_any_split(
            secret in "[a-zA-Z0-9 \"\\\\<>&+/=%é-]{4,24}",
            before in prop::collection::vec(any::<u8>(), 0..8),
            after in prop::collection::vec(any::<u8>(), 0..8),
            url_safe in any::<bool>(),
            cuts in prop::collection::vec(0usize..400, 0..8),
        ) {
            let engine = if url_safe { &URL_SAFE } else { &STANDARD };
            let mut bytes = before;
            bytes.extend_from_slice(secret.as_bytes());
            bytes.extend_from_slice(&after);
            let text = engine.encode(&bytes);
            let output = streamed(&[&secret], &text, &cuts);
            for form in base64_forms(secret.as_bytes()) {
                prop_assert!(!output.contains(&form), "{text:?} → {output:?}");
            }
        }

        #[test]
        fn text_without_values_passes_through_unchanged(
            secret in "[a-zA-Z0-9 \"\\\\<>&+/%é-]{12,24}",
            text in "([ a-z0-9=\n\r\t\"+/%{}é✓-]|\\\\u[0-9a-fA-F]{0,4}|%[0-9a-fA-F]{0,2}|\\\\[nrt\"\\\\/]){0,60}",
            cuts in prop::collection::vec(0usize..400, 0..8),
        ) {
            prop_assume!(!Masker::new([secret.as_str()]).masked(&text).contains(MASK));
            prop_assert_eq!(streamed(&[&secret], &text, &cuts), text);
        }
    }
}
