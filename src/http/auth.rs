//! Authentication: a bearer token selects a tenant, either by its SHA-256 digest
//! (compared in constant time against every configured digest) or as a JWT signed for
//! a tenant's issuer and audience.

use std::sync::Arc;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::JwtSettings;

/// The tenant a request was authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub Arc<str>);

impl Tenant {
    pub fn id(&self) -> &str {
        &self.0
    }
}

/// SHA-256 of a token, in lower-case hex: the form tokens are configured in.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Verifies JWTs for one tenant.
pub struct JwtVerifier {
    validation: Validation,
    keys: Keys,
}

enum Keys {
    One(DecodingKey),
    Set(JwkSet),
}

impl JwtVerifier {
    /// Build from settings, reading key files. The message says what is wrong.
    pub fn from_settings(s: &JwtSettings) -> Result<Self, String> {
        if s.issuer.trim().is_empty() || s.audience.trim().is_empty() {
            return Err("issuer and audience must not be empty".into());
        }
        if s.algorithms.is_empty() {
            return Err("algorithms must list at least one algorithm".into());
        }
        let algorithms: Vec<Algorithm> = s
            .algorithms
            .iter()
            .map(|a| a.parse().map_err(|_| format!("unknown algorithm '{a}'")))
            .collect::<Result<_, _>>()?;
        let sources = [
            s.hs_secret.is_some(),
            s.public_key_pem_file.is_some(),
            s.jwks_file.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if sources != 1 {
            return Err("set exactly one of hs_secret, public_key_pem_file and jwks_file".into());
        }
        let hmac = algorithms
            .iter()
            .all(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
        let keys = if let Some(secret) = &s.hs_secret {
            if !hmac {
                return Err("hs_secret goes with HS256, HS384 or HS512 only".into());
            }
            if secret.expose_secret().len() < 32 {
                return Err("hs_secret must be at least 32 bytes".into());
            }
            Keys::One(DecodingKey::from_secret(secret.expose_secret().as_bytes()))
        } else if let Some(path) = &s.public_key_pem_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read public_key_pem_file {}: {e}", path.display()))?;
            let family = algorithms.first().copied().unwrap_or(Algorithm::RS256);
            if algorithms
                .iter()
                .any(|a| key_family(*a) != key_family(family))
            {
                return Err("with one public key, every algorithm must be of one family".into());
            }
            let key = match key_family(family) {
                KeyFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
                KeyFamily::Ec => DecodingKey::from_ec_pem(&pem),
                KeyFamily::Ed => DecodingKey::from_ed_pem(&pem),
                KeyFamily::Hmac => {
                    return Err("HS algorithms take hs_secret, not a public key".into());
                }
            }
            .map_err(|e| format!("public_key_pem_file {}: {e}", path.display()))?;
            Keys::One(key)
        } else {
            let path = s.jwks_file.as_ref().ok_or("no key configured")?;
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read jwks_file {}: {e}", path.display()))?;
            let set: JwkSet = serde_json::from_str(&text)
                .map_err(|e| format!("jwks_file {}: {e}", path.display()))?;
            if set.keys.is_empty() {
                return Err(format!("jwks_file {} holds no keys", path.display()));
            }
            Keys::Set(set)
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.set_issuer(&[s.issuer.as_str()]);
        validation.set_audience(&[s.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = s.leeway_secs;
        Ok(Self { validation, keys })
    }

    /// Is this a valid token for the tenant?
    pub fn verify(&self, token: &str) -> bool {
        let key = match &self.keys {
            Keys::One(k) => Some(k.clone()),
            Keys::Set(set) => {
                let kid = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid);
                let jwk = match kid {
                    Some(kid) => set.find(&kid),
                    None if set.keys.len() == 1 => set.keys.first(),
                    None => None,
                };
                jwk.and_then(|j| DecodingKey::from_jwk(j).ok())
            }
        };
        let Some(key) = key else { return false };
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &self.validation).is_ok()
    }
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum KeyFamily {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn key_family(a: Algorithm) -> KeyFamily {
    match a {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => KeyFamily::Hmac,
        Algorithm::ES256 | Algorithm::ES384 => KeyFamily::Ec,
        Algorithm::EdDSA => KeyFamily::Ed,
        _ => KeyFamily::Rsa,
    }
}

/// Every tenant's credentials.
pub struct Authenticator {
    digests: Vec<([u8; 32], Tenant)>,
    /// Tenants with a JWT verifier (built once, in [`crate::tenants::build`]).
    jwts: Vec<(Arc<crate::tenants::Tenant>, Tenant)>,
}

impl Authenticator {
    pub fn from_tenants(tenants: &[Arc<crate::tenants::Tenant>]) -> Result<Self, String> {
        let mut digests = Vec::new();
        let mut jwts = Vec::new();
        for t in tenants {
            let tenant = Tenant(Arc::from(t.id.as_str()));
            for d in &t.settings.token_sha256 {
                let bytes = hex::decode(d).map_err(|e| format!("tenant {}: {e}", t.id))?;
                let arr: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| format!("tenant {}: a digest must be 32 bytes", t.id))?;
                digests.push((arr, tenant.clone()));
            }
            if t.jwt.is_some() {
                jwts.push((t.clone(), tenant));
            }
        }
        Ok(Self { digests, jwts })
    }

    /// The tenant an `Authorization` header value authenticates, if any.
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<Tenant> {
        let header = authorization?.trim();
        let (scheme, token) = header.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let token = token.trim();
        if token.is_empty() {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compare with every digest, without stopping early, so timing says nothing
        // about which tenant (if any) came close.
        let mut found: Option<&Tenant> = None;
        for (d, tenant) in &self.digests {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(tenant);
            }
        }
        if let Some(t) = found {
            return Some(t.clone());
        }
        if token.matches('.').count() == 2 {
            return self
                .jwts
                .iter()
                .find(|(t, _)| t.jwt.as_ref().is_some_and(|v| v.verify(token)))
                .map(|(_, t)| t.clone());
        }
        None
    }
}
