//! Run logs as HTML: ANSI SGR colours and styles become `<span class="ansi-…">` (classes,
//! not inline styles, which the content security policy forbids), every other escape
//! sequence is dropped and all text is escaped. Stateful, because a live log arrives in
//! chunks and an escape sequence or a colour may run across two of them.
//!
//! Hand-written: the crates for this emit inline styles or whole documents, and none
//! keeps its state across chunks (the reason the CLI strips ANSI by hand too).

use std::fmt::Write as _;

/// The longest escape sequence kept waiting for the next chunk; longer ones are dropped.
const MAX_PENDING: usize = 64;

const ESC: char = '\u{1b}';

/// Converts one log, chunk after chunk.
#[derive(Debug, Default)]
pub(crate) struct AnsiHtml {
    style: Style,
    /// An escape sequence cut at the end of the last chunk.
    pending: String,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Style {
    bold: bool,
    dim: bool,
    italic: bool,
    underline: bool,
    inverse: bool,
    /// One of the 16 standard colours (8 to 15 are the bright ones).
    foreground: Option<u8>,
    background: Option<u8>,
}

impl Style {
    fn classes(self) -> String {
        let mut classes = Vec::new();
        for (on, class) in [
            (self.bold, "ansi-bold"),
            (self.dim, "ansi-dim"),
            (self.italic, "ansi-italic"),
            (self.underline, "ansi-underline"),
            (self.inverse, "ansi-inverse"),
        ] {
            if on {
                classes.push(class.to_owned());
            }
        }
        if let Some(colour) = self.foreground {
            classes.push(format!("ansi-fg-{colour}"));
        }
        if let Some(colour) = self.background {
            classes.push(format!("ansi-bg-{colour}"));
        }
        classes.join(" ")
    }

    /// Applies one SGR sequence's parameters (`1;31`, `38;5;9`, empty for a reset).
    fn apply(&mut self, parameters: &str) {
        let mut codes = parameters.split([';', ':']).map(|code| code.parse::<u16>().unwrap_or(0));
        while let Some(code) = codes.next() {
            match code {
                0 => *self = Self::default(),
                1 => self.bold = true,
                2 => self.dim = true,
                3 => self.italic = true,
                4 => self.underline = true,
                7 => self.inverse = true,
                22 => (self.bold, self.dim) = (false, false),
                23 => self.italic = false,
                24 => self.underline = false,
                27 => self.inverse = false,
                30..=37 => self.foreground = Some((code - 30) as u8),
                39 => self.foreground = None,
                40..=47 => self.background = Some((code - 40) as u8),
                49 => self.background = None,
                90..=97 => self.foreground = Some((code - 90 + 8) as u8),
                100..=107 => self.background = Some((code - 100 + 8) as u8),
                38 | 48 => {
                    let colour = extended_colour(&mut codes);
                    if code == 38 {
                        self.foreground = colour;
                    } else {
                        self.background = colour;
                    }
                }
                // Blinking, fonts, overlines and the like: shown as plain text.
                _ => {}
            }
        }
    }
}

/// Reads the rest of `38;5;n` or `38;2;r;g;b`. The 16 standard colours keep their class;
/// other palette and true colours have no class (a policy without inline styles cannot
/// show them exactly) and fall back to the default colour.
fn extended_colour(codes: &mut impl Iterator<Item = u16>) -> Option<u8> {
    match codes.next() {
        Some(5) => codes.next().filter(|index| *index < 16).map(|index| index as u8),
        Some(2) => {
            codes.take(3).for_each(drop);
            None
        }
        _ => None,
    }
}

/// One escape sequence found at the start of the text.
enum Escape<'a> {
    /// `ESC [ parameters m`
    Sgr(&'a str),
    /// Anything else complete: cursor moves, titles, character sets.
    Other,
    /// The text ends before the sequence does.
    Incomplete,
}

/// Reads the escape sequence `text` starts with (`text` starts with ESC); returns it and
/// its length in bytes.
fn escape(text: &str) -> (Escape<'_>, usize) {
    let bytes = text.as_bytes();
    match bytes.get(1) {
        None => (Escape::Incomplete, 0),
        Some(b'[') => {
            // CSI: parameter and intermediate bytes, then one final byte 0x40..=0x7E.
            match bytes[2..].iter().position(|byte| (0x40..=0x7e).contains(byte)) {
                None => (Escape::Incomplete, 0),
                Some(offset) => {
                    let end = 2 + offset;
                    let sequence = match bytes[end] {
                        b'm' => Escape::Sgr(&text[2..end]),
                        _ => Escape::Other,
                    };
                    (sequence, end + 1)
                }
            }
        }
        Some(b']') => {
            // OSC (a window title, a hyperlink): ends with BEL or ESC \. Any other ESC
            // cancels it, as in a terminal, and starts a sequence of its own: it is left
            // to be read next (the byte after it may be the start of a multi-byte
            // character, where no sequence may be cut).
            let Some(end) = text[2..].find(['\u{7}', ESC]).map(|offset| 2 + offset) else {
                return (Escape::Incomplete, 0);
            };
            match (bytes[end], bytes.get(end + 1)) {
                (7, _) => (Escape::Other, end + 1),
                (_, None) => (Escape::Incomplete, 0),
                (_, Some(b'\\')) => (Escape::Other, end + 2),
                (_, Some(_)) => (Escape::Other, end),
            }
        }
        // Two-character escapes (ESC 7, ESC =, ...): the second character is ASCII here;
        // anything else after ESC is kept as text.
        Some(byte) if byte.is_ascii() => (Escape::Other, 2),
        Some(_) => (Escape::Other, 1),
    }
}

impl AnsiHtml {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The HTML of the next piece of the log. Every span opened here is closed here, so
    /// each piece can be appended to the page on its own.
    pub(crate) fn push(&mut self, chunk: &str) -> String {
        let mut text = std::mem::take(&mut self.pending);
        text.push_str(chunk);
        let mut html = String::with_capacity(text.len() + 32);
        let mut segment_style = self.style;
        let mut segment = String::new();
        let mut rest = text.as_str();
        while let Some(start) = rest.find([ESC, '\r']) {
            segment.push_str(&rest[..start]);
            rest = &rest[start..];
            if rest.starts_with('\r') {
                // Carriage returns (progress lines) only matter to terminals.
                rest = &rest[1..];
                continue;
            }
            let (sequence, length) = escape(rest);
            match sequence {
                Escape::Incomplete => {
                    if rest.len() <= MAX_PENDING {
                        self.pending = rest.to_owned();
                    }
                    rest = "";
                    break;
                }
                Escape::Sgr(parameters) => {
                    self.style.apply(parameters);
                    if self.style != segment_style {
                        write_segment(&mut html, segment_style, &segment);
                        segment.clear();
                        segment_style = self.style;
                    }
                }
                Escape::Other => {}
            }
            rest = &rest[length..];
        }
        segment.push_str(rest);
        write_segment(&mut html, segment_style, &segment);
        html
    }
}

fn write_segment(html: &mut String, style: Style, text: &str) {
    if text.is_empty() {
        return;
    }
    let classes = style.classes();
    if classes.is_empty() {
        escape_into(html, text);
    } else {
        let _ = write!(html, "<span class=\"{classes}\">");
        escape_into(html, text);
        html.push_str("</span>");
    }
}

fn escape_into(html: &mut String, text: &str) {
    for character in text.chars() {
        match character {
            '&' => html.push_str("&amp;"),
            '<' => html.push_str("&lt;"),
            '>' => html.push_str("&gt;"),
            '"' => html.push_str("&quot;"),
            '\'' => html.push_str("&#39;"),
            // Other control characters (BEL, backspace) would be invisible or garbled.
            control if control.is_control() && control != '\n' && control != '\t' => {}
            other => html.push(other),
        }
    }
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// Converts `chunks` one after the other, as a live log arrives.
    fn check(chunks: &[&str], expect: &str) {
        let mut converter = AnsiHtml::new();
        let html: String = chunks.iter().map(|chunk| converter.push(chunk)).collect();
        assert_eq!(html, expect, "{chunks:?}");
    }

    #[test]
    fn plain_text_is_escaped() {
        check(
            &["a < b && c > \"d\" 'e'\n"],
            "a &lt; b &amp;&amp; c &gt; &quot;d&quot; &#39;e&#39;\n",
        );
        check(&["<script>alert(1)</script>"], "&lt;script&gt;alert(1)&lt;/script&gt;");
        check(&[""], "");
    }

    #[test]
    fn colours_and_styles_become_classes() {
        check(&["\x1b[31mred\x1b[0m plain"], "<span class=\"ansi-fg-1\">red</span> plain");
        check(
            &["\x1b[1;32mbold green\x1b[22m green\x1b[39m"],
            "<span class=\"ansi-bold ansi-fg-2\">bold green</span><span class=\"ansi-fg-2\"> green</span>",
        );
        check(
            &["\x1b[4;44;97mx\x1b[m"],
            "<span class=\"ansi-underline ansi-fg-15 ansi-bg-4\">x</span>",
        );
        check(
            &["\x1b[2m\x1b[3m\x1b[7mx"],
            "<span class=\"ansi-dim ansi-italic ansi-inverse\">x</span>",
        );
        check(
            &["\x1b[1mx\x1b[0m\x1b[1my"],
            "<span class=\"ansi-bold\">x</span><span class=\"ansi-bold\">y</span>",
        );
    }

    #[test]
    fn terraform_output_reads_as_terraform_prints_it() {
        check(
            &["\x1b[0m\x1b[1m\x1b[32mApply complete!\x1b[0m\x1b[0m\n"],
            "<span class=\"ansi-bold ansi-fg-2\">Apply complete!</span>\n",
        );
        check(
            &["  \x1b[32m+\x1b[0m\x1b[0m resource \"terraform_data\" \"x\" {\n"],
            "  <span class=\"ansi-fg-2\">+</span> resource &quot;terraform_data&quot; &quot;x&quot; {\n",
        );
    }

    #[test]
    fn extended_colours_keep_the_standard_sixteen_and_drop_the_rest() {
        check(&["\x1b[38;5;9mx"], "<span class=\"ansi-fg-9\">x</span>");
        check(&["\x1b[38;5;200mx\x1b[1my"], "x<span class=\"ansi-bold\">y</span>");
        check(&["\x1b[38;2;255;0;0;1mx"], "<span class=\"ansi-bold\">x</span>");
        check(&["\x1b[48;5;3mx"], "<span class=\"ansi-bg-3\">x</span>");
    }

    #[test]
    fn other_escape_sequences_and_controls_are_dropped() {
        check(&["a\x1b[2Kb\x1b[1Ac"], "abc");
        check(&["\x1b]0;title\x07text"], "text");
        check(&["\x1b]8;;https://x\x1b\\link\x1b]8;;\x1b\\"], "link");
        check(&["\x1b7a\x1b8"], "a");
        // An ESC inside a title ends it and is read as a sequence of its own, even when a
        // multi-byte character follows it (this once cut the character and panicked).
        check(&["\x1b]title\x1bé"], "é");
        check(&["\x1b]title\x1b[31mred"], "<span class=\"ansi-fg-1\">red</span>");
        check(&["50%\r100%\r\n"], "50%100%\n");
        check(&["bell\x07 back\x08\ttab"], "bell back\ttab");
        check(&["\x1bé"], "é");
    }

    #[test]
    fn a_sequence_split_across_chunks_is_completed_by_the_next_one() {
        check(&["a\x1b", "[31mb"], "a<span class=\"ansi-fg-1\">b</span>");
        check(&["a\x1b[3", "1mb\x1b[0", "m c"], "a<span class=\"ansi-fg-1\">b</span> c");
        check(&["\x1b]0;ti", "tle\x07x"], "x");
    }

    #[test]
    fn a_style_carries_over_to_the_next_chunk_in_a_span_of_its_own() {
        check(
            &["\x1b[33mwarn", "ing\n", "\x1b[0mdone"],
            "<span class=\"ansi-fg-3\">warn</span><span class=\"ansi-fg-3\">ing\n</span>done",
        );
    }

    #[test]
    fn an_endless_sequence_is_dropped_rather_than_kept() {
        let long = format!("\x1b[{}", "1;".repeat(100));
        check(&[&long, "m visible"], "m visible");
    }

    #[test]
    fn multibyte_text_around_sequences_stays_whole() {
        check(&["→ \x1b[31mé\x1b[0m ✓"], "→ <span class=\"ansi-fg-1\">é</span> ✓");
        check(&["\x1b[1m", "✓"], "<span class=\"ansi-bold\">✓</span>");
    }
}
