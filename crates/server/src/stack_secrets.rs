//! A stack's secret variables, kept sealed to its pool's certificate: checking what the
//! CLI sealed, sealing what a client sent in clear (the clear value is never stored or
//! logged), finding the values a pool reset left sealed to the old key, and sealing the
//! clear values an older server stored, once, at startup.

use gantry_crypto::{Certificate, SecretContext, read_secret_header, seal_secret};
use gantry_domain::EnvironmentVariable;
use gantry_domain::validation::validate_secret_value;
use gantry_proto::api;
use gantry_store::{PoolRecord, StackRecord, Store};

use crate::StartError;
use crate::error::ApiError;

/// The pool's certificate, which every pool has (the shared pool's included).
pub(crate) fn pool_certificate(pool: &PoolRecord) -> Result<Certificate, ApiError> {
    let pem = pool.certificate_pem.as_deref().ok_or_else(|| {
        ApiError::Internal(format!("pool {} has no certificate to seal secrets to", pool.name))
    })?;
    Certificate::from_pem(pem).map_err(|e| {
        ApiError::Internal(format!("the certificate of pool {} does not parse: {e}", pool.name))
    })
}

/// One variable as the server keeps it: a secret's value sealed to `pool` for `stack`.
/// A secret arrives sealed (checked: for this pool's current key, stack and variable) or
/// in clear (sealed here, after the length check the CLI makes before sealing).
pub(crate) fn stored_variable(
    pool: &PoolRecord,
    certificate: &Certificate,
    stack: &str,
    variable: api::EnvironmentVariable,
) -> Result<EnvironmentVariable, ApiError> {
    let name = variable.name;
    if !variable.secret {
        if variable.sealed_value.is_some() {
            return Err(ApiError::invalid(format!(
                "environment variable {name:?} has a sealed value but is not secret: only secret variables are sealed"
            )));
        }
        let value = variable.value.ok_or_else(|| {
            ApiError::invalid(format!("environment variable {name:?} has no value"))
        })?;
        return Ok(EnvironmentVariable { name, value, secret: false });
    }
    let pool_id = pool.id.to_string();
    let context = SecretContext { pool_id: &pool_id, stack, variable: &name };
    let sealed = match (variable.value, variable.sealed_value) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(format!(
                "secret variable {name:?} has both a value and a sealed value: send one"
            )));
        }
        (None, None) => {
            return Err(ApiError::invalid(format!("secret variable {name:?} has no value")));
        }
        (Some(value), None) => {
            validate_secret_value(&name, &value).map_err(|e| ApiError::invalid(e.to_string()))?;
            seal_secret(certificate, &context, &value).map_err(|e| {
                ApiError::Internal(format!("sealing secret variable {name:?} failed: {e}"))
            })?
        }
        (None, Some(sealed)) => {
            let header = read_secret_header(&sealed).map_err(|e| {
                ApiError::invalid(format!("the sealed value of secret variable {name:?}: {e}"))
            })?;
            if !header.is_in(&context) {
                return Err(ApiError::invalid(format!(
                    "the sealed value of secret variable {name:?} is not sealed for stack {stack} on pool {}: seal it for this stack, variable and pool",
                    pool.name
                )));
            }
            if !header.is_for(certificate) {
                return Err(ApiError::invalid(format!(
                    "the sealed value of secret variable {name:?} is sealed to another key than pool {}'s current certificate: fetch the certificate again (the pool may have been reset) and seal anew",
                    pool.name
                )));
            }
            sealed
        }
    };
    Ok(EnvironmentVariable { name, value: sealed, secret: true })
}

/// The names of the stack's secret variables that do not open with its pool's current
/// key: sealed before a pool reset, or for the pool the stack was on before.
pub(crate) fn stale_secrets(stack: &StackRecord, certificate: &Certificate) -> Vec<String> {
    let pool_id = stack.pool_id.to_string();
    stack
        .environment
        .iter()
        .filter(|variable| variable.secret)
        .filter(|variable| {
            let context =
                SecretContext { pool_id: &pool_id, stack: &stack.name, variable: &variable.name };
            !read_secret_header(&variable.value)
                .is_ok_and(|header| header.is_for(certificate) && header.is_in(&context))
        })
        .map(|variable| variable.name.clone())
        .collect()
}

/// Why the stack's runs cannot have its secrets, naming them and the ways out.
pub(crate) fn stale_message(stack: &str, pool: &str, names: &[String]) -> String {
    format!(
        "stack {stack}: the secret variables {} are sealed to a key pool {pool} no longer has (the pool was reset): give their values again (gantry stack secrets set {stack} --secret-env NAME=VALUE) or reseal them where the old pool key is (gantry stack secrets reseal {stack} --old-key FILE)",
        names.join(", ")
    )
}

/// Seals every secret value an older server stored in clear to its stack's pool
/// certificate, and erases the clear copies — all in one transaction. Idempotent: a
/// value already sealed is recognised and left as it is, so every start may call it.
pub(crate) async fn seal_clear_values(store: &dyn Store) -> Result<usize, StartError> {
    let pools: std::collections::HashMap<_, _> =
        store.list_pools().await?.into_iter().map(|pool| (pool.id, pool)).collect();
    let mut updates = Vec::new();
    let mut sealed_count = 0;
    for stack in store.list_stacks().await? {
        let clear = |variable: &EnvironmentVariable| {
            variable.secret && read_secret_header(&variable.value).is_err()
        };
        if !stack.environment.iter().any(clear) {
            continue;
        }
        let pool = pools.get(&stack.pool_id).ok_or_else(|| {
            StartError::Internal(format!("stack {} names a pool that does not exist", stack.name))
        })?;
        let certificate =
            pool_certificate(pool).map_err(|e| StartError::Internal(e.to_string()))?;
        let pool_id = pool.id.to_string();
        let mut environment = stack.environment.clone();
        for variable in environment.iter_mut().filter(|variable| clear(variable)) {
            let context =
                SecretContext { pool_id: &pool_id, stack: &stack.name, variable: &variable.name };
            variable.value = seal_secret(&certificate, &context, &variable.value).map_err(|e| {
                StartError::Internal(format!(
                    "sealing secret variable {} of stack {} failed: {e}",
                    variable.name, stack.name
                ))
            })?;
            sealed_count += 1;
        }
        updates.push((stack.id, stack.pool_id, environment));
    }
    if !updates.is_empty() {
        store.update_stack_environments(&updates).await?;
        tracing::warn!(
            stacks = updates.len(),
            variables = sealed_count,
            "sealed the secret variables stored in clear by an older server to their pools' certificates"
        );
    }
    Ok(sealed_count)
}
