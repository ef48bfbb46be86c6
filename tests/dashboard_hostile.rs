//! The dashboard's pages against a hostile browser or page (SPEC §11), over raw HTTP against a
//! real `keygate serve`: cookie flags, forged forms (no token, another origin, a cross-site
//! fetch), markup in what users type, another tenant's key ids from a portal session, a
//! signed-out cookie replayed, and no secret in a URL, the audit log or the service's log.
mod common;
use common::service::*;
use common::*;
use serde_json::{json, Value};

// The host header common::send_body sends, over https (the service runs without
// --insecure-cookies: its pages are meant to be served over https).
const SAME_ORIGIN: &str = "https://api.test";

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("plugin.json");
    let cfg = json!({
        "key_sources": [{"header": "x-api-key"}],
        "prefixes": [{"prefix": "hz_live_", "environment": "LIVE", "role": "writer"}],
        "roles": {"writer": {"methods": ["GET", "POST"]}, "reader": {"methods": ["GET"]},
                  "admin": {"methods": ["*"]}},
        "tenants": {"org_b": {"credits": {"granted": 100}}}
    });
    std::fs::write(&p, cfg.to_string()).unwrap();
    p
}

fn post_form(s: &Service, path: &str, headers: &[(&str, &str)], form: &str) -> Response {
    let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
    h.extend_from_slice(headers);
    send_body("127.0.0.1", s.port, "POST", path, &h, form)
}

fn get(s: &Service, path: &str, cookie: &str) -> Response {
    send(s.port, "GET", path, &[("cookie", cookie)])
}

/// The `name=value` of a `Set-Cookie` answer, and the whole header.
fn set_cookie(r: &Response) -> (String, String) {
    let h = r.header("set-cookie").expect("set-cookie").to_string();
    (h.split(';').next().unwrap().to_string(), h)
}

fn csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a form token") + 19;
    page[at..at + 32].to_string()
}

fn form_enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn keys(s: &Service) -> Vec<Value> {
    s.admin("GET", "/v1/api-keys", None).1["data"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn forged_forms_markup_and_other_tenants_get_nowhere() {
    let dir = scratch_dir("dashboard-hostile");
    let cfg = config(&dir);
    let db = format!("sqlite:{}", dir.join("keys.db").display());
    let s = Service::start(ServiceOpts {
        database: &db,
        config: &cfg,
        gateway: false,
        sync_token: false,
        port: None,
    });
    let other_tenant_key = {
        let body = json!({"prefix": "hz_live_", "tenant": "org_a", "name": "A's key"});
        let (st, b) = s.admin("POST", "/v1/api-keys", Some(&body.to_string()));
        assert_eq!(st, 201);
        b["data"]["id"].as_str().unwrap().to_string()
    };

    // Sign-in: a wrong token gets no cookie; another origin is refused; the cookie's flags.
    let r = post_form(&s, "/sign-in", &[], "token=wrong");
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_none());
    let r = post_form(
        &s,
        "/sign-in",
        &[("origin", "http://evil.test")],
        &format!("token={ADMIN_TOKEN}"),
    );
    assert_eq!(r.status, 403);
    assert!(r.header("set-cookie").is_none());
    let r = post_form(
        &s,
        "/sign-in",
        &[("origin", SAME_ORIGIN)],
        &format!("token={ADMIN_TOKEN}"),
    );
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some("/dashboard/keys"))
    );
    let (cookie, header) = set_cookie(&r);
    assert!(
        cookie.starts_with("keygate_session=") && cookie.len() == 16 + 32,
        "{cookie}"
    );
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Path=/",
        "Max-Age=43200",
    ] {
        assert!(header.contains(flag), "{flag} in {header}");
    }

    // Every page: a strict CSP, never cached, never framed.
    let page = get(&s, "/dashboard/keys", &cookie);
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("form-action 'self'"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    let token = csrf(&page.body);
    let before = keys(&s).len();

    // Forged forms: no token, another token, another origin, a cross-site fetch.
    let markup = "<script>alert(1)</script>";
    let create = format!("prefix=hz_live_&name={}", form_enc(markup));
    for (headers, form) in [
        (vec![("origin", SAME_ORIGIN)], create.clone()),
        (
            vec![("origin", SAME_ORIGIN)],
            format!("{create}&csrf=00000000000000000000000000000000"),
        ),
        (
            vec![("origin", "http://evil.test")],
            format!("{create}&csrf={token}"),
        ),
        (vec![("origin", "null")], format!("{create}&csrf={token}")),
        // The same host over plain http is another origin.
        (
            vec![("origin", "http://api.test")],
            format!("{create}&csrf={token}"),
        ),
        (
            vec![("sec-fetch-site", "cross-site")],
            format!("{create}&csrf={token}"),
        ),
        (
            vec![("sec-fetch-site", "same-site")],
            format!("{create}&csrf={token}"),
        ),
    ] {
        let mut h = headers.clone();
        h.push(("cookie", &cookie));
        let r = post_form(&s, "/dashboard/keys", &h, &form);
        assert_eq!(r.status, 403, "{headers:?} {form}");
        assert!(
            r.body.contains("refused") || r.body.contains("expired"),
            "{}",
            r.body
        );
    }
    assert_eq!(keys(&s).len(), before, "no forged form made a key");

    // The real form: the key shown once, never cached; what was typed shown as text.
    let r = post_form(
        &s,
        "/dashboard/keys",
        &[("origin", SAME_ORIGIN), ("cookie", &cookie)],
        &format!("{create}&csrf={token}"),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let at = r.body.find("id=\"new-key\">").unwrap() + 13;
    let key = r.body[at..].split('<').next().unwrap().to_string();
    assert!(key.starts_with("hz_live_"), "{key}");
    for body in [r.body.clone(), get(&s, "/dashboard/keys", &cookie).body] {
        // askama's escaping: numeric references.
        assert!(
            body.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
            "escaped"
        );
        assert!(!body.contains(markup), "never as markup");
    }
    assert_eq!(keys(&s).len(), before + 1);
    let own = keys(&s)
        .into_iter()
        .find(|k| k["name"] == json!(markup))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Shown once: the key's page and list never show it again.
    assert!(!get(&s, &format!("/dashboard/keys/{own}"), &cookie)
        .body
        .contains(&key));

    // The credits form (SPEC §14): refused without its token or from another origin; bad input
    // is the key's page with the API's words and the API's status, never a 5xx.
    let (st, b) = s.admin(
        "POST",
        "/v1/api-keys",
        Some(&json!({"prefix": "hz_live_", "tenant": "org_b", "name": "B's search", "credits": {"granted": 10}}).to_string()),
    );
    assert_eq!(st, 201, "{b}");
    let metered = b["data"]["id"].as_str().unwrap().to_string();
    let credits_path = format!("/dashboard/keys/{metered}/credits");
    let remaining = |s: &Service| {
        s.admin("GET", &format!("/v1/api-keys/{metered}"), None).1["data"]["credits"]["remaining"]
            .clone()
    };
    for (headers, form) in [
        (vec![("origin", SAME_ORIGIN)], "op=add&amount=5".to_string()),
        (
            vec![("origin", "http://evil.test")],
            format!("op=add&amount=5&csrf={token}"),
        ),
    ] {
        let mut h = headers.clone();
        h.push(("cookie", &cookie));
        assert_eq!(post_form(&s, &credits_path, &h, &form).status, 403);
    }
    let own_credits = format!("/dashboard/keys/{own}/credits");
    for (path, form, status, message) in [
        (
            &credits_path,
            "op=add&amount=ten",
            400,
            "amount: expected a whole number ≥ 0, found a string",
        ),
        (&credits_path, "op=add&amount=", 400, "amount: is required"),
        (&credits_path, "amount=5", 400, "op: is required"),
        (
            &credits_path,
            "op=double&amount=5",
            400,
            "op: &#34;double&#34; is not &#34;set&#34;, &#34;add&#34; or &#34;subtract&#34;",
        ),
        (
            &credits_path,
            "op=add&amount=-1",
            400,
            "amount: expected a whole number ≥ 0, found a number",
        ),
        (
            &credits_path,
            "op=subtract&amount=1.5",
            400,
            "amount: expected a whole number ≥ 0, found a number",
        ),
        (
            &credits_path,
            "op=set&amount=99999999999999999999999",
            400,
            "amount: must be at most 9007199254740991",
        ),
        (
            &own_credits,
            "op=add&amount=5",
            409,
            "The API key has no credits; give it credits with PATCH first",
        ),
    ] {
        let r = post_form(
            &s,
            path,
            &[("origin", SAME_ORIGIN), ("cookie", &cookie)],
            &format!("{form}&csrf={token}"),
        );
        assert_eq!(r.status, status, "{form}: {}", r.body);
        assert!(
            r.body
                .contains(&format!("<p class=\"error\" role=\"alert\">{message}</p>")),
            "{form}: {}",
            r.body
        );
    }
    assert_eq!(
        remaining(&s),
        json!(10),
        "nothing refused changed the balance"
    );
    let r = post_form(
        &s,
        &credits_path,
        &[("origin", SAME_ORIGIN), ("cookie", &cookie)],
        &format!("op=add&amount=5&csrf={token}"),
    );
    assert_eq!(
        (r.status, r.header("location")),
        (
            303,
            Some(format!("/dashboard/keys/{metered}?done=credits").as_str())
        )
    );
    assert_eq!(remaining(&s), json!(15));

    // The tenant's form (SPEC §14), on the page of a key of org_b without credits of its own:
    // refused without its token or from another origin; a `key` that is missing, unknown, not
    // the tenant's or not an id is a 404 page; bad input is the key's page with the API's words
    // and status (a tenant without credits: 409), never a 5xx; nothing refused changes it.
    let (st, b) = s.admin(
        "POST",
        "/v1/api-keys",
        Some(&json!({"prefix": "hz_live_", "tenant": "org_b", "name": "B's app"}).to_string()),
    );
    assert_eq!(st, 201, "{b}");
    let b_app = b["data"]["id"].as_str().unwrap().to_string();
    let b_app_page = format!("/dashboard/keys/{b_app}");
    let top_up = |cookie: &str| {
        let body = get(&s, &b_app_page, cookie).body;
        let at = body
            .find("id=\"tenant-credits-top-up\">")
            .expect("the tenant's balance")
            + 27;
        body[at..].split('<').next().unwrap().to_string()
    };
    let page = get(&s, &b_app_page, &cookie).body;
    assert!(
        page.contains("action=\"/dashboard/tenants/org_b/credits\""),
        "{page}"
    );
    assert!(page.contains(&format!("name=\"key\" value=\"{b_app}\"")));
    assert_eq!(top_up(&cookie), "none");
    let tenant_path = "/dashboard/tenants/org_b/credits";
    for (headers, form) in [
        (
            vec![("origin", SAME_ORIGIN)],
            format!("op=add&amount=5&key={b_app}"),
        ),
        (
            vec![("origin", SAME_ORIGIN)],
            format!("op=add&amount=5&key={b_app}&csrf=00000000000000000000000000000000"),
        ),
        (
            vec![("origin", "http://evil.test")],
            format!("op=add&amount=5&key={b_app}&csrf={token}"),
        ),
        (
            vec![("sec-fetch-site", "cross-site")],
            format!("op=add&amount=5&key={b_app}&csrf={token}"),
        ),
    ] {
        let mut h = headers.clone();
        h.push(("cookie", &cookie));
        let r = post_form(&s, tenant_path, &h, &form);
        assert_eq!(r.status, 403, "{headers:?} {form}");
    }
    for (path, form) in [
        (tenant_path.to_string(), "op=add&amount=5".to_string()),
        (tenant_path.to_string(), "op=add&amount=5&key=".to_string()),
        (
            tenant_path.to_string(),
            "op=add&amount=5&key=key_nothere".to_string(),
        ),
        (
            tenant_path.to_string(),
            "op=add&amount=5&key=a%00b".to_string(),
        ),
        // Another tenant's key, or a key without a tenant, under org_b's path.
        (
            tenant_path.to_string(),
            format!("op=add&amount=5&key={other_tenant_key}"),
        ),
        (
            tenant_path.to_string(),
            format!("op=add&amount=5&key={own}"),
        ),
        (
            "/dashboard/tenants/org_a/credits".to_string(),
            format!("op=add&amount=5&key={b_app}"),
        ),
        (
            "/dashboard/tenants/org_b%00/credits".to_string(),
            format!("op=add&amount=5&key={b_app}"),
        ),
    ] {
        let r = post_form(
            &s,
            &path,
            &[("origin", SAME_ORIGIN), ("cookie", &cookie)],
            &format!("{form}&csrf={token}"),
        );
        assert_eq!(r.status, 404, "{path} {form}: {}", r.body);
    }
    let org_a_path = "/dashboard/tenants/org_a/credits";
    for (path, form, status, message) in [
        (
            tenant_path,
            format!("op=add&amount=ten&key={b_app}"),
            400,
            "amount: expected a whole number ≥ 0, found a string",
        ),
        (
            tenant_path,
            format!("op=add&amount=&key={b_app}"),
            400,
            "amount: is required",
        ),
        (
            tenant_path,
            format!("amount=5&key={b_app}"),
            400,
            "op: is required",
        ),
        (
            tenant_path,
            format!("op=double&amount=5&key={b_app}"),
            400,
            "op: &#34;double&#34; is not &#34;set&#34;, &#34;add&#34; or &#34;subtract&#34;",
        ),
        (
            tenant_path,
            format!("op=subtract&amount=-1&key={b_app}"),
            400,
            "amount: expected a whole number ≥ 0, found a number",
        ),
        (
            tenant_path,
            format!("op=set&amount=99999999999999999999999&key={b_app}"),
            400,
            "amount: must be at most 9007199254740991",
        ),
        (
            org_a_path,
            format!("op=add&amount=5&key={other_tenant_key}"),
            409,
            "The tenant has no credits: give it some in the configuration (tenants.org_a.credits)",
        ),
    ] {
        let r = post_form(
            &s,
            path,
            &[("origin", SAME_ORIGIN), ("cookie", &cookie)],
            &format!("{form}&csrf={token}"),
        );
        assert_eq!(r.status, status, "{form}: {}", r.body);
        assert!(
            r.body
                .contains(&format!("<p class=\"error\" role=\"alert\">{message}</p>")),
            "{form}: {}",
            r.body
        );
    }
    assert_eq!(
        top_up(&cookie),
        "none",
        "nothing refused changed the balance"
    );
    let r = post_form(
        &s,
        tenant_path,
        &[("origin", SAME_ORIGIN), ("cookie", &cookie)],
        &format!("op=add&amount=5&key={b_app}&csrf={token}"),
    );
    assert_eq!(
        (r.status, r.header("location")),
        (
            303,
            Some(format!("/dashboard/keys/{b_app}?done=tenant-credits").as_str())
        )
    );
    assert_eq!(top_up(&cookie), "+5");

    // A portal session of org_b: its tenant only, whatever ids or tenants it asks for.
    let (_, p) = s.admin(
        "POST",
        "/v1/portal-sessions",
        Some(r#"{"tenant":"org_b","ttl_seconds":60}"#),
    );
    let url = p["data"]["url"].as_str().unwrap();
    let open = send(
        s.port,
        "GET",
        &url[url.find("/portal/open").unwrap()..],
        &[],
    );
    assert_eq!(open.status, 303);
    let (portal, header) = set_cookie(&open);
    assert!(header.contains("SameSite=Lax") && header.contains("HttpOnly"));
    let page = get(&s, "/dashboard/keys?tenant=org_a", &portal);
    assert!(!page.body.contains("A&#39;s key") && !page.body.contains(&other_tenant_key));
    let portal_token = csrf(&page.body);
    // Its audit page: its own tenant's entries; the provider's as "provider", no address.
    let audit = get(&s, "/dashboard/audit", &portal).body;
    assert!(
        audit.contains("<td>portal_session.created</td>") && audit.contains("<td>provider</td>")
    );
    assert!(
        !audit.contains("<td>admin") && !audit.contains("A&#39;s key"),
        "{audit}"
    );
    assert_eq!(
        get(&s, &format!("/dashboard/keys/{other_tenant_key}"), &portal).status,
        404
    );
    assert_eq!(
        get(
            &s,
            &format!("/dashboard/usage?key={other_tenant_key}"),
            &portal
        )
        .status,
        404
    );
    for (path, form) in [
        (format!("/dashboard/keys/{other_tenant_key}"), "name=mine"),
        (
            format!("/dashboard/keys/{other_tenant_key}/roll"),
            "grace_seconds=0",
        ),
        (
            format!("/dashboard/keys/{other_tenant_key}/revoke"),
            "confirm=yes",
        ),
        (
            format!("/dashboard/keys/{other_tenant_key}/credits"),
            "op=add&amount=5",
        ),
    ] {
        let r = post_form(
            &s,
            &path,
            &[("origin", SAME_ORIGIN), ("cookie", &portal)],
            &format!("{form}&csrf={portal_token}"),
        );
        assert_eq!(r.status, 404, "{path}: {}", r.body);
    }
    let (_, a) = s.admin("GET", &format!("/v1/api-keys/{other_tenant_key}"), None);
    assert_eq!(
        (a["data"]["name"].clone(), a["data"]["revoked"].clone()),
        (json!("A's key"), json!(false))
    );
    // A customer sees its balance, and neither has the form nor may post it: balances are the
    // provider's to change.
    let mine = get(&s, &format!("/dashboard/keys/{metered}"), &portal).body;
    assert!(mine.contains("<span class=\"number\" id=\"credits-remaining\">15</span>"));
    assert!(
        !mine.contains("/credits\""),
        "no credits form for a customer"
    );
    let r = post_form(
        &s,
        &credits_path,
        &[("origin", SAME_ORIGIN), ("cookie", &portal)],
        &format!("op=add&amount=1000&csrf={portal_token}"),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r
        .body
        .contains("credits: only the provider&#39;s admin changes a balance"));
    assert_eq!(remaining(&s), json!(15));
    // Nor its tenant's: it sees the balance its keys draw from, without the form, and may not
    // post it (another tenant's key or tenant: 404, as every form).
    let mine = get(&s, &b_app_page, &portal).body;
    assert!(
        mine.contains("id=\"tenant-credits-remaining\">105<"),
        "{mine}"
    );
    assert!(
        !mine.contains("/dashboard/tenants/"),
        "no tenant form for a customer"
    );
    let r = post_form(
        &s,
        tenant_path,
        &[("origin", SAME_ORIGIN), ("cookie", &portal)],
        &format!("op=add&amount=1000&key={b_app}&csrf={portal_token}"),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r
        .body
        .contains("credits: only the provider&#39;s admin changes a balance"));
    let r = post_form(
        &s,
        org_a_path,
        &[("origin", SAME_ORIGIN), ("cookie", &portal)],
        &format!("op=add&amount=5&key={other_tenant_key}&csrf={portal_token}"),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(top_up(&cookie), "+5");
    // A customer gives no key the role that manages its tenant (the provider's to give).
    let r = post_form(
        &s,
        "/dashboard/keys",
        &[("origin", SAME_ORIGIN), ("cookie", &portal)],
        &format!("prefix=hz_live_&role=admin&csrf={portal_token}"),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("is given by your provider only"));
    assert!(!page.body.contains("<option value=\"admin\">"));
    // Input a database would refuse is a page about nothing, never a 503.
    assert_eq!(get(&s, "/dashboard/keys/a%00b", &portal).status, 404);
    assert_eq!(
        get(&s, "/dashboard/usage?key=a%00b&tenant=%00", &portal).status,
        200
    );
    // Each cookie is a session under its own name only.
    let swapped = format!("keygate_session={}", &portal[15..]);
    assert_eq!(get(&s, "/dashboard/keys", &swapped).status, 303);
    // The link was made for https (the service's cookies are Secure).
    assert!(url.starts_with("https://"), "{url}");
    // A second link while in a portal session: asked first, then opened from this origin only.
    let (_, p2) = s.admin(
        "POST",
        "/v1/portal-sessions",
        Some(r#"{"tenant":"org_c","ttl_seconds":60}"#),
    );
    let url2 = p2["data"]["url"].as_str().unwrap();
    let path2 = &url2[url2.find("/portal/open").unwrap()..];
    let ask = get(&s, path2, &portal);
    assert_eq!(ask.status, 200);
    assert!(ask.body.contains("Open another portal?") && ask.body.contains("org_b"));
    assert!(ask.header("set-cookie").is_none(), "nothing swapped yet");
    let code2 = &path2[path2.find("code=").unwrap() + 5..];
    let r = post_form(
        &s,
        "/portal/open",
        &[("origin", "http://evil.test"), ("cookie", &portal)],
        &format!("code={code2}"),
    );
    assert_eq!(r.status, 403);
    let r = post_form(
        &s,
        "/portal/open",
        &[("origin", SAME_ORIGIN), ("cookie", &portal)],
        &format!("code={code2}"),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let (portal_c, _) = set_cookie(&r);
    assert!(get(&s, "/dashboard/keys", &portal_c).body.contains("org_c"));
    let csv = get(&s, "/dashboard/usage.csv?tenant=org_a&r=30d", &portal);
    assert_eq!(csv.status, 200);
    assert!(!csv.body.contains(&other_tenant_key));
    // The operator's form token does not work for the portal session, nor the other way.
    let r = post_form(
        &s,
        "/dashboard/keys",
        &[("origin", SAME_ORIGIN), ("cookie", &portal)],
        &format!("prefix=hz_live_&csrf={token}"),
    );
    assert_eq!(r.status, 403);

    // Signing out ends every session the browser holds (here an operator's and a portal's):
    // the cookies replayed are a stranger's.
    let both = format!("{cookie}; {portal}");
    let r = post_form(
        &s,
        "/sign-out",
        &[("origin", SAME_ORIGIN), ("cookie", &both)],
        &format!("csrf={token}"),
    );
    assert_eq!(r.status, 303);
    let cleared: Vec<&String> = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(cleared.len(), 2, "{cleared:?}");
    assert!(cleared.iter().all(|c| c.contains("Max-Age=0")));
    assert_eq!(get(&s, "/dashboard/keys", &portal).status, 303);
    let replay = get(&s, "/dashboard/keys", &cookie);
    assert_eq!((replay.status, replay.header("location")), (303, Some("/")));
    assert_eq!(
        post_form(
            &s,
            "/dashboard/keys",
            &[("origin", SAME_ORIGIN), ("cookie", &cookie)],
            &format!("prefix=hz_live_&csrf={token}")
        )
        .status,
        303
    );

    // No secret anywhere it could leak: the audit log names sessions by id only; the
    // service's log holds no key, cookie, token or code.
    let (_, log) = s.admin("GET", "/v1/audit-log?limit=1000", None);
    let log = log.to_string();
    assert!(log.contains("\"login\"") && log.contains("\"logout\""));
    let code = &url[url.find("code=").unwrap() + 5..];
    for secret in [
        key.as_str(),
        &cookie[16..],
        &portal[15..],
        code,
        ADMIN_TOKEN,
        token.as_str(),
    ] {
        assert!(!log.contains(secret), "a secret in the audit log");
        assert!(!s.log().contains(secret), "a secret in the service's log");
    }
}
