//! API keys: `sb_` + 24 random characters, stored only as a SHA-256 hash, each belonging to
//! one tenant. The HTTP server authenticates with them; `statebase keys` manages them.

use crate::error::{Error, ResourceKind, Result};
pub use crate::model::{ApiKey, KeyLimits};
use crate::store::ServerStore;
use crate::{StateBase, Timestamp};
use sha2::{Digest, Sha256};

/// SHA-256 of a secret, hex.
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Lowercase hex of `bytes` (runs on every authenticated request: one allocation).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

impl<S: ServerStore> StateBase<S> {
    /// Makes a key for `tenant` and returns it with its secret, which is shown only now.
    pub async fn create_api_key(
        &self,
        tenant: &str,
        name: &str,
        limits: KeyLimits,
        expires_at: Option<Timestamp>,
    ) -> Result<(ApiKey, String)> {
        let secret = format!(
            "sb_{}{}",
            self.new_id("").as_str(),
            self.new_id("").as_str()
        );
        let key = self
            .import_api_key(tenant, name, &secret, limits, expires_at)
            .await?;
        Ok((key, secret))
    }

    /// Stores a key whose secret was chosen elsewhere (provisioning); a secret already
    /// stored returns its key unchanged.
    pub async fn import_api_key(
        &self,
        tenant: &str,
        name: &str,
        secret: &str,
        limits: KeyLimits,
        expires_at: Option<Timestamp>,
    ) -> Result<ApiKey> {
        let tenant = self.identifier("tenant", tenant.to_owned())?;
        if secret.len() < 16 || !secret.is_ascii() {
            return Err(Error::invalid(
                "key",
                "must be at least 16 ASCII characters",
            ));
        }
        let hash = hash_secret(secret);
        if let Some(existing) = self.store().api_key_by_hash(&hash).await? {
            return Ok(existing);
        }
        let key = ApiKey {
            id: self.new_id("key_"),
            tenant,
            name: name.to_owned(),
            key_prefix: secret.chars().take(7).collect(),
            key_hash: hash,
            rate_limit: limits.rate_limit.map(|r| r.max(1)),
            burst: limits.burst.map(|b| b.max(1)),
            is_active: true,
            created_at: self.now(),
            expires_at,
        };
        if let Err(e) = self.store().put_api_key(key.clone()).await {
            // Imported meanwhile by another process on the same store (servers starting
            // together with the same `--api-key`): that one stands.
            return match self.store().api_key_by_hash(&key.key_hash).await? {
                Some(existing) => Ok(existing),
                None => Err(e),
            };
        }
        Ok(key)
    }

    /// The key a secret belongs to, if it exists and works now.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<ApiKey>> {
        let key = self.store().api_key_by_hash(&hash_secret(secret)).await?;
        Ok(key.filter(|k| k.is_usable_at(self.now())))
    }

    /// Every key, or one tenant's.
    pub async fn list_api_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>> {
        self.store().list_api_keys(tenant).await
    }

    /// Revokes a key: it stops working at once. With `tenant`, only that tenant's key.
    pub async fn revoke_api_key(&self, id: &str, tenant: Option<&str>) -> Result<ApiKey> {
        let mut key = self
            .store()
            .api_key(id)
            .await?
            .filter(|k| tenant.is_none_or(|t| k.tenant == t))
            .ok_or_else(|| Error::not_found(ResourceKind::ApiKey, id))?;
        key.is_active = false;
        self.store().put_api_key(key.clone()).await?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_lowercase_sha256_hex_as_stored() {
        // Stored hashes must stay comparable: the FIPS 180-2 "abc" vector.
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hex(&[0x00, 0x0f, 0xf0, 0xff]), "000ff0ff");
    }
}
