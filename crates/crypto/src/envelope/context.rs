//! What an envelope is bound to: the pool, stack, run and purpose it was sealed for. The
//! context string is the RSA-OAEP label or HPKE `info`, and its bytes are part of the
//! header hash that every chunk authenticates, so a blob opens only where it belongs.

use std::fmt;
use std::str::FromStr;

use super::EnvelopeError;

/// The first line of every v1 context string.
const CONTEXT_PREFIX: &str = "gantry-envelope-v1";

/// Which kind of run state a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// The packed workspace handed from plan to apply.
    Workspace,
    /// Managed Terraform state.
    State,
    /// A saved plan file.
    Plan,
    /// The values of a run's sensitive outputs, for the stacks that depend on its stack.
    Outputs,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Workspace => "workspace",
            Self::State => "state",
            Self::Plan => "plan",
            Self::Outputs => "outputs",
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A purpose name that is not `workspace`, `state`, `plan` or `outputs`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown envelope purpose {0:?}: expected workspace, state, plan or outputs")]
pub struct UnknownPurpose(pub String);

impl FromStr for Purpose {
    type Err = UnknownPurpose;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "workspace" => Ok(Self::Workspace),
            "state" => Ok(Self::State),
            "plan" => Ok(Self::Plan),
            "outputs" => Ok(Self::Outputs),
            other => Err(UnknownPurpose(other.to_owned())),
        }
    }
}

/// The pool, stack, run and purpose a blob is sealed for. Opening needs the same values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnvelopeContext {
    pub pool_id: String,
    pub stack_id: String,
    pub run_id: String,
    pub purpose: Purpose,
}

impl EnvelopeContext {
    /// The v1 context string:
    /// `gantry-envelope-v1\npool=<pool>\nstack=<stack>\nrun=<run>\npurpose=<purpose>`.
    ///
    /// Refuses ids holding control characters: a newline inside an id could make two
    /// different contexts render to the same string (`pool=a\nstack=b` + `stack=c` versus
    /// `pool=a` + `stack=b\nstack=c`), and the rendering must be injective for the binding
    /// to mean anything. The length must also fit the header's 2-byte length field.
    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        for (name, value) in
            [("pool", &self.pool_id), ("stack", &self.stack_id), ("run", &self.run_id)]
        {
            if value.is_empty() || value.chars().any(char::is_control) {
                return Err(EnvelopeError::InvalidContext(format!(
                    "the {name} id {value:?} is empty or holds control characters"
                )));
            }
        }
        let text = format!(
            "{CONTEXT_PREFIX}\npool={}\nstack={}\nrun={}\npurpose={}",
            self.pool_id, self.stack_id, self.run_id, self.purpose
        );
        if text.len() > usize::from(u16::MAX) {
            return Err(EnvelopeError::InvalidContext(format!(
                "{} bytes do not fit the header (at most {})",
                text.len(),
                u16::MAX
            )));
        }
        Ok(text.into_bytes())
    }

    /// Parses a v1 context string, for readable error messages only: opening compares the
    /// exact bytes.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let mut lines = text.split('\n');
        if lines.next()? != CONTEXT_PREFIX {
            return None;
        }
        let mut field = |name: &str| lines.next()?.strip_prefix(name).map(str::to_owned);
        let context = Self {
            pool_id: field("pool=")?,
            stack_id: field("stack=")?,
            run_id: field("run=")?,
            purpose: field("purpose=")?.parse().ok()?,
        };
        lines.next().is_none().then_some(context)
    }

    /// The [`EnvelopeError::WrongContext`] for a header whose context is `found` (the raw
    /// header bytes) while the caller expected `self`. Each side names its run and
    /// purpose, and its stack or pool only where those differ, so the message stays short:
    /// "sealed for run A (state), not for run B (workspace)".
    pub(crate) fn mismatch(&self, found: &[u8]) -> EnvelopeError {
        let found_text = String::from_utf8_lossy(found);
        let (expected, found) = match Self::parse(&found_text) {
            Some(found) => {
                let stacks_differ = found.stack_id != self.stack_id;
                let pools_differ = found.pool_id != self.pool_id;
                (
                    self.describe(stacks_differ, pools_differ),
                    found.describe(stacks_differ, pools_differ),
                )
            }
            None => (self.describe(true, true), format!("an unknown context {found_text:?}")),
        };
        EnvelopeError::WrongContext { expected, found }
    }

    fn describe(&self, with_stack: bool, with_pool: bool) -> String {
        let mut text = format!("run {} ({})", self.run_id, self.purpose);
        if with_stack {
            text.push_str(&format!(" of stack {}", self.stack_id));
        }
        if with_pool {
            text.push_str(&format!(" in pool {}", self.pool_id));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(pool: &str, stack: &str, run: &str, purpose: Purpose) -> EnvelopeContext {
        EnvelopeContext {
            pool_id: pool.to_owned(),
            stack_id: stack.to_owned(),
            run_id: run.to_owned(),
            purpose,
        }
    }

    #[test]
    fn the_context_string_is_exactly_the_v1_template_and_parses_back() {
        let original = context("P1", "S1", "R1", Purpose::State);
        let bytes = original.to_bytes().unwrap();
        assert_eq!(bytes, b"gantry-envelope-v1\npool=P1\nstack=S1\nrun=R1\npurpose=state");
        assert_eq!(EnvelopeContext::parse(std::str::from_utf8(&bytes).unwrap()), Some(original));
        assert_eq!(EnvelopeContext::parse("gantry-envelope-v1\npool=P"), None);
        assert_eq!(
            EnvelopeContext::parse(
                "gantry-envelope-v1\npool=P\nstack=S\nrun=R\npurpose=state\nextra"
            ),
            None
        );
    }

    #[test]
    fn purposes_round_trip_through_their_names() {
        for purpose in [Purpose::Workspace, Purpose::State, Purpose::Plan, Purpose::Outputs] {
            assert_eq!(purpose.to_string().parse::<Purpose>(), Ok(purpose));
        }
        let error = "logs".parse::<Purpose>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown envelope purpose \"logs\": expected workspace, state, plan or outputs"
        );
    }

    #[test]
    fn ids_that_could_forge_another_context_are_refused() {
        for (bad, message) in [
            (
                "a\nstack=b",
                r#"invalid envelope context: the pool id "a\nstack=b" is empty or holds control characters"#,
            ),
            (
                "",
                r#"invalid envelope context: the pool id "" is empty or holds control characters"#,
            ),
            (
                "tab\there",
                r#"invalid envelope context: the pool id "tab\there" is empty or holds control characters"#,
            ),
        ] {
            let error = context(bad, "S", "R", Purpose::Plan).to_bytes().unwrap_err();
            assert!(matches!(error, EnvelopeError::InvalidContext(_)), "{bad:?}: {error:?}");
            assert_eq!(error.to_string(), message);
        }
        let error = context("P", "", "R", Purpose::Plan).to_bytes().unwrap_err();
        assert!(error.to_string().contains("the stack id"), "{error}");
        let huge = "x".repeat(70_000);
        let error = context("P", "S", &huge, Purpose::Plan).to_bytes().unwrap_err();
        assert!(matches!(error, EnvelopeError::InvalidContext(_)), "{error:?}");
        assert!(error.to_string().contains("do not fit the header"), "{error}");
    }

    #[test]
    fn mismatches_name_both_sides_readably() {
        let check = |expected: EnvelopeContext, found: &[u8], message: &str| {
            assert_eq!(expected.mismatch(found).to_string(), message);
        };
        let found = context("P", "S", "X", Purpose::State).to_bytes().unwrap();
        check(
            context("P", "S", "Y", Purpose::Workspace),
            &found,
            "sealed for run X (state), not for run Y (workspace)",
        );
        check(
            context("P", "T", "X", Purpose::State),
            &found,
            "sealed for run X (state) of stack S, not for run X (state) of stack T",
        );
        check(
            context("Q", "S", "X", Purpose::State),
            &found,
            "sealed for run X (state) in pool P, not for run X (state) in pool Q",
        );
        check(
            context("P", "S", "X", Purpose::State),
            b"junk",
            "sealed for an unknown context \"junk\", not for run X (state) of stack S in pool P",
        );
    }
}
