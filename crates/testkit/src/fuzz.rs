//! What the fuzz tests share: property tests (`proptest`) that feed parsers of hostile
//! input (envelopes, archives, tokens, request bodies, logs) arbitrary bytes and
//! mutations of valid inputs. By default each runs few enough cases to keep the test
//! suite quick; `GANTRY_FUZZ_CASES=100000` runs each fuzz test that many cases instead,
//! for a long search on demand.

use std::sync::mpsc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::Config;

/// The variable that sets how many cases every fuzz test runs.
pub const CASES_VARIABLE: &str = "GANTRY_FUZZ_CASES";

/// How long one case may take before it counts as a hang. A case takes milliseconds; the
/// margin covers a debug build on a loaded machine.
pub const HANG_LIMIT: Duration = Duration::from_secs(20);

/// proptest's configuration for a fuzz test: `default_cases` cases, or as many as
/// `GANTRY_FUZZ_CASES` says. Shrinking a failure is bounded in time too, since a hang's
/// every shrinking step may take [`HANG_LIMIT`].
pub fn config(default_cases: u32) -> Config {
    Config {
        cases: cases(std::env::var(CASES_VARIABLE).ok().as_deref(), default_cases),
        max_shrink_time: 120_000,
        ..Config::default()
    }
}

fn cases(value: Option<&str>, default_cases: u32) -> u32 {
    match value.map(str::trim) {
        None | Some("") => default_cases,
        Some(text) => match text.parse::<u32>() {
            Ok(cases) if cases > 0 => cases,
            // A typo must not silently run the short default instead of the long search.
            _ => panic!("{CASES_VARIABLE}={text:?}: expected a number of cases like 100000"),
        },
    }
}

/// Runs `case` on a thread of its own and returns what it returns, or panics when it
/// takes longer than [`HANG_LIMIT`]: a parser that loops forever fails its test instead
/// of stalling the test run. A panic inside `case` is passed on as it is.
pub fn within_hang_limit<T: Send + 'static>(case: impl FnOnce() -> T + Send + 'static) -> T {
    within(HANG_LIMIT, case)
}

fn within<T: Send + 'static>(limit: Duration, case: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = mpsc::channel();
    let worker = std::thread::Builder::new()
        .name("fuzz-case".to_owned())
        .spawn(move || {
            let _ = sender.send(case());
        })
        .expect("a thread for the fuzz case");
    match receiver.recv_timeout(limit) {
        Ok(value) => {
            let _ = worker.join();
            value
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the case sends its value before its thread ends"),
        },
        // The thread is left running: it cannot be stopped from outside.
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("the case did not finish within {limit:?}: it hangs")
        }
    }
}

/// One change to a valid input, as a fuzzer makes them. Positions are taken modulo the
/// input's length, so any mutation applies to any input (and shrinks towards its start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    FlipBit {
        at: usize,
        bit: u8,
    },
    /// Overwrites bytes in place, such as a length field with `ff ff`.
    Overwrite {
        at: usize,
        bytes: Vec<u8>,
    },
    Truncate {
        at: usize,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Remove {
        at: usize,
        len: usize,
    },
    /// Copies a range over another place (a repeated header, a replayed block).
    Duplicate {
        from: usize,
        len: usize,
        to: usize,
    },
    /// Exchanges two ranges of the same length (reordered blocks).
    Swap {
        a: usize,
        b: usize,
        len: usize,
    },
}

/// Bytes that make parsers take unusual paths: zero and maximal lengths, sign bits,
/// ASCII digits and separators.
fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => any::<u8>(),
        1 => prop::sample::select(vec![0x00, 0x01, 0x7f, 0x80, 0xff, b'0', b'9', b'/', b'.', b'"']),
    ]
}

fn few_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(interesting_byte(), 1..16)
}

/// One mutation, any kind.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>;
    prop_oneof![
        3 => (at(), 0..8u8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        2 => (at(), few_bytes()).prop_map(|(at, bytes)| Mutation::Overwrite { at, bytes }),
        1 => at().prop_map(|at| Mutation::Truncate { at }),
        2 => (at(), few_bytes()).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (at(), 1..64usize).prop_map(|(at, len)| Mutation::Remove { at, len }),
        1 => (at(), 1..512usize, at())
            .prop_map(|(from, len, to)| Mutation::Duplicate { from, len, to }),
        1 => (at(), at(), 1..512usize).prop_map(|(a, b, len)| Mutation::Swap { a, b, len }),
    ]
}

/// One to four mutations, applied in order.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..=4)
}

/// `original` with `mutations` applied. Ranges are clipped to the input; on an empty
/// input only insertions do anything.
pub fn apply(original: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = original.to_vec();
    for mutation in mutations {
        let len = bytes.len();
        if len == 0 && !matches!(mutation, Mutation::Insert { .. }) {
            continue;
        }
        let at = |position: usize| position % len;
        match mutation {
            Mutation::Insert { at: position, bytes: inserted } => {
                // Anywhere from the start to the very end.
                let at = position % (len + 1);
                bytes.splice(at..at, inserted.iter().copied());
            }
            Mutation::FlipBit { at: position, bit } => bytes[at(*position)] ^= 1 << (bit % 8),
            Mutation::Overwrite { at: position, bytes: new } => {
                let start = at(*position);
                let end = (start + new.len()).min(len);
                bytes[start..end].copy_from_slice(&new[..end - start]);
            }
            Mutation::Truncate { at: position } => bytes.truncate(at(*position)),
            Mutation::Remove { at: position, len: removed } => {
                let start = at(*position);
                bytes.drain(start..(start + removed).min(len));
            }
            Mutation::Duplicate { from, len: copied, to } => {
                let from = at(*from);
                let copied = bytes[from..(from + copied).min(len)].to_vec();
                let to = at(*to);
                let end = (to + copied.len()).min(len);
                bytes[to..end].copy_from_slice(&copied[..end - to]);
            }
            Mutation::Swap { a, b, len: swapped } => {
                let (first, second) = (at(*a).min(at(*b)), at(*a).max(at(*b)));
                // Two ranges that do not overlap and end inside the input.
                let swapped = (*swapped).min(second - first).min(len - second);
                for offset in 0..swapped {
                    bytes.swap(first + offset, second + offset);
                }
            }
        }
    }
    bytes
}

/// Mutations of `original`, as bytes.
pub fn mutated(original: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    mutations().prop_map(move |mutations| apply(&original, &mutations))
}

/// Arbitrary JSON whose object keys and strings are often one of `words` (separated by
/// white space): a parser's own field names and values, so that a document gets past
/// the first missing field and deep into the types it is read as.
pub fn json(words: &'static str) -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let word =
        prop::sample::select(words.split_whitespace().collect::<Vec<_>>()).prop_map(str::to_owned);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![3 => word.clone(), 1 => any::<String>()].prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        let key = prop_oneof![4 => word.clone(), 1 => any::<String>()];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..8)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// The runtime a fuzz test's shared service (a server, an endpoint) lives on, for the
/// test's whole process: its cases call into it with `block_on`.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime for the fuzz test")
}

/// The `content-type` of a fuzzed HTTP request: mostly JSON's, sometimes none, another
/// type, or JSON's with a charset that does not exist for it.
pub fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        6 => Just(Some("application/json")),
        1 => Just(None),
        1 => Just(Some("text/plain")),
        1 => Just(Some("application/json; charset=latin1")),
    ]
}

/// Checks an HTTP API's answer to one fuzzed request (`what` says which, in a failure):
/// a success, or a 4xx with the JSON error body (`{"error": {"code", "message"}}`);
/// never a 5xx, nor a refusal a client cannot read.
pub fn answered_cleanly(
    status: u16,
    body: &serde_json::Value,
    what: &str,
) -> Result<(), TestCaseError> {
    prop_assert!(status < 500, "{}: {} {}", what, status, body);
    if !(200..300).contains(&status) {
        prop_assert!((400..500).contains(&status), "{}: {} {}", what, status, body);
        let error = &body["error"];
        prop_assert!(
            error["code"].is_string() && error["message"].is_string(),
            "{}: {} without the JSON error body: {}",
            what,
            status,
            body
        );
    }
    Ok(())
}

/// How deep [`deep_tree`] goes: a path of one-letter directories this deep still fits the
/// 4,096 bytes of `PATH_MAX` from a temporary directory, so every call by path works.
pub const DEEP_TREE_DEPTH: usize = 1_500;

/// A chain of [`DEEP_TREE_DEPTH`] directories `d/d/…` under `root`, as a repository or a
/// run may hold; returns the deepest.
pub fn deep_tree(root: &std::path::Path) -> std::path::PathBuf {
    let mut deepest = root.to_path_buf();
    for _ in 0..DEEP_TREE_DEPTH {
        deepest.push("d");
        std::fs::create_dir(&deepest).expect("a directory of the deep tree");
    }
    deepest
}

/// Runs `walk` on a thread whose stack is far smaller than a tokio blocking thread's (2 MiB):
/// a walk that recurses once per level of a [`deep_tree`] overflows it and aborts the test.
pub fn on_small_stack<T: Send + 'static>(walk: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .name("small-stack".to_owned())
        .stack_size(128 * 1024)
        .spawn(walk)
        .expect("a thread for the walk")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_case_count_comes_from_the_variable_or_the_default() {
        assert_eq!(cases(None, 64), 64);
        assert_eq!(cases(Some(""), 64), 64);
        assert_eq!(cases(Some(" 100000 "), 64), 100_000);
        for bad in ["0", "many", "-5", "1e6"] {
            let panic = std::panic::catch_unwind(|| cases(Some(bad), 64)).unwrap_err();
            let message = panic.downcast_ref::<String>().unwrap();
            assert!(message.starts_with(&format!("GANTRY_FUZZ_CASES=\"{bad}\"")), "{message}");
        }
    }

    #[test]
    fn a_case_passes_on_its_value_and_its_panic() {
        assert_eq!(within_hang_limit(|| 7), 7);
        let panic = std::panic::catch_unwind(|| within_hang_limit(|| panic!("boom"))).unwrap_err();
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"boom"));
    }

    #[test]
    fn a_case_that_outlives_the_limit_fails_as_a_hang() {
        let slow = || std::thread::sleep(Duration::from_secs(30));
        let panic =
            std::panic::catch_unwind(|| within(Duration::from_millis(50), slow)).unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert_eq!(message, "the case did not finish within 50ms: it hangs");
    }

    fn check(mutation: Mutation, expect: &[u8]) {
        assert_eq!(apply(b"0123456789", std::slice::from_ref(&mutation)), expect, "{mutation:?}");
    }

    #[test]
    fn mutations_apply_anywhere_and_stay_inside_the_input() {
        check(Mutation::FlipBit { at: 12, bit: 0 }, b"0133456789");
        check(Mutation::Overwrite { at: 8, bytes: vec![0xff; 4] }, b"01234567\xff\xff");
        check(Mutation::Truncate { at: 3 }, b"012");
        check(Mutation::Insert { at: 10, bytes: b"ab".to_vec() }, b"0123456789ab");
        check(Mutation::Insert { at: 11, bytes: b"ab".to_vec() }, b"ab0123456789");
        check(Mutation::Remove { at: 7, len: 50 }, b"0123456");
        check(Mutation::Duplicate { from: 0, len: 3, to: 8 }, b"0123456701");
        check(Mutation::Swap { a: 6, b: 1, len: 3 }, b"0678451239");
        check(Mutation::Swap { a: 1, b: 2, len: 3 }, b"0213456789");
        check(Mutation::Swap { a: 4, b: 4, len: 3 }, b"0123456789");
        assert_eq!(apply(b"", &[Mutation::FlipBit { at: 3, bit: 1 }]), b"");
        assert_eq!(apply(b"", &[Mutation::Insert { at: 3, bytes: b"x".to_vec() }]), b"x");
    }
}
