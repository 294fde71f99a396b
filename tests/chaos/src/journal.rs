//! The host journal: one file per stack that every execution of the stack appends to,
//! from the host or from a run container through a bind mount. Its order is the order the
//! kernel applied the appends in, so whether two executions overlapped is read from the
//! file's order, not from clocks; each line also carries the worker-side time
//! (`/proc/uptime`, the same clock in containers, in hundredths of a second) for reports.

/// What an execution wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalEvent {
    Start,
    Tick,
    End,
}

/// One line of a journal: `<nonce> start|tick|end <uptime seconds>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub nonce: String,
    pub event: JournalEvent,
    /// `/proc/uptime` when it was written, in hundredths of a second.
    pub uptime_centis: u64,
}

/// Reads a journal; a line that is not one the script writes is an error naming it.
pub fn parse_journal(text: &str) -> Result<Vec<JournalEntry>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            parse_line(line).ok_or_else(|| {
                format!(
                    "journal line {}: {line:?}: expected `<nonce> start|tick|end <uptime>`",
                    index + 1
                )
            })
        })
        .collect()
}

fn parse_line(line: &str) -> Option<JournalEntry> {
    let mut words = line.split_whitespace();
    let nonce = words.next().filter(|nonce| crate::script::is_nonce(nonce))?;
    let event = match words.next()? {
        "start" => JournalEvent::Start,
        "tick" => JournalEvent::Tick,
        "end" => JournalEvent::End,
        _ => return None,
    };
    let uptime_centis = parse_uptime(words.next()?)?;
    words.next().is_none().then(|| JournalEntry { nonce: nonce.to_owned(), event, uptime_centis })
}

fn parse_uptime(text: &str) -> Option<u64> {
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let fraction = format!("{fraction:0<2}");
    Some(seconds.parse::<u64>().ok()? * 100 + fraction.get(..2)?.parse::<u64>().ok()?)
}

/// One execution as the journal shows it: the span of the file between its first and
/// its last line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournaledExecution {
    pub nonce: String,
    /// Index of its first and last journal line.
    pub first: usize,
    pub last: usize,
    pub first_uptime_centis: u64,
    pub last_uptime_centis: u64,
    pub ticks: usize,
    pub ended: bool,
}

/// The executions of one journal, in the order they started.
pub fn executions(entries: &[JournalEntry]) -> Vec<JournaledExecution> {
    let mut found: Vec<JournaledExecution> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let known = found.iter().position(|execution| execution.nonce == entry.nonce);
        let execution = match known {
            Some(at) => &mut found[at],
            None => {
                found.push(JournaledExecution {
                    nonce: entry.nonce.clone(),
                    first: index,
                    last: index,
                    first_uptime_centis: entry.uptime_centis,
                    last_uptime_centis: entry.uptime_centis,
                    ticks: 0,
                    ended: false,
                });
                found.last_mut().expect("just pushed")
            }
        };
        execution.last = index;
        execution.last_uptime_centis = entry.uptime_centis;
        match entry.event {
            JournalEvent::Start => {}
            JournalEvent::Tick => execution.ticks += 1,
            JournalEvent::End => execution.ended = true,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_and_bad_ones_are_named() {
        let entries =
            parse_journal("0a1b2c3d start 12.5\n0a1b2c3d tick 12.57\n0a1b2c3d end 13\n").unwrap();
        assert_eq!(entries[0].uptime_centis, 1250);
        assert_eq!(entries[1].uptime_centis, 1257);
        assert_eq!(
            entries[2],
            JournalEntry {
                nonce: "0a1b2c3d".into(),
                event: JournalEvent::End,
                uptime_centis: 1300
            }
        );
        let error = parse_journal("0a1b2c3d start 1\nxyz start 2\n").unwrap_err();
        assert!(error.starts_with("journal line 2: \"xyz start 2\""), "{error}");
    }

    #[test]
    fn executions_span_their_first_to_last_line() {
        let entries = parse_journal(
            "aaaaaaaa start 1\naaaaaaaa tick 2\nbbbbbbbb start 3\naaaaaaaa tick 4\nbbbbbbbb end 5\n",
        )
        .unwrap();
        let found = executions(&entries);
        assert_eq!(
            (found[0].first, found[0].last, found[0].ticks, found[0].ended),
            (0, 3, 2, false)
        );
        assert_eq!((found[1].first, found[1].last, found[1].ended), (2, 4, true));
    }
}
