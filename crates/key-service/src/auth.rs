//! Who is calling: the admin (bearer token), a tenant's admin key behind keygate (on the
//! gateway listener only), or Envoy fetching keys and reporting usage (sync token).

use super::answer::ApiError;
use axum::http::HeaderMap;
use keygate::keys::digest;

/// Token digests and the names of keygate's identity headers.
pub struct Auth {
    pub admin_sha256: [u8; 32],
    /// `None`: `/keys` and `/usage` are open (restrict them by network).
    pub sync_sha256: Option<[u8; 32]>,
    /// The headers keygate sets on a judged request (from the plugin configuration).
    pub tenant_header: Option<String>,
    pub role_header: Option<String>,
    /// The header keygate names the key with (a tenant admin key's id, for the audit log).
    pub key_id_header: Option<String>,
    /// The role whose keys manage their own tenant's keys.
    pub tenant_admin_role: String,
    /// GitLab's token revocation API (`/v1/revoke_tokens`): the SHA-256 of the token GitLab
    /// sends in `Authorization`; `None`: the API is off.
    pub gitlab_revocation_sha256: Option<[u8; 32]>,
}

/// What a caller may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Every key.
    Admin,
    /// Only the keys of this tenant.
    Tenant(String),
}

impl Caller {
    pub fn may_see(&self, tenant: Option<&str>) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Tenant(t) => tenant == Some(t.as_str()),
        }
    }
}

/// Compares digests in time independent of where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let v = headers.get("authorization")?.as_bytes();
    let scheme = v.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| v.get(7..))
        .flatten()
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

fn header<'h>(headers: &'h HeaderMap, name: Option<&str>) -> Option<&'h str> {
    let mut values = headers.get_all(name?).iter();
    let first = values.next()?.to_str().ok()?;
    // A repeated identity header is not something keygate sends: trust neither.
    values.next().is_none().then_some(first)
}

impl Auth {
    /// Who `caller` is, for the audit log: the admin token, or the tenant admin key keygate
    /// judged (its id from keygate's header).
    pub fn actor_of(&self, headers: &HeaderMap, caller: &Caller) -> (&'static str, Option<String>) {
        match caller {
            Caller::Admin => ("admin", None),
            Caller::Tenant(_) => (
                "key",
                header(headers, self.key_id_header.as_deref()).map(str::to_string),
            ),
        }
    }

    /// Whether `token` is the admin token (the dashboard's sign-in).
    pub fn is_admin_token(&self, token: &[u8]) -> bool {
        same(&digest(token), &self.admin_sha256)
    }

    /// The admin API's caller. `gateway`: the request came in on the listener only Envoy
    /// reaches, so keygate's identity headers are trusted there (and nowhere else).
    pub fn admin(&self, headers: &HeaderMap, gateway: bool) -> Result<Caller, ApiError> {
        if bearer(headers).is_some_and(|t| same(&digest(t), &self.admin_sha256)) {
            return Ok(Caller::Admin);
        }
        if !gateway {
            return Err(ApiError::Unauthorized);
        }
        let tenant = header(headers, self.tenant_header.as_deref());
        let role = header(headers, self.role_header.as_deref());
        match (tenant, role) {
            (Some(t), Some(r)) if r == self.tenant_admin_role && !t.is_empty() => {
                Ok(Caller::Tenant(t.to_string()))
            }
            (Some(_), _) => Err(ApiError::Forbidden(format!(
                "Only keys with the {:?} role manage their tenant's API keys",
                self.tenant_admin_role
            ))),
            _ => Err(ApiError::Unauthorized),
        }
    }

    /// GitLab's token revocation API: `Ok(false)` when it is off; the token may come bare or
    /// as a bearer token (GitLab sends what it was configured with).
    pub fn gitlab_revocation(&self, headers: &HeaderMap) -> Result<bool, ApiError> {
        let Some(want) = &self.gitlab_revocation_sha256 else {
            return Ok(false);
        };
        let given = bearer(headers).or_else(|| {
            headers
                .get("authorization")
                .map(|v| v.as_bytes().trim_ascii())
                .filter(|t| !t.is_empty())
        });
        if given.is_some_and(|t| same(&digest(t), want)) {
            Ok(true)
        } else {
            Err(ApiError::Unauthorized)
        }
    }

    /// `/keys` and `/usage`: the sync token when one is configured.
    pub fn sync(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match &self.sync_sha256 {
            None => Ok(()),
            Some(want) if bearer(headers).is_some_and(|t| same(&digest(t), want)) => Ok(()),
            Some(_) => Err(ApiError::Unauthorized),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth {
            admin_sha256: digest(b"admin-secret"),
            sync_sha256: Some(digest(b"sync-secret")),
            tenant_header: Some("x-tenant-id".into()),
            role_header: Some("x-api-key-role".into()),
            key_id_header: Some("x-api-key-id".into()),
            tenant_admin_role: "admin".into(),
            gitlab_revocation_sha256: None,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_admin_token_works_everywhere_identity_headers_only_on_the_gateway() {
        let a = auth();
        let admin = headers(&[("authorization", "Bearer admin-secret")]);
        assert_eq!(a.admin(&admin, false).unwrap(), Caller::Admin);
        assert_eq!(a.admin(&admin, true).unwrap(), Caller::Admin);
        let tenant = headers(&[("x-tenant-id", "org_1"), ("x-api-key-role", "admin")]);
        assert!(matches!(
            a.admin(&tenant, false),
            Err(ApiError::Unauthorized)
        ));
        assert_eq!(
            a.admin(&tenant, true).unwrap(),
            Caller::Tenant("org_1".into())
        );
        let reader = headers(&[("x-tenant-id", "org_1"), ("x-api-key-role", "reader")]);
        assert!(matches!(
            a.admin(&reader, true),
            Err(ApiError::Forbidden(_))
        ));
        let twice = headers(&[
            ("x-tenant-id", "org_1"),
            ("x-tenant-id", "org_2"),
            ("x-api-key-role", "admin"),
        ]);
        assert!(matches!(a.admin(&twice, true), Err(ApiError::Unauthorized)));
        for wrong in [
            "Bearer admin-secreT",
            "Basic admin-secret",
            "Bearer ",
            "admin-secret",
        ] {
            let h = headers(&[("authorization", wrong)]);
            assert!(
                matches!(a.admin(&h, false), Err(ApiError::Unauthorized)),
                "{wrong}"
            );
        }
    }

    #[test]
    fn the_sync_token_guards_the_feed_when_configured() {
        let a = auth();
        assert!(a
            .sync(&headers(&[("authorization", "Bearer sync-secret")]))
            .is_ok());
        assert!(a
            .sync(&headers(&[("authorization", "Bearer admin-secret")]))
            .is_err());
        assert!(a.sync(&headers(&[])).is_err());
        let open = Auth {
            sync_sha256: None,
            ..auth()
        };
        assert!(open.sync(&headers(&[])).is_ok());
    }
}
