//! Fuzz tests of the log renderer: a run's output is written by the run's own code, so any
//! text, cut into chunks anywhere, must render without a panic to HTML whose only markup
//! is the renderer's own spans, at most a fixed multiple of the input's size.

use proptest::prelude::*;

use super::AnsiHtml;
use gantry_testkit::fuzz::{self, within_hang_limit};

/// The largest output per input byte: `"` becomes `&quot;` (6 bytes), and a span (at most
/// about 100 bytes with every class) needs an SGR sequence of at least 3 bytes and a
/// character of text.
const OUTPUT_PER_INPUT_BYTE: usize = 40;
/// What one chunk may add beyond that: the span of a style carried over from the chunk
/// before, and the completion of a sequence kept pending from it (at most 64 bytes).
const OUTPUT_PER_CHUNK: usize = 128 + 64 * OUTPUT_PER_INPUT_BYTE;

/// Text dense in what the renderer treats specially: escape sequences of every kind,
/// their terminators and parameters, carriage returns, controls, markup characters and
/// multi-byte characters right after an ESC.
fn log_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(vec![
            "\x1b", "\x1b[", "\x1b]", "\x1b\\", "\x07", "\r", "\x08", "m", ";", ":", "[", "]",
            "0", "1", "5", "2", "31", "38;5;", "48;2;", "107", "999999", "<", ">", "&", "\"",
            "'", "\n", "\t", "é", "✓", "\u{85}", "\u{200b}", "a",
        ]).prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    prop::collection::vec(piece, 0..64).prop_map(|pieces| pieces.concat())
}

/// `text` cut at character boundaries at the given (arbitrary) positions.
fn chunks(text: &str, cuts: &[usize]) -> Vec<String> {
    let mut boundaries: Vec<usize> = cuts
        .iter()
        .map(|cut| cut % (text.len() + 1))
        .filter(|cut| text.is_char_boundary(*cut))
        .collect();
    boundaries.extend([0, text.len()]);
    boundaries.sort_unstable();
    boundaries.dedup();
    boundaries.windows(2).map(|pair| text[pair[0]..pair[1]].to_owned()).collect()
}

/// Checks that `html` is text, entities and balanced `<span class="ansi-…">` only.
fn assert_well_formed(html: &str) -> Result<(), TestCaseError> {
    let mut rest = html;
    let mut open_spans = 0usize;
    while let Some(position) = rest.find(['<', '>', '&']) {
        prop_assert!(
            !rest[..position].chars().any(|c| c.is_control() && c != '\n' && c != '\t'),
            "a control character in {:?}",
            html
        );
        rest = &rest[position..];
        if let Some(after) = rest.strip_prefix("<span class=\"") {
            let end = after.find("\">").ok_or_else(|| TestCaseError::fail("unclosed tag"))?;
            let classes = &after[..end];
            prop_assert!(
                classes.split(' ').all(|class| {
                    class.strip_prefix("ansi-").is_some_and(|name| {
                        !name.is_empty()
                            && name
                                .bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    })
                }),
                "class attribute {:?}",
                classes
            );
            open_spans += 1;
            rest = &after[end + 2..];
        } else if let Some(after) = rest.strip_prefix("</span>") {
            prop_assert!(open_spans > 0, "a span closed that was not opened: {:?}", html);
            open_spans -= 1;
            rest = after;
        } else if let Some(entity) =
            ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"].iter().find(|e| rest.starts_with(**e))
        {
            rest = &rest[entity.len()..];
        } else {
            return Err(TestCaseError::fail(format!("raw markup in {html:?}")));
        }
    }
    prop_assert!(!rest.chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
    prop_assert_eq!(open_spans, 0, "every piece closes its spans: {:?}", html);
    Ok(())
}

/// `html` without the renderer's spans, its entities decoded: the text a reader sees.
fn visible_text(html: &str) -> String {
    let mut text = String::new();
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        text.push_str(&rest[..start]);
        rest = &rest[start + rest[start..].find('>').unwrap() + 1..];
    }
    text.push_str(rest);
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

proptest! {
    #![proptest_config(fuzz::config(1024))]

    #[test]
    fn any_log_renders_as_escaped_html_of_bounded_size(
        text in log_text(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        within_hang_limit(move || {
            let chunks = chunks(&text, &cuts);
            let mut converter = AnsiHtml::new();
            for chunk in &chunks {
                let html = converter.push(chunk);
                assert_well_formed(&html)?;
                prop_assert!(
                    html.len() <= OUTPUT_PER_INPUT_BYTE * chunk.len() + OUTPUT_PER_CHUNK,
                    "{} bytes of HTML for a chunk of {}",
                    html.len(),
                    chunk.len()
                );
            }
            Ok::<_, TestCaseError>(())
        })?;
    }

    /// Text without escapes, carriage returns or controls comes out as it went in,
    /// however it is cut.
    #[test]
    fn plain_text_is_shown_exactly(
        text in "[^\\p{Cc}]{0,200}",
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut converter = AnsiHtml::new();
        let html: String = chunks(&text, &cuts).iter().map(|chunk| converter.push(chunk)).collect();
        prop_assert_eq!(visible_text(&html), text);
    }
}
