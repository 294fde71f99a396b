//! Masking secret values in a run's log before it leaves the launcher: each value, and
//! its base64 forms, becomes `***`, even when a value arrives split across two pieces of
//! output. Text that could be the start of a value is held back until the next piece
//! says whether it is one.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};

/// What replaces a masked value.
pub(crate) const MASK: &str = "***";

/// The shortest value masked: a shorter one would mask ordinary words of the log.
pub(crate) const MIN_MASKED_LENGTH: usize = 4;

/// Streams text through, masking a fixed set of values.
#[derive(Debug, Clone, Default)]
pub(crate) struct Masker {
    /// Every form to mask, longest first, so that a value wins over a shorter one
    /// starting at the same place.
    patterns: Vec<String>,
    /// The end of the text so far that may begin a pattern.
    held: String,
}

impl Masker {
    /// Masks `values` (each at least [`MIN_MASKED_LENGTH`] bytes long; shorter ones are
    /// ignored) and their base64 forms.
    pub(crate) fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut patterns = Vec::new();
        for value in values.into_iter().filter(|value| value.len() >= MIN_MASKED_LENGTH) {
            patterns.push(value.to_owned());
            patterns.extend(base64_forms(value.as_bytes()));
        }
        patterns.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        patterns.dedup();
        Self { patterns, held: String::new() }
    }

    /// The masked text that can be released now; a possible start of a value is kept
    /// for the next call.
    pub(crate) fn push(&mut self, text: &str) -> String {
        if self.patterns.is_empty() {
            return text.to_owned();
        }
        let mut input = std::mem::take(&mut self.held);
        input.push_str(text);
        self.scan(&input, false)
    }

    /// Releases what is held, masked: the output ended, so no value continues it.
    pub(crate) fn finish(&mut self) -> String {
        let held = std::mem::take(&mut self.held);
        self.scan(&held, true)
    }

    fn scan(&mut self, input: &str, ended: bool) -> String {
        let mut output = String::with_capacity(input.len());
        let mut rest = input;
        while let Some(first) = rest.chars().next() {
            let may_continue =
                |pattern: &&String| pattern.len() > rest.len() && pattern.starts_with(rest);
            if !ended && self.patterns.iter().any(|pattern| may_continue(&pattern)) {
                // What is left may begin a value, or a longer one than it already
                // holds: only the next piece of output can tell.
                self.held = rest.to_owned();
                break;
            }
            if let Some(pattern) = self.patterns.iter().find(|pattern| rest.starts_with(*pattern)) {
                output.push_str(MASK);
                rest = &rest[pattern.len()..];
            } else {
                output.push(first);
                rest = &rest[first.len_utf8()..];
            }
        }
        output
    }
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
            if end > start && end - start >= MIN_MASKED_LENGTH {
                forms.push(encoded[start..end].to_owned());
            }
        }
    }
    forms
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn masked_whole(values: &[&str], text: &str) -> String {
        let mut masker = Masker::new(values.iter().copied());
        let mut output = masker.push(text);
        output.push_str(&masker.finish());
        output
    }

    #[test]
    fn a_value_is_masked_wherever_it_appears() {
        assert_eq!(
            masked_whole(&["hunter22"], "password=hunter22 and again hunter22."),
            "password=*** and again ***."
        );
    }

    #[test]
    fn a_value_split_across_two_pieces_is_still_masked() {
        let mut masker = Masker::new(["hunter22"]);
        let first = masker.push("token: hun");
        let second = masker.push("ter22 done\n");
        assert_eq!(first, "token: ");
        assert_eq!(format!("{first}{second}"), "token: *** done\n");
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
    }

    #[test]
    fn base64_forms_are_masked_alone_and_inside_longer_base64() {
        let secret = "s3cr3t-value";
        let alone = STANDARD.encode(secret);
        assert_eq!(masked_whole(&[secret], &format!("b64 {alone}\n")), "b64 ***\n");
        for prefix in ["", "x", "xy", "xyz"] {
            let embedded = STANDARD.encode(format!("{prefix}{secret}tail"));
            let output = masked_whole(&[secret], &embedded);
            assert!(output.contains(MASK), "{prefix:?}: {embedded} → {output}");
            let core = &base64_forms(secret.as_bytes())[2..];
            assert!(core.iter().all(|form| !output.contains(form.as_str())), "{output}");
        }
        // Its standard encoding has `+`, its URL-safe one `-`.
        assert_eq!(URL_SAFE.encode("~~~~~~"), "fn5-fn5-");
        assert_eq!(masked_whole(&["~~~~~~"], "fn5-fn5- fn5+fn5+"), "*** ***");
    }

    #[test]
    fn the_longest_value_wins_and_short_values_are_ignored() {
        assert_eq!(masked_whole(&["abcd", "abcdefgh"], "xabcdefghx abcdx"), "x***x ***x");
        assert_eq!(masked_whole(&["abc"], "abc"), "abc");
        assert!(Masker::new(["abc"]).patterns.is_empty());
    }

    #[test]
    fn text_without_values_passes_through_whole() {
        let mut masker = Masker::new(["hunter22"]);
        assert_eq!(masker.push("héllo wörld ✓\n"), "héllo wörld ✓\n");
        assert_eq!(masker.finish(), "");
    }

    proptest! {
        #[test]
        fn no_split_of_the_output_lets_a_value_through(
            secret in "[a-zA-Z0-9+/=_-]{4,24}",
            before in "[ a-z0-9=\n]{0,40}",
            after in "[ a-z0-9=\n]{0,40}",
            cuts in prop::collection::vec(0usize..200, 0..6),
        ) {
            let text = format!("{before}{secret}{after}{secret}");
            let mut cuts: Vec<usize> = cuts.into_iter().map(|cut| cut % (text.len() + 1)).collect();
            cuts.sort_unstable();
            let mut masker = Masker::new([secret.as_str()]);
            let mut output = String::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([text.len()]) {
                output.push_str(&masker.push(&text[start..cut]));
                start = cut;
            }
            output.push_str(&masker.finish());
            prop_assert!(!output.contains(&secret), "{text:?} → {output:?}");
            prop_assert_eq!(output, masked_whole(&[secret.as_str()], &text));
        }
    }
}
