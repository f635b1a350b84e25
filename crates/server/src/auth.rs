//! API tokens: `ign_<id>_<secret>`. Only a hash of the secret is stored; the secret is compared
//! in constant time.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::store::{self, Db};

fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A new token: `(id, secret, token)`. Fails only if the OS has no randomness to give.
pub fn mint_token() -> Result<(String, String, String), getrandom::Error> {
    let id = random_hex(6)?;
    let secret = random_hex(24)?;
    let token = format!("ign_{id}_{secret}");
    Ok((id, secret, token))
}

pub fn hash_secret(secret: &str) -> String {
    format!("{:x}", Sha256::digest(secret.as_bytes()))
}

/// The org of the request's bearer token.
pub async fn org_of(db: &Db, headers: &HeaderMap) -> Result<String, ApiError> {
    let missing = || {
        ApiError::unauthorized(
            "no valid API token; run `dodil ignite config set token <token>` or set DODIL_TOKEN",
        )
    };
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(missing)?;
    let (org, _) = check_token(db, value).await?.ok_or_else(missing)?;
    Ok(org)
}

/// `(org, token id)` of a live token, `None` for anything else (malformed, unknown, revoked,
/// a wrong secret).
pub async fn check_token(db: &Db, token: &str) -> Result<Option<(String, String)>, ApiError> {
    let Some((id, secret)) = token
        .strip_prefix("ign_")
        .and_then(|rest| rest.split_once('_'))
    else {
        return Ok(None);
    };
    let Some((org, stored)) = store::token(db, id).await? else {
        return Ok(None);
    };
    let given = hash_secret(secret);
    Ok(bool::from(given.as_bytes().ct_eq(stored.as_bytes())).then(|| (org, id.to_string())))
}

/// `bytes` random bytes from the OS, as hex.
pub fn random_token(bytes: usize) -> Result<String, ApiError> {
    random_hex(bytes).map_err(|e| ApiError::internal(format!("the OS gave no randomness: {e}")))
}
