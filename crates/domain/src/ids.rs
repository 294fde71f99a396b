//! Typed identifiers: ULIDs, sortable by creation time, one type per entity so that a
//! run id can never be passed where a worker id is expected.

use std::fmt;
use std::str::FromStr;

/// Why a string is not an identifier of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {kind} id: expected a 26-character ULID")]
pub struct IdParseError {
    kind: &'static str,
    value: String,
}

macro_rules! ulid_id {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(ulid::Ulid);

        impl $name {
            /// A fresh identifier from the clock and the system random source.
            pub fn generate() -> Self {
                Self(ulid::Ulid::new())
            }

            /// The identifier from its 128-bit value (tests, fixtures).
            pub const fn from_u128(value: u128) -> Self {
                Self(ulid::Ulid(value))
            }

            pub const fn to_u128(self) -> u128 {
                self.0.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(value: &str) -> Result<Self, Self::Err> {
                ulid::Ulid::from_string(value)
                    .map(Self)
                    .map_err(|_| IdParseError { kind: $kind, value: value.to_owned() })
            }
        }
    };
}

ulid_id!(
    /// A worker pool.
    PoolId, "pool"
);
ulid_id!(
    /// One worker slot: processes one run at a time.
    WorkerId, "worker"
);
ulid_id!(
    /// A stack: source, tool and settings that runs execute.
    StackId, "stack"
);
ulid_id!(
    /// One run of a stack.
    RunId, "run"
);
ulid_id!(
    /// One launcher session: a launcher process hosting worker slots.
    LauncherId, "launcher"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_text_form() {
        let id = RunId::generate();
        assert_eq!(id.to_string().parse::<RunId>(), Ok(id));
        assert_eq!(id.to_string().len(), 26);
    }

    #[test]
    fn a_malformed_id_names_its_kind_and_value() {
        let error = "nope".parse::<PoolId>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "\"nope\" is not a valid pool id: expected a 26-character ULID"
        );
    }
}
