//! The hostile corpus (SPEC §2 "What is judged is what is forwarded"): requests an attacker
//! would send, each with its exact answer and, for admitted ones, the exact path and identity
//! headers the upstream received. Run against a real Envoy twice (Envoy's default HCM settings,
//! then the shipped hardening), over HTTP/1.1 and h2c, from IPv4 and IPv6 clients. Every
//! admitted request's path is then read the way four kinds of upstream read paths, and none
//! may land on a path its key (or the lack of one) was denied.

mod common;

use common::readers;
use common::*;
use serde_json::json;

const PK: &str = "pk_live_publishable0001";
const SK: &str = "sk_live_secret0001";
const RK: &str = "rk_live_reader0001";
const IPK: &str = "sk_live_tenip0001";
const LOC: &str = "sk_live_local0001";
const KEYS: [&str; 5] = [PK, SK, RK, IPK, LOC];

const BAD_PATH: &str = r#"{"error":"Invalid request path","code":"BAD_REQUEST"}"#;
const PK_FORBIDDEN: &str = r#"{"error":"Publishable keys are read-only. Use a secret key for this request.","code":"FORBIDDEN"}"#;
const METHOD_FORBIDDEN: &str =
    r#"{"error":"API key is not allowed to use this method","code":"FORBIDDEN"}"#;
const IP_FORBIDDEN: &str =
    r#"{"error":"API key is not allowed from this IP address","code":"FORBIDDEN"}"#;
const PK_VERIFY: &str = r#"{"key":{"id":"pk","name":null,"environment":"LIVE","role":"publishable"},"organization":{"id":"org_1"}}"#;

fn plugin_config() -> String {
    json!({
        "key_sources": [
            {"header": "x-api-key"},
            {"header": "authorization", "scheme": "Bearer"},
            {"query": "api_key"}
        ],
        "prefixes": [
            {"prefix": "pk_live_", "environment": "LIVE", "role": "publishable"},
            {"prefix": "sk_live_", "environment": "LIVE", "role": "admin"},
            {"prefix": "rk_live_", "environment": "LIVE", "role": "reader"}
        ],
        "roles": {
            "publishable": {"methods": ["GET", "HEAD"], "paths": ["/v1/verify", "/v1/pricing/*"],
                            "forbidden_message": "Publishable keys are read-only. Use a secret key for this request."},
            "reader": {"methods": ["GET", "HEAD", "OPTIONS"]},
            "admin": {"methods": ["*"]}
        },
        "keys": [
            {"id": "pk", "sha256": sha(PK), "tenant": "org_1"},
            {"id": "sk", "sha256": sha(SK), "tenant": "org_1"},
            {"id": "rk", "sha256": sha(RK), "tenant": "org_2"},
            {"id": "ipk", "sha256": sha(IPK), "tenant": "org_3", "allowed_ips": ["10.0.0.0/8"]},
            {"id": "loc", "sha256": sha(LOC), "tenant": "org_3", "allowed_ips": ["127.0.0.0/8", "::1/128"]}
        ],
        "public_paths": ["/healthz", "/public/*"],
        "verify_path": "/v1/verify"
    })
    .to_string()
}

/// Who is calling: selects the key header added by default, the identity the upstream must
/// receive, and the paths the caller may reach (for the differential check).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Nobody,
    Pk,
    Sk,
    Rk,
    Ipk,
    Loc,
}

impl Who {
    fn key(self) -> Option<&'static str> {
        match self {
            Who::Nobody => None,
            Who::Pk => Some(PK),
            Who::Sk => Some(SK),
            Who::Rk => Some(RK),
            Who::Ipk => Some(IPK),
            Who::Loc => Some(LOC),
        }
    }

    /// (key id, tenant, role) the upstream must be told.
    fn identity(self) -> Option<(&'static str, &'static str, &'static str)> {
        match self {
            Who::Nobody => None,
            Who::Pk => Some(("pk", "org_1", "publishable")),
            Who::Sk => Some(("sk", "org_1", "admin")),
            Who::Rk => Some(("rk", "org_2", "reader")),
            Who::Ipk => Some(("ipk", "org_3", "admin")),
            Who::Loc => Some(("loc", "org_3", "admin")),
        }
    }

    /// Paths this caller may reach: (exact, below) patterns as segment lists; `None` = all.
    fn allowed(self) -> Option<Vec<(bool, Vec<&'static str>)>> {
        let mut public = vec![(true, vec!["healthz"]), (false, vec!["public"])];
        match self {
            Who::Nobody => Some(public),
            Who::Pk => {
                public.push((true, vec!["v1", "verify"]));
                public.push((false, vec!["v1", "pricing"]));
                Some(public)
            }
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Want {
    /// Reached the upstream with this path; `extra`: headers it must (`Some`) or must not
    /// (`None`) have received besides the identity headers of the caller.
    Up {
        path: String,
        extra: Vec<(&'static str, Option<&'static str>)>,
    },
    /// keygate answered with this status, JSON body and environment header.
    Keygate {
        status: u16,
        body: &'static str,
        env: Option<&'static str>,
    },
    /// Envoy itself refused the request before keygate (hardening, codec), with this body.
    Envoy { status: u16, body: &'static str },
}

#[derive(Clone, Debug)]
struct Case {
    name: String,
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    who: Who,
    v6: bool,
    want: Want,
    /// The answer on the hardened listener, where it differs.
    hardened: Option<Want>,
}

impl Case {
    fn h(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
    fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }
    fn v6(mut self) -> Self {
        self.v6 = true;
        self
    }
    /// No key header added for the caller (the case sets its own sources).
    fn bare(mut self) -> Self {
        self.headers.retain(|(k, _)| k != "x-api-key");
        self
    }
    fn hardened(mut self, w: Want) -> Self {
        self.hardened = Some(w);
        self
    }
    fn want(mut self, w: Want) -> Self {
        self.want = w;
        self
    }
}

fn case(who: Who, path: &str) -> Case {
    let headers = who
        .key()
        .map(|k| vec![("x-api-key".to_string(), k.to_string())])
        .unwrap_or_default();
    Case {
        name: String::new(),
        method: "GET",
        path: path.to_string(),
        headers,
        who,
        v6: false,
        want: up(path),
        hardened: None,
    }
}

fn up(path: &str) -> Want {
    Want::Up {
        path: path.to_string(),
        extra: vec![],
    }
}

fn up_with(path: &str, extra: &[(&'static str, Option<&'static str>)]) -> Want {
    Want::Up {
        path: path.to_string(),
        extra: extra.to_vec(),
    }
}

fn kg(status: u16, body: &'static str) -> Want {
    let env = (status != 401 || body == INVALID_LIVE).then_some("LIVE");
    Want::Keygate {
        status,
        body: if body == INVALID_LIVE { INVALID } else { body },
        env: if status == 400 { None } else { env },
    }
}

/// `INVALID` for a key whose prefix is known (the answer carries its environment).
const INVALID_LIVE: &str = "invalid, prefix known";

/// Envoy's answer to a path its hardening refuses.
fn envoy400() -> Want {
    Want::Envoy {
        status: 400,
        body: "",
    }
}

/// Envoy's HTTP/1 codec refusing a malformed request.
fn codec400() -> Want {
    Want::Envoy {
        status: 400,
        body: "Bad Request",
    }
}

fn corpus() -> Vec<Case> {
    use Who::*;
    let long_key = format!("sk_live_{}", "x".repeat(8 * 1024));
    let mut cases = vec![
        // Path spellings, judged for a publishable key (allowed: /v1/verify, /v1/pricing/*).
        case(Pk, "/v1/pricing/plans"),
        case(Pk, "/v1/admin").want(kg(403, PK_FORBIDDEN)),
        case(Pk, "/v1/admin/%2e%2e/pricing/x").want(up("/v1/pricing/x")),
        case(Pk, "/v1/admin/%2E%2E/pricing/x").want(up("/v1/pricing/x")),
        case(Pk, "/v1/admin/.%2e/pricing/x").want(up("/v1/pricing/x")),
        case(Pk, "/v1/admin/%2e./pricing/x").want(up("/v1/pricing/x")),
        case(Pk, "/v1/admin/../pricing/x").want(up("/v1/pricing/x")),
        case(Pk, "/v1/pricing/%2e%2e/admin").want(kg(403, PK_FORBIDDEN)),
        case(Pk, "/v1/pricing/../admin").want(kg(403, PK_FORBIDDEN)),
        case(Pk, "/v1/pricing/x/%2e%2e/%2e%2e/admin").want(kg(403, PK_FORBIDDEN)),
        case(Pk, "/v1/pricing/..%2fadmin")
            .want(kg(400, BAD_PATH))
            .hardened(envoy400()),
        case(Pk, "/v1/pricing/..%2Fadmin")
            .want(kg(400, BAD_PATH))
            .hardened(envoy400()),
        case(Pk, "/v1/pricing/%2e%2e%2fadmin")
            .want(kg(400, BAD_PATH))
            .hardened(envoy400()),
        case(Pk, "/v1/pricing/..%5cadmin")
            .want(kg(400, BAD_PATH))
            .hardened(envoy400()),
        case(Pk, "/v1/pricing/..%5Cadmin")
            .want(kg(400, BAD_PATH))
            .hardened(envoy400()),
        // Envoy's normalize_path reads a backslash as a slash; keygate refuses it.
        case(Pk, "/v1/pricing/..\\admin")
            .want(kg(400, BAD_PATH))
            .hardened(kg(403, PK_FORBIDDEN)),
        case(Pk, "/v1/pricing//../admin").want(up("/v1/pricing/admin")),
        case(Pk, "/v1/admin//../pricing/x").want(kg(403, PK_FORBIDDEN)),
        case(Pk, "//v1/pricing/x").want(up("/v1/pricing/x")),
        case(Pk, "/v1//pricing/x").want(up("/v1/pricing/x")),
        case(Pk, "/v1/pricing///x").want(up("/v1/pricing/x")),
        case(Pk, "/v1/pricing/./x").want(up("/v1/pricing/x")),
        case(Pk, "/v1/pricing/x/.").want(up("/v1/pricing/x/")),
        case(Pk, "/v1/pricing/%2E").want(up("/v1/pricing/")),
        case(Pk, "/v1/pricing/x/%2e%2e").want(up("/v1/pricing/")),
        case(Pk, "/v1/pricing/.../admin"),
        // `;` path parameters: Tomcat and others drop them before resolving dots.
        // Envoy's normalize_path reads `..;`/`.;` as dot segments too (as Tomcat does).
        case(Pk, "/v1/pricing/..;/admin")
            .want(kg(400, BAD_PATH))
            .hardened(kg(403, PK_FORBIDDEN)),
        case(Pk, "/v1/pricing/..;x=1/admin")
            .want(kg(400, BAD_PATH))
            .hardened(kg(403, PK_FORBIDDEN)),
        case(Pk, "/v1/pricing/.;/admin")
            .want(kg(400, BAD_PATH))
            .hardened(up("/v1/pricing/admin")),
        case(Pk, "/v1/pricing/%2e%2e;/admin").want(kg(400, BAD_PATH)),
        case(Pk, "/v1/pricing/..%3b/admin").want(kg(400, BAD_PATH)),
        case(Pk, "/v1/pricing/;/../admin")
            .want(kg(400, BAD_PATH))
            .hardened(up("/v1/pricing/admin")),
        case(Pk, "/v1/pricing;x/../admin").want(kg(403, PK_FORBIDDEN)),
        case(Pk, "/v1/pricing/x;v=2"),
        case(Pk, "/v1/pricing;v=2/x").want(kg(403, PK_FORBIDDEN)),
        // Double encoding, other escapes, bytes that cannot be judged.
        case(Pk, "/v1/pricing/%252e%252e/admin").want(kg(400, BAD_PATH)),
        case(Pk, "/v1/pricing/%25%32%65%25%32%65/admin").want(kg(400, BAD_PATH)),
        case(Pk, "/v1/pricing/%252f").want(kg(400, BAD_PATH)),
        case(Pk, "/v1/%70ricing/x").want(up("/v1/pricing/x")),
        case(Pk, "/v1/pricing/a%20b"),
        case(Pk, "/v1/pricing/a%3ab").want(up("/v1/pricing/a%3Ab")),
        case(Pk, "/v1/pricing/x%00")
            .want(kg(400, BAD_PATH))
            .hardened(envoy400()),
        case(Pk, "/v1/pricing/x%0d%0a").want(kg(400, BAD_PATH)),
        case(Pk, "/v1/pricing/%zz").want(kg(400, BAD_PATH)),
        case(Pk, "/v1/pricing/%2").want(kg(400, BAD_PATH)),
        // Envoy's normalize_path clamps `..` at the root; keygate refuses it.
        case(Pk, "/../v1/pricing/x")
            .want(kg(400, BAD_PATH))
            .hardened(up("/v1/pricing/x")),
        case(Pk, "/v1/pricing/../../..")
            .want(kg(400, BAD_PATH))
            .hardened(kg(403, PK_FORBIDDEN)),
        case(Pk, "/v1/pricing/x?y=1"),
        case(Pk, "/v1/pricing/x?y=../../admin"),
        case(Pk, "/v1/pricing/x?y=%2e%2e%2fadmin"),
        case(Pk, "/v1/pricing/../admin?x=/v1/pricing").want(kg(403, PK_FORBIDDEN)),
        case(Pk, "/v1/verify").want(Want::Keygate {
            status: 200,
            body: PK_VERIFY,
            env: Some("LIVE"),
        }),
        case(Pk, "/v1/x/../verify").want(Want::Keygate {
            status: 200,
            body: PK_VERIFY,
            env: Some("LIVE"),
        }),
        case(Pk, "/v1/verify/").want(kg(403, PK_FORBIDDEN)),
        case(Pk, "/v1/pricing"),
        case(Pk, "/v1/pricingx").want(kg(403, PK_FORBIDDEN)),
        case(Pk, "/V1/pricing/x").want(kg(403, PK_FORBIDDEN)),
        case(Pk, "/v1/pricing/x")
            .method("POST")
            .want(kg(403, PK_FORBIDDEN)),
        case(Pk, "/v1/admin/%2e%2e/pricing/x")
            .v6()
            .want(up("/v1/pricing/x")),
        // Public paths: no key needed, none forwarded, no climbing out of (or into) them.
        case(Nobody, "/healthz"),
        case(Nobody, "/healthz/").want(kg(401, MISSING)),
        case(Nobody, "/healthz/../v1/admin").want(kg(401, MISSING)),
        case(Nobody, "/public/%2e%2e/v1/admin").want(kg(401, MISSING)),
        case(Nobody, "/public/..%2fv1/admin")
            .want(kg(400, BAD_PATH))
            .hardened(envoy400()),
        case(Nobody, "/admin/..%2fpublic/x")
            .want(kg(400, BAD_PATH))
            .hardened(envoy400()),
        case(Nobody, "/v1/admin/../../public/x").want(up("/public/x")),
        case(Nobody, "/public/x/../y").want(up("/public/y")),
        case(Nobody, "//public/x").want(up("/public/x")),
        case(Nobody, "/public/..;/v1/admin")
            .want(kg(400, BAD_PATH))
            .hardened(kg(401, MISSING)),
        case(Nobody, "/public;x/a").want(kg(401, MISSING)),
        case(Nobody, "/public/x/%2e%2e/%2e%2e/v1").want(kg(401, MISSING)),
        case(Nobody, &format!("/healthz?api_key={SK}")).want(up("/healthz")),
        case(Nobody, &format!("/healthz?a=1&api_key={SK}&b=2")).want(up("/healthz?a=1&b=2")),
        case(Nobody, "/healthz")
            .h("x-api-key", SK)
            .want(up_with("/healthz", &[("x-api-key", None)])),
        case(Nobody, "/healthz")
            .h("authorization", &format!("Bearer {SK}"))
            .want(up_with("/healthz", &[("authorization", None)])),
        case(Nobody, "/healthz")
            .h("authorization", "Basic dXNlcjpwdw==")
            .want(up_with(
                "/healthz",
                &[("authorization", Some("Basic dXNlcjpwdw=="))],
            )),
        case(Nobody, "/healthz").h("x-tenant-id", "org_evil"),
        case(Nobody, "/healthz")
            .h("x_tenant_id", "org_evil")
            .want(up_with("/healthz", &[("x_tenant_id", None)])),
        case(Nobody, "/public/x")
            .h("x_api_key", SK)
            .want(up_with("/public/x", &[("x_api_key", None)])),
        case(Nobody, "/public/x")
            .h("x-environment", "SANDBOX")
            .h("x_environment", "SANDBOX")
            .h("x-api-key-role", "admin"),
        // Method overrides: a reader may not have the upstream run another method.
        case(Rk, "/v1/items"),
        case(Rk, "/v1/items")
            .h("x-http-method-override", "DELETE")
            .want(kg(403, METHOD_FORBIDDEN)),
        case(Rk, "/v1/items")
            .h("x-http-method", "DELETE")
            .want(kg(403, METHOD_FORBIDDEN)),
        case(Rk, "/v1/items")
            .h("x-method-override", "PUT")
            .want(kg(403, METHOD_FORBIDDEN)),
        case(Rk, "/v1/items")
            .h("X-HTTP-Method-Override", "delete")
            .want(kg(403, METHOD_FORBIDDEN)),
        case(Rk, "/v1/items")
            .h("x-http-method-override", "GET")
            .want(up_with(
                "/v1/items",
                &[("x-http-method-override", Some("GET"))],
            )),
        case(Rk, "/v1/items")
            .h("x-http-method-override", "GET, DELETE")
            .want(kg(403, METHOD_FORBIDDEN)),
        case(Rk, "/v1/items")
            .h("x-http-method-override", "GET")
            .h("x-http-method-override", "DELETE")
            .want(kg(403, METHOD_FORBIDDEN)),
        case(Rk, "/v1/items")
            .h("x_http_method_override", "DELETE")
            .want(up_with("/v1/items", &[("x_http_method_override", None)])),
        case(Rk, "/v1/items?_method=DELETE").want(kg(403, METHOD_FORBIDDEN)),
        // Spellings of `_method` that Express (decoding) and PHP (folding) read as `_method`.
        case(Rk, "/v1/items?%5Fmethod=DELETE").want(kg(403, METHOD_FORBIDDEN)),
        case(Rk, "/v1/items?.method=DELETE").want(kg(403, METHOD_FORBIDDEN)),
        case(Rk, "/v1/items?_method[]=DELETE").want(kg(403, METHOD_FORBIDDEN)),
        // Path overrides some servers route on never reach the upstream.
        case(Rk, "/v1/items")
            .h("x-original-url", "/admin")
            .h("x-rewrite-url", "/admin")
            .want(up_with(
                "/v1/items",
                &[("x-original-url", None), ("x-rewrite-url", None)],
            )),
        // Escapes a whole-target decoder would read as a query, fragment or dot.
        case(Pk, "/v1/pricing/..%3F").want(kg(400, BAD_PATH)),
        case(Pk, "/v1/pricing/..%23x").want(kg(400, BAD_PATH)),
        case(Pk, "/v1/pricing/%C0%AE%C0%AE/admin").want(kg(400, BAD_PATH)),
        // Query-key spellings upstreams read as `api_key` leave a public path too.
        case(Nobody, &format!("/healthz?api%5Fkey={SK}&api.key={SK}&a=1")).want(up("/healthz?a=1")),
        case(Sk, "/v1/items")
            .bare()
            .h("authorization", &format!("Bearer\t{SK}"))
            .want(up_with("/v1/items", &[("authorization", None)])),
        case(Rk, "/v1/items")
            .method("POST")
            .want(kg(403, METHOD_FORBIDDEN)),
        case(Rk, "/v1/items")
            .method("DELETE")
            .want(kg(403, METHOD_FORBIDDEN)),
        case(Sk, "/v1/items")
            .h("x-http-method-override", "DELETE")
            .want(up_with(
                "/v1/items",
                &[("x-http-method-override", Some("DELETE"))],
            )),
        case(Pk, "/v1/pricing/x")
            .h("x-http-method-override", "DELETE")
            .want(kg(403, PK_FORBIDDEN)),
        // Identity headers in every spelling an upstream may fold into keygate's.
        case(Sk, "/v1/items").h("x-tenant-id", "org_evil"),
        case(Sk, "/v1/items")
            .h("x_tenant_id", "org_evil")
            .want(up_with("/v1/items", &[("x_tenant_id", None)])),
        case(Sk, "/v1/items").h("X-Tenant-Id", "org_evil"),
        case(Sk, "/v1/items")
            .h("x-tenant_id", "org_evil")
            .want(up_with("/v1/items", &[("x-tenant_id", None)])),
        case(Sk, "/v1/items")
            .h("x_api_key_id", "evil")
            .want(up_with("/v1/items", &[("x_api_key_id", None)])),
        case(Sk, "/v1/items")
            .h("x_environment", "SANDBOX")
            .want(up_with("/v1/items", &[("x_environment", None)])),
        case(Sk, "/v1/items").h("x-environment", "SANDBOX"),
        case(Rk, "/v1/items").h("x-api-key-role", "admin"),
        case(Rk, "/v1/items")
            .h("X_API_KEY_ROLE", "admin")
            .want(up_with("/v1/items", &[("x_api_key_role", None)])),
        // Keys: missing, empty, long, conflicting, in every source and spelling.
        case(Nobody, "/v1/items").want(kg(401, MISSING)),
        case(Nobody, "/v1/items")
            .h("x-api-key", "")
            .want(kg(401, MISSING)),
        case(Nobody, "/v1/items")
            .h("x-api-key", "   ")
            .want(kg(401, MISSING)),
        case(Nobody, "/v1/items")
            .h("x-api-key", "zz_live_x")
            .want(kg(401, INVALID)),
        case(Nobody, "/v1/items")
            .h("x-api-key", "sk_live_unknown")
            .want(kg(401, INVALID_LIVE)),
        case(Nobody, "/v1/items")
            .h("x-api-key", &long_key)
            .want(kg(401, INVALID_LIVE)),
        case(Nobody, "/v1/items")
            .h("x-api-key", &format!("{SK}x"))
            .want(kg(401, INVALID_LIVE)),
        case(Nobody, "/v1/items")
            .h("x-api-key", &SK.to_uppercase())
            .want(kg(401, INVALID)),
        case(Sk, "/v1/items").h("x-api-key", SK),
        case(Sk, "/v1/items")
            .h("x-api-key", RK)
            .want(kg(401, INVALID)),
        case(Sk, "/v1/items")
            .h("authorization", &format!("Bearer {RK}"))
            .want(kg(401, INVALID)),
        case(Sk, "/v1/items")
            .h("authorization", &format!("Bearer {SK}"))
            .want(up_with("/v1/items", &[("authorization", None)])),
        case(Sk, "/v1/items")
            .bare()
            .h("authorization", &format!("bearer {SK}"))
            .want(up_with("/v1/items", &[("authorization", None)])),
        case(Sk, "/v1/items")
            .bare()
            .h("authorization", &format!("BEARER {SK}")),
        case(Sk, "/v1/items")
            .bare()
            .h("authorization", &format!("Bearer  {SK}")),
        case(Nobody, "/v1/items")
            .h("authorization", &format!("Bearer{SK}"))
            .want(kg(401, MISSING)),
        case(Nobody, "/v1/items")
            .h("authorization", &format!("Basic {SK}"))
            .want(kg(401, MISSING)),
        case(Nobody, "/v1/items")
            .h("authorization", &format!("Token {SK}"))
            .want(kg(401, MISSING)),
        case(Nobody, "/v1/items")
            .h("authorization", "Bearer")
            .want(kg(401, MISSING)),
        case(Nobody, "/v1/items")
            .h("x-api-key", "sk_live_sec\u{1}ret0001")
            .want(codec400()),
        case(Sk, "/v1/items")
            .bare()
            .h("x-api-key", &format!("{SK}\t")),
        case(Sk, &format!("/v1/items?api_key={SK}"))
            .bare()
            .want(up("/v1/items")),
        case(Sk, &format!("/v1/items?api_key={SK}&x=1"))
            .bare()
            .want(up("/v1/items?x=1")),
        case(Sk, &format!("/v1/a/../items?x=1&api_key={SK}"))
            .bare()
            .want(up("/v1/items?x=1")),
        case(Nobody, &format!("/v1/items?api_key={SK}&api_key={RK}")).want(kg(401, INVALID)),
        case(Nobody, "/v1/items")
            .h("x_api_key", SK)
            .want(kg(401, MISSING)),
        case(Sk, "/v1/items")
            .h("x_api_key", RK)
            .want(up_with("/v1/items", &[("x_api_key", None)])),
        // The caller's address: only Envoy's view of the connection counts.
        case(Ipk, "/v1/items").want(kg(403, IP_FORBIDDEN)),
        case(Ipk, "/v1/items")
            .h("x-forwarded-for", "10.1.2.3")
            .want(kg(403, IP_FORBIDDEN)),
        case(Ipk, "/v1/items")
            .h("x-forwarded-for", "10.1.2.3, 10.9.9.9")
            .want(kg(403, IP_FORBIDDEN)),
        case(Ipk, "/v1/items")
            .h("x-real-ip", "10.1.2.3")
            .want(kg(403, IP_FORBIDDEN)),
        case(Ipk, "/v1/items")
            .h("forwarded", "for=10.1.2.3")
            .want(kg(403, IP_FORBIDDEN)),
        case(Ipk, "/v1/items").v6().want(kg(403, IP_FORBIDDEN)),
        case(Loc, "/v1/items"),
        case(Loc, "/v1/items").v6(),
        case(Loc, "/v1/items")
            .h("x-forwarded-for", "10.1.2.3")
            .want(kg(403, IP_FORBIDDEN))
            .hardened(up("/v1/items")),
        // Without use_remote_address Envoy takes the address from X-Forwarded-For; keygate
        // does not trust it for allowed_ips unless told to (trust_forwarded_address).
        case(Loc, "/v1/items")
            .h("x-forwarded-for", "127.0.0.1")
            .want(kg(403, IP_FORBIDDEN))
            .hardened(up("/v1/items")),
    ];
    for (i, c) in cases.iter_mut().enumerate() {
        c.name = format!(
            "#{i} {} {}",
            c.method,
            c.path.chars().take(60).collect::<String>()
        );
    }
    cases
}

/// What `c` is answered on a listener with (`hardened`) or without the shipped hardening.
fn expected(c: &Case, hardened: bool) -> &Want {
    match (&c.hardened, hardened) {
        (Some(w), true) => w,
        _ => &c.want,
    }
}

/// Whether `segs` is a path `who` may reach.
fn reachable(who: Who, segs: &[String]) -> bool {
    let Some(allowed) = who.allowed() else {
        return true;
    };
    allowed.iter().any(|(exact, base)| {
        let below = segs.len() >= base.len() && segs.iter().zip(base).all(|(s, b)| s == b);
        below && (!exact || segs.len() == base.len())
    })
}

/// Checks one answer; returns the path the upstream received, if it was reached.
fn check(c: &Case, want: &Want, r: &Response, listener: &str) -> Option<String> {
    let ctx = format!("{listener}: {}: {} {:?}", c.name, r.status, r.body);
    match want {
        Want::Keygate { status, body, env } => {
            assert_eq!(r.status, *status, "{ctx}");
            assert!(!r.reached_upstream(), "{ctx}");
            assert_eq!(r.header("content-type"), Some("application/json"), "{ctx}");
            assert_eq!(r.body, *body, "{ctx}");
            assert_eq!(r.header("x-environment"), *env, "{ctx}");
            None
        }
        Want::Envoy { status, body } => {
            assert_eq!(r.status, *status, "{ctx}");
            assert_eq!(r.body, *body, "{ctx}");
            assert!(!r.reached_upstream(), "{ctx}");
            assert_ne!(r.header("content-type"), Some("application/json"), "{ctx}");
            None
        }
        Want::Up { path, extra } => {
            assert_eq!(r.status, 200, "{ctx}");
            assert!(r.reached_upstream(), "{ctx}");
            assert_eq!(&r.upstream_path(), path, "{ctx}");
            let identity = c.who.identity().filter(|_| !path_is_public(path));
            let (id, tenant, role) = match identity {
                Some((i, t, r)) => (Some(i), Some(t), Some(r)),
                None => (None, None, None),
            };
            let env = identity.map(|_| "LIVE");
            for (h, v) in [
                ("x-api-key-id", id),
                ("x-tenant-id", tenant),
                ("x-api-key-role", role),
                ("x-environment", env),
            ] {
                assert_eq!(r.upstream_header(h).as_deref(), v, "{ctx}: {h}");
            }
            for (h, v) in extra {
                assert_eq!(r.upstream_header(h).as_deref(), *v, "{ctx}: {h}");
            }
            // No spelling of keygate's headers besides its own, and no key, ever.
            let report = r.json();
            for name in report["headers"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
            {
                let folded = name.replace('_', "-");
                if [
                    "x-api-key-id",
                    "x-tenant-id",
                    "x-api-key-role",
                    "x-environment",
                    "x-api-key",
                ]
                .contains(&folded.as_str())
                {
                    assert_eq!(&folded, name, "{ctx}: {name} reached the upstream");
                }
            }
            for key in KEYS {
                assert!(!r.body.contains(key), "{ctx}: a key reached the upstream");
            }
            Some(r.upstream_path())
        }
    }
}

fn path_is_public(path: &str) -> bool {
    let p = path.split('?').next().unwrap_or_default();
    p == "/healthz" || p == "/public" || p.starts_with("/public/")
}

/// Every reader of the forwarded path lands where the caller may go.
fn differential(c: &Case, forwarded: &str, listener: &str) -> usize {
    let path = forwarded.split('?').next().unwrap_or_default();
    let mut checked = 0;
    for (reader, segs) in readers::all(path) {
        assert!(
            reachable(c.who, &segs),
            "{listener}: {}: a {reader} serves {segs:?} from {forwarded:?}, which {:?} may not reach",
            c.name,
            c.who
        );
        checked += 1;
    }
    checked
}

/// Curl (h2c) sends paths of printable ASCII without `#` and non-empty printable headers.
fn h2c_can_send(c: &Case) -> bool {
    let printable = |s: &str| s.bytes().all(|b| (0x21..0x7f).contains(&b) || b == b' ');
    c.path
        .bytes()
        .all(|b| (0x21..0x7f).contains(&b) && b != b'#' && b != b'\\')
        && c.headers
            .iter()
            .all(|(k, v)| !v.trim().is_empty() && printable(v) && !k.contains('_'))
}

fn run_corpus(hardened: bool) {
    let up_srv = Upstream::start("api");
    let cfg = plugin_config();
    let mut o = EnvoyOpts::new(
        if hardened {
            "hostile-hardened"
        } else {
            "hostile-defaults"
        },
        &cfg,
        up_srv.port,
    );
    o.hardened = hardened;
    let e = Envoy::start(&o);
    let listener = if hardened { "hardened" } else { "defaults" };
    let cases = corpus();
    assert!(
        cases.len() >= 100,
        "the corpus has {} requests",
        cases.len()
    );
    let (mut admitted, mut readings, mut h2c) = (0, 0, 0);
    let mut failures: Vec<String> = Vec::new();
    for c in &cases {
        let want = expected(c, hardened);
        let headers: Vec<(&str, &str)> = c
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let host = if c.v6 { "::1" } else { "127.0.0.1" };
        let r = send_to(host, e.port, c.method, &c.path, &headers);
        // Every mismatch is reported, not just the first.
        let outcome = std::panic::catch_unwind(|| {
            let mut readings = 0;
            if let Some(forwarded) = check(c, want, &r, listener) {
                readings += differential(c, &forwarded, listener);
            }
            // The same request over h2c gets the same answer.
            let sent_h2c = h2c_can_send(c) && !matches!(want, Want::Envoy { .. });
            if sent_h2c {
                let r2 = send_h2c(host, e.port, c.method, &c.path, &headers);
                check(c, want, &r2, &format!("{listener} h2c"));
            }
            (readings, sent_h2c)
        });
        match outcome {
            Ok((n, sent_h2c)) => {
                admitted += usize::from(n > 0);
                readings += n;
                h2c += usize::from(sent_h2c);
            }
            Err(e) => failures.push(
                e.downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| c.name.clone()),
            ),
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(e.log().lines().all(|l| !KEYS.iter().any(|k| l.contains(k))));
    for entry in e.access_log() {
        let line = entry.to_string();
        assert!(
            !KEYS.iter().any(|k| line.contains(k)),
            "a key in the access log: {line}"
        );
    }
    eprintln!(
        "{listener}: {} requests over HTTP/1.1, {h2c} again over h2c; {admitted} admitted, {readings} upstream readings checked",
        cases.len()
    );
    assert!(
        admitted >= 40 && h2c >= 80,
        "{admitted} admitted, {h2c} h2c"
    );
}

#[test]
fn hostile_corpus_with_envoy_defaults() {
    run_corpus(false);
}

#[test]
fn hostile_corpus_with_the_shipped_hardening() {
    run_corpus(true);
}
