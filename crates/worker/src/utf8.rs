//! Turns the tool's output bytes into text without ever splitting a character across
//! two log posts: an incomplete sequence at the end of a read waits for the next read.

/// Decodes a byte stream piece by piece; invalid bytes become U+FFFD, as
/// `String::from_utf8_lossy` does.
#[derive(Debug, Default)]
pub(crate) struct Utf8Decoder {
    /// At most the first three bytes of a character whose rest has not arrived yet.
    pending: Vec<u8>,
}

impl Utf8Decoder {
    /// The complete text of `pending` + `bytes`, keeping back an incomplete trailing
    /// character.
    pub(crate) fn decode(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut text = String::with_capacity(self.pending.len());
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(valid) => {
                    text.push_str(valid);
                    start = self.pending.len();
                }
                Err(error) => {
                    let valid_end = start + error.valid_up_to();
                    // Valid by `valid_up_to`, so nothing is replaced here.
                    text.push_str(&String::from_utf8_lossy(&self.pending[start..valid_end]));
                    start = valid_end;
                    // No error length: the input ends in the middle of a character.
                    let Some(invalid_len) = error.error_len() else { break };
                    text.push(char::REPLACEMENT_CHARACTER);
                    start += invalid_len;
                }
            }
        }
        self.pending.drain(..start);
        text
    }

    /// What is left when the stream ends: an unfinished character is invalid now.
    pub(crate) fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(reads: &[&[u8]], expect: &[&str]) {
        let mut decoder = Utf8Decoder::default();
        let mut pieces: Vec<String> = reads.iter().map(|read| decoder.decode(read)).collect();
        pieces.push(decoder.finish());
        assert_eq!(pieces, expect);
    }

    #[test]
    fn whole_text_passes_through() {
        check(&[b"plan\n", "▶ ok\n".as_bytes()], &["plan\n", "▶ ok\n", ""]);
    }

    #[test]
    fn a_character_split_across_reads_waits_for_its_end() {
        // "▶" is E2 96 B6.
        check(&[b"a\xe2", b"\x96", b"\xb6b"], &["a", "", "▶b", ""]);
    }

    #[test]
    fn invalid_bytes_are_replaced_and_decoding_goes_on() {
        check(&[b"a\xffb\xc3(c"], &["a\u{fffd}b\u{fffd}(c", ""]);
        check(&[b"\xe2\x96x"], &["\u{fffd}x", ""]);
    }

    #[test]
    fn an_unfinished_character_at_the_end_is_replaced() {
        check(&[b"ok\xe2\x96"], &["ok", "\u{fffd}"]);
    }
}
