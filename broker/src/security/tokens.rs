//! The auth file: principals, the SHA-256 of their bearer tokens, their
//! grants and quotas. Read once at start-up; tokens are never stored or
//! logged in plain text, and a presented token is compared against every
//! stored hash in constant time.
//!
//! ```toml
//! [[principal]]
//! name = "orders-service"
//! token_sha256 = "<64 hex digits, from `strata auth hash-token`>"
//! produce = ["orders*"]
//! consume = ["orders*"]
//! groups = ["orders-*"]
//! produce_bytes_per_sec = 1048576
//!
//! [[principal]]
//! name = "ops"
//! token_sha256 = "..."
//! admin = true
//!
//! # No token: reached only with a client certificate (signed by
//! # --tls-client-ca) whose subject CN is this name.
//! [[principal]]
//! name = "billing"
//! consume = ["orders*"]
//! ```

use std::sync::Arc;

use ring::digest::{SHA256, digest};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::acl::{Pattern, Principal};

/// Bytes of a SHA-256 digest.
const TOKEN_HASH_BYTES: usize = 32;

/// The SHA-256 of `token`, as lowercase hex (what the auth file stores).
pub fn hash_token(token: &str) -> String {
    digest(&SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_hex(hex: &str) -> Option<[u8; TOKEN_HASH_BYTES]> {
    let hex = hex.trim();
    if hex.len() != TOKEN_HASH_BYTES * 2 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; TOKEN_HASH_BYTES];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    principal: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    token_sha256: Option<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    produce: Vec<Pattern>,
    #[serde(default)]
    consume: Vec<Pattern>,
    #[serde(default)]
    groups: Vec<Pattern>,
    produce_bytes_per_sec: Option<u64>,
}

/// The principals of an auth file, each with its token's hash (if it has a
/// token).
#[derive(Clone)]
pub struct AuthTable {
    entries: Vec<(Arc<Principal>, Option<[u8; TOKEN_HASH_BYTES]>)>,
}

impl std::fmt::Debug for AuthTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: the hashes stay out of logs too.
        f.debug_list()
            .entries(self.entries.iter().map(|(p, _)| &p.name))
            .finish()
    }
}

impl AuthTable {
    /// Parses an auth file's text; the error names the problem, never a hash.
    pub fn parse(text: &str) -> Result<AuthTable, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut entries: Vec<(Arc<Principal>, Option<[u8; TOKEN_HASH_BYTES]>)> = Vec::new();
        for e in file.principal {
            if e.name.trim().is_empty() {
                return Err("a principal has an empty name".into());
            }
            if entries.iter().any(|(p, _)| p.name == e.name) {
                return Err(format!("principal {:?} is listed twice", e.name));
            }
            let hash = e
                .token_sha256
                .as_deref()
                .map(|hex| {
                    parse_hex(hex).ok_or_else(|| {
                        format!(
                            "principal {:?}: token_sha256 must be 64 hex digits (see `strata auth hash-token`)",
                            e.name
                        )
                    })
                })
                .transpose()?;
            if hash.is_some() && entries.iter().any(|(_, h)| *h == hash) {
                return Err(format!(
                    "principal {:?} has the same token as another principal",
                    e.name
                ));
            }
            if e.produce_bytes_per_sec == Some(0) {
                return Err(format!(
                    "principal {:?}: produce_bytes_per_sec must be positive (leave it out for no limit)",
                    e.name
                ));
            }
            entries.push((
                Arc::new(Principal {
                    name: e.name,
                    admin: e.admin,
                    produce: e.produce,
                    consume: e.consume,
                    groups: e.groups,
                    produce_bytes_per_sec: e.produce_bytes_per_sec,
                }),
                hash,
            ));
        }
        if entries.is_empty() {
            return Err("the auth file lists no [[principal]]".into());
        }
        Ok(AuthTable { entries })
    }

    /// The principal whose token this is. Every stored hash is compared, in
    /// constant time, so timing says nothing about which (if any) matched.
    pub fn authenticate(&self, token: &str) -> Option<Arc<Principal>> {
        let presented = digest(&SHA256, token.as_bytes());
        let mut found = None;
        for (principal, hash) in &self.entries {
            if let Some(hash) = hash
                && bool::from(hash.ct_eq(presented.as_ref()))
            {
                found = Some(principal.clone());
            }
        }
        found
    }

    /// The principal named `name`: the subject of a verified client
    /// certificate (the CA that signed it vouches for the name).
    pub fn by_certificate_name(&self, name: &str) -> Option<Arc<Principal>> {
        self.entries
            .iter()
            .find(|(p, _)| p.name == name)
            .map(|(p, _)| p.clone())
    }

    pub fn principals(&self) -> impl Iterator<Item = &Arc<Principal>> {
        self.entries.iter().map(|(p, _)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(token: &str) -> String {
        format!(
            "[[principal]]\nname = \"reader\"\ntoken_sha256 = \"{}\"\nconsume = [\"t*\"]\n",
            hash_token(token)
        )
    }

    #[test]
    fn a_token_authenticates_as_its_principal_and_others_do_not() {
        let table = AuthTable::parse(&file("s3cret")).unwrap();
        assert_eq!(table.authenticate("s3cret").unwrap().name, "reader");
        assert!(table.authenticate("s3cret ").is_none());
        assert!(table.authenticate("").is_none());
    }

    #[test]
    fn hashes_are_sha256_hex() {
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn malformed_files_are_refused_without_echoing_hashes() {
        assert!(AuthTable::parse("").is_err());
        let bad = "[[principal]]\nname = \"x\"\ntoken_sha256 = \"abcd\"\n";
        let err = AuthTable::parse(bad).unwrap_err();
        assert!(!err.contains("abcd"), "{err}");
        let dup = format!("{}{}", file("a"), file("b"));
        assert!(AuthTable::parse(&dup).is_err());
    }
}
