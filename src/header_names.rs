//! Header names as upstreams read them. CGI, WSGI, PHP and Rack fold `X-Tenant-Id`,
//! `x_tenant_id` and `X_TENANT_ID` into one variable (`HTTP_X_TENANT_ID`), so a header keygate
//! owns, reads a key from or judges (method overrides) must be recognised in every spelling.

/// Headers that ask an upstream to run another method than the request line's (SPEC §2).
pub const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Headers some servers and frameworks route on instead of the request line's path (IIS URL
/// Rewrite, Zend/Laminas, older Symfony): keygate judges `:path`, so they never go upstream.
pub const PATH_OVERRIDES: [&str; 2] = ["x-original-url", "x-rewrite-url"];

/// The query parameter some frameworks (Express `method-override`, Laravel, Rails) also read.
pub const METHOD_OVERRIDE_PARAM: &str = "_method";

/// Whether `name` and `other` are spellings an upstream may fold into the same name: any case,
/// `_` and `-` alike (either way round).
pub fn folds_to(name: &str, other: &str) -> bool {
    let fold = |c: u8| {
        if c == b'_' {
            b'-'
        } else {
            c.to_ascii_lowercase()
        }
    };
    name.len() == other.len()
        && name
            .bytes()
            .zip(other.bytes())
            .all(|(a, b)| fold(a) == fold(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_fold() {
        for name in ["x-tenant-id", "X-Tenant-Id", "x_tenant_id", "X_TENANT-id"] {
            assert!(folds_to(name, "x-tenant-id"), "{name}");
            assert!(folds_to(name, "x_tenant_id"), "either way round: {name}");
        }
        for name in ["x-tenant-idx", "x-tenant_i", "xxtenant-id", "x-tenant.id"] {
            assert!(!folds_to(name, "x-tenant-id"), "{name}");
        }
    }
}
