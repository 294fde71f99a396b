//! Who may do what: the roles an API key has, and the scope that bounds which pools and
//! stacks it reaches. Plain data and pure decisions; the server finds the targets.

use std::fmt;
use std::str::FromStr;

/// What an API key may do, each role able to do everything the ones before it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads pools, workers, stacks, runs and their logs.
    Reader,
    /// Also triggers, confirms, discards and stops runs.
    Writer,
    /// Also creates, resets, drains and cycles pools, manages stacks and prioritizes runs.
    Operator,
    /// Also manages API keys.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Reader, Role::Writer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Writer => "writer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a role: expected admin, operator, writer or reader")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(value: &str) -> Result<Self, UnknownRole> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == value)
            .ok_or_else(|| UnknownRole(value.to_owned()))
    }
}

/// One thing a scope reaches: a pool or stack by name, or every pool or stack with a
/// label. Written `pool:NAME`, `pool-label:LABEL`, `stack:NAME`, `stack-label:LABEL`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    Pool(String),
    PoolLabel(String),
    Stack(String),
    StackLabel(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a scope: expected pool:NAME, pool-label:LABEL, stack:NAME or stack-label:LABEL"
)]
pub struct InvalidSelector(pub String);

impl FromStr for Selector {
    type Err = InvalidSelector;

    fn from_str(value: &str) -> Result<Self, InvalidSelector> {
        let refuse = || InvalidSelector(value.to_owned());
        let (kind, what) = value.split_once(':').ok_or_else(refuse)?;
        if what.is_empty() || what.chars().any(char::is_whitespace) {
            return Err(refuse());
        }
        let what = what.to_owned();
        match kind {
            "pool" => Ok(Self::Pool(what)),
            "pool-label" => Ok(Self::PoolLabel(what)),
            "stack" => Ok(Self::Stack(what)),
            "stack-label" => Ok(Self::StackLabel(what)),
            _ => Err(refuse()),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pool(name) => write!(f, "pool:{name}"),
            Self::PoolLabel(label) => write!(f, "pool-label:{label}"),
            Self::Stack(name) => write!(f, "stack:{name}"),
            Self::StackLabel(label) => write!(f, "stack-label:{label}"),
        }
    }
}

/// A pool or stack as a scope sees it.
#[derive(Debug, Clone, Copy)]
pub struct Named<'a> {
    pub name: &'a str,
    pub labels: &'a [String],
}

/// The pools and stacks a key reaches: everything when it has no selector, else what
/// any of its selectors reaches. A stack is reached through its own name or labels, or
/// through its pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope(Vec<Selector>);

impl Scope {
    pub fn everything() -> Self {
        Self(Vec::new())
    }

    pub fn of(selectors: Vec<Selector>) -> Self {
        Self(selectors)
    }

    pub fn is_everything(&self) -> bool {
        self.0.is_empty()
    }

    pub fn selectors(&self) -> &[Selector] {
        &self.0
    }

    /// Parses the written form of each selector.
    pub fn parse<S: AsRef<str>>(written: &[S]) -> Result<Self, InvalidSelector> {
        written.iter().map(|s| s.as_ref().parse()).collect::<Result<_, _>>().map(Self)
    }

    /// The written form of each selector.
    pub fn written(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }

    pub fn covers_pool(&self, pool: Named<'_>) -> bool {
        self.is_everything()
            || self.0.iter().any(|selector| match selector {
                Selector::Pool(name) => name == pool.name,
                Selector::PoolLabel(label) => pool.labels.contains(label),
                Selector::Stack(_) | Selector::StackLabel(_) => false,
            })
    }

    pub fn covers_stack(&self, stack: Named<'_>, pool: Named<'_>) -> bool {
        self.covers_pool(pool)
            || self.0.iter().any(|selector| match selector {
                Selector::Stack(name) => name == stack.name,
                Selector::StackLabel(label) => stack.labels.contains(label),
                Selector::Pool(_) | Selector::PoolLabel(_) => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named<'a>(name: &'a str, labels: &'a [String]) -> Named<'a> {
        Named { name, labels }
    }

    #[test]
    fn roles_are_ordered_and_read_back() {
        assert!(Role::Reader < Role::Writer && Role::Writer < Role::Operator);
        assert!(Role::Operator < Role::Admin);
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().unwrap_err().to_string().contains("expected admin"));
    }

    #[test]
    fn selectors_read_back_and_refuse_what_they_do_not_know() {
        for written in ["pool:build", "pool-label:eu", "stack:web", "stack-label:prod"] {
            assert_eq!(written.parse::<Selector>().unwrap().to_string(), written);
        }
        for bad in ["build", "pool:", "pools:build", "pool:a b", ":x"] {
            assert!(bad.parse::<Selector>().is_err(), "{bad}");
        }
    }

    /// Scope, pool, its labels, stack, its labels, whether the scope covers the pool, and
    /// whether it covers the stack.
    type Case<'a> = (&'a [&'a str], &'a str, &'a [String], &'a str, &'a [String], bool, bool);

    #[test]
    fn a_scope_reaches_what_any_selector_reaches() {
        let eu = ["eu".to_owned()];
        let none: [String; 0] = [];
        let prod = ["prod".to_owned()];
        let cases: [Case<'_>; 8] = [
            (&[], "build", &none, "web", &none, true, true),
            (&["pool:build"], "build", &none, "web", &none, true, true),
            (&["pool:build"], "other", &none, "web", &none, false, false),
            (&["pool-label:eu"], "other", &eu, "web", &none, true, true),
            (&["stack:web"], "other", &none, "web", &none, false, true),
            (&["stack:web"], "other", &none, "api", &none, false, false),
            (&["stack-label:prod"], "other", &none, "api", &prod, false, true),
            (&["stack:api", "pool:build"], "build", &none, "web", &none, true, true),
        ];
        for (scope, pool, pool_labels, stack, stack_labels, pool_ok, stack_ok) in cases {
            let scope = Scope::parse(scope).unwrap();
            let pool = named(pool, pool_labels);
            assert_eq!(scope.covers_pool(pool), pool_ok, "{scope:?} {pool:?}");
            assert_eq!(scope.covers_stack(named(stack, stack_labels), pool), stack_ok);
        }
    }
}
