//! Header names as upstreams read them. CGI, WSGI, PHP and Rack fold `X-Tenant-Id`,
//! `x_tenant_id` and `X_TENANT_ID` into one variable (`HTTP_X_TENANT_ID`), so a header keygate
//! owns, reads a key from or judges (method overrides) must be recognised in every spelling.

/// Headers that ask an upstream to run another method than the request line's (SPEC §2).
pub const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The query parameter some frameworks (Express `method-override`, Laravel, Rails) also read.
pub const METHOD_OVERRIDE_PARAM: &str = "_method";

/// Whether `name` is a spelling of `canonical` (lower-case, with dashes) that an upstream may
/// fold into the same name: any case, `_` for `-`.
pub fn folds_to(name: &str, canonical: &str) -> bool {
    name.len() == canonical.len()
        && name
            .bytes()
            .zip(canonical.bytes())
            .all(|(a, b)| a.eq_ignore_ascii_case(&b) || (a == b'_' && b == b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_fold() {
        for name in ["x-tenant-id", "X-Tenant-Id", "x_tenant_id", "X_TENANT-id"] {
            assert!(folds_to(name, "x-tenant-id"), "{name}");
        }
        for name in ["x-tenant-idx", "x-tenant_i", "xxtenant-id", "x-tenant.id"] {
            assert!(!folds_to(name, "x-tenant-id"), "{name}");
        }
    }
}
