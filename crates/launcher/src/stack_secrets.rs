//! The stack's secret variables, which reach the launcher sealed to the pool key: opened
//! as the run is taken on, before its log starts (so they are masked from its first
//! line), and a clear failure naming the variables that do not open.

use gantry_crypto::{SecretContext, SecretError, open_secret};
use gantry_proto::agent::Assignment;

use crate::config::LauncherConfig;

/// Opens every sealed secret variable of the assignment into its `value`. One that does
/// not open keeps no value; [`refuse_unopened`] fails the run with the reason.
/// The values are sealed for this launcher's pool (named in its token), whose key alone
/// opens them.
pub(crate) fn open_in_place(config: &LauncherConfig, assignment: &mut Assignment) {
    let pool_id = config.pool_id.to_string();
    let stack = assignment.stack.name.clone();
    for variable in &mut assignment.stack.environment {
        let Some(sealed) = variable.sealed_value.as_deref().filter(|_| variable.secret) else {
            continue;
        };
        let context = SecretContext { pool_id: &pool_id, stack: &stack, variable: &variable.name };
        variable.value =
            open_secret(&config.key, &context, sealed).ok().map(|value| value.to_string());
    }
}

/// The run's failure when a secret variable of its stack did not open, naming them all.
pub(crate) fn refuse_unopened(
    config: &LauncherConfig,
    assignment: &Assignment,
) -> Result<(), String> {
    let pool_id = config.pool_id.to_string();
    let stack = &assignment.stack.name;
    let failures: Vec<(String, SecretError)> = assignment
        .stack
        .environment
        .iter()
        .filter(|variable| variable.secret && variable.value.is_none())
        .filter_map(|variable| {
            let sealed = variable.sealed_value.as_deref()?;
            let context = SecretContext { pool_id: &pool_id, stack, variable: &variable.name };
            let opened = open_secret(&config.key, &context, sealed);
            opened.err().map(|error| (variable.name.clone(), error))
        })
        .collect();
    let Some((_, first)) = failures.first() else { return Ok(()) };
    let names: Vec<&str> = failures.iter().map(|(name, _)| name.as_str()).collect();
    let remedy = if matches!(first, SecretError::WrongKey) {
        format!(
            ": give their values again (gantry stack secrets set {stack} --secret-env NAME=VALUE) or reseal them where the old pool key is (gantry stack secrets reseal {stack} --old-key FILE)"
        )
    } else {
        String::new()
    };
    Err(format!(
        "The secret variables {} of stack {stack} do not open with this pool's key: {first}{remedy}",
        names.join(", ")
    ))
}
