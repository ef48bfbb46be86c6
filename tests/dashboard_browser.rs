//! The dashboard and the customer portal in a real browser (SPEC §11): Debian's Chromium driven
//! through WebDriver, against a real `keygate serve` and a real Envoy (two workers) syncing keys
//! from it and reporting usage to it. An operator signs in, creates a key and reads it once,
//! uses it through Envoy, sees it in usage, edits its role (Envoy answers 403), rolls it (the old
//! key stops), revokes the new one after confirming (401); a portal session sees its tenant only;
//! a cross-site form and a key named like markup change nothing. The screenshots docs/dashboard.md
//! shows are taken here (`make screenshots`).
mod common;
use common::browser::Browser;
use common::service::*;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

const INTERVAL: u64 = 1;

fn plugin_config() -> Value {
    json!({
        "key_sources": [{"header": "x-api-key"}],
        "prefixes": [
            {"prefix": "shop_live_", "environment": "LIVE", "role": "writer"},
            {"prefix": "shop_test_", "environment": "TEST", "role": "reader"}
        ],
        "roles": {"admin": {"methods": ["*"]}, "writer": {"methods": ["GET", "POST"]},
                  "reader": {"methods": ["GET"], "forbidden_message": "This key can only read"}},
        "key_sync": {"cluster": "keyservice", "path": "/keys", "interval_seconds": INTERVAL, "timeout_ms": 1000, "token": SYNC_TOKEN},
        "usage_report": {"cluster": "keyservice", "path": "/usage", "interval_seconds": INTERVAL, "timeout_ms": 1000, "token": SYNC_TOKEN},
        "public_paths": ["/healthz"],
        // One tenant's shared balance (SPEC §14): its keys without credits of their own draw
        // from it (the credits tests' org_initech only).
        "tenants": {"org_initech": {"credits": {"granted": 1000, "refill": {"interval": "day"}}}}
    })
}

async fn until(limit: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status(e: &Envoy, method: &str, path: &str, key: &str) -> u16 {
    send(e.port, method, path, &[("x-api-key", key)]).status
}

/// Another origin on loopback (same site: cookies go along) serving one page: a form that posts
/// to the dashboard without its token, as an attacker's page would.
fn attacker(target: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        // Bounded: a few connections at most.
        for stream in listener.incoming().take(8) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = format!(
                "<!doctype html><title>Win a prize</title><form method=post action=\"{target}\">\
                 <input type=hidden name=confirm value=yes><button id=go>Claim</button></form>"
            );
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_and_a_customer_manage_keys_in_a_browser() {
    let dir = scratch_dir("dashboard-service");
    let cfg_path = dir.join("plugin.json");
    let cfg = plugin_config();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let db = format!("sqlite:{}", dir.join("keys.db").display());
    let s = Service::start_args(
        ServiceOpts {
            database: &db,
            config: &cfg_path,
            gateway: false,
            // The request log takes records from the proxies only, with the sync token.
            sync_token: true,
            port: None,
        },
        &["--insecure-cookies"],
    );
    let up = Upstream::start("api");
    let cfg_text = cfg.to_string();
    let mut o = EnvoyOpts::new("dashboard", &cfg_text, up.port);
    o.key_service = Some(s.port);
    // The request log (SPEC §13): the Requests page and the key's latest requests.
    o.request_log = Some((s.port, Some(SYNC_TOKEN.to_string())));
    let e = Envoy::start(&o);
    let base = s.url();

    // Keys of two customers, made through the API.
    let make = |tenant: &str, name: &str| {
        let body = json!({"prefix": "shop_live_", "tenant": tenant, "name": name}).to_string();
        let (st, b) = s.admin("POST", "/v1/api-keys", Some(&body));
        assert_eq!(st, 201, "{b}");
        b["data"]["id"].as_str().unwrap().to_string()
    };
    let acme_key = make("org_acme", "Acme checkout");
    let globex_key = make("org_globex", "Globex billing");

    let b = Browser::start("operator", 1280).await;
    // Signing in.
    b.goto(&format!("{base}/")).await;
    assert_eq!(b.text("h1").await, "Sign in");
    b.screenshot("signin").await;
    b.fill("#token", "not the token").await;
    b.follow("form[action='/sign-in'] button").await;
    assert!(b.text(".error").await.contains("not the admin token"));
    b.fill("#token", ADMIN_TOKEN).await;
    b.follow("form[action='/sign-in'] button").await;
    assert_eq!(b.path().await, "/dashboard/keys");
    assert!(b.source().await.contains("Acme checkout"));

    // Creating a key whose name is markup: shown as text, never run.
    let hostile = "<img src=x onerror=alert(1)> Shop";
    b.fill("#name", hostile).await;
    b.fill("#tenant", "org_acme").await;
    b.follow("#create button[type=submit]").await;
    assert_eq!(b.text("h1").await, "Your new API key");
    let key = b.text("#new-key").await;
    assert!(key.starts_with("shop_live_") && key.len() > 30, "{key}");
    b.screenshot("key-created").await;
    let source = b.source().await;
    assert!(
        source.contains("&lt;img src=x onerror=alert(1)&gt; Shop"),
        "escaped"
    );
    assert!(!source.contains("<img src=x"), "never markup");
    let id = b.text("dl.facts dd code").await;
    // Shown once: its page never shows it again.
    b.follow("a.button").await;
    assert!(!b.source().await.contains(&key));

    // Used through Envoy once key sync has it; seen in usage within the report bound.
    until(
        Duration::from_secs(10),
        "the new key admitted",
        async || status(&e, "POST", "/v1/orders/1", &key) == 200,
    )
    .await;
    let mut sent = 1u64;
    for _ in 0..4 {
        assert_eq!(status(&e, "GET", "/orders/7", &key), 200);
        sent += 1;
    }
    let usage = format!("{base}/dashboard/usage?key={id}&r=24h");
    until(
        Duration::from_secs(2 * INTERVAL + 1 + 5),
        "usage on the page",
        async || {
            b.goto(&usage).await;
            b.text(".totals .number").await == sent.to_string()
        },
    )
    .await;
    assert!(b.exists("svg.chart rect.o-allowed").await);
    let routes = b.source().await;
    assert!(
        routes.contains("<td>orders</td>"),
        "the named route in by-endpoint"
    );
    b.goto(&format!("{base}/dashboard/usage?r=7d")).await;
    b.screenshot("usage").await;

    // The Requests page: the key's requests, newest first, filtered with the form (the log's
    // records arrive within a flush, 0.5 s, of each request; usage had its own path).
    let requests_url = format!("{base}/dashboard/requests?key_id={id}");
    until(
        Duration::from_secs(5),
        "every request on the Requests page",
        async || {
            b.goto(&requests_url).await;
            let page = b.source().await;
            page.contains("<code>POST /v1/orders/1</code>")
                && page.matches("<code>GET /orders/7</code>").count() == 4
        },
    )
    .await;
    let requests = b.source().await;
    assert_eq!(requests.matches("<code>GET /orders/7</code>").count(), 4);
    b.select("#decision", "allowed").await;
    b.follow("form.filters button").await;
    assert!(b.path().await.contains("decision=allowed"));
    assert!(b.source().await.contains("<code>GET /orders/7</code>"));
    b.select("#decision", "forbidden").await;
    b.follow("form.filters button").await;
    assert_eq!(b.text(".empty h2").await, "No requests");
    b.fill("#status", "abc").await;
    b.client
        .execute(
            "document.getElementById('status').removeAttribute('pattern'); return null",
            vec![],
        )
        .await
        .unwrap();
    b.follow("form.filters button").await;
    assert!(b.text(".error").await.starts_with("status:"));
    b.goto(&format!("{base}/dashboard/requests")).await;
    b.screenshot("requests").await;
    // The CSV, with the session's cookie: a header and a line per request, no markup.
    let cookie = b.client.get_named_cookie("keygate_session").await.unwrap();
    let csv = send(
        s.port,
        "GET",
        &format!("/dashboard/requests.csv?key_id={id}"),
        &[("cookie", &format!("keygate_session={}", cookie.value()))],
    );
    assert_eq!(csv.status, 200);
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    let lines: Vec<&str> = csv.body.lines().collect();
    assert!(lines[0].starts_with("time,key_id,tenant,"), "{}", csv.body);
    assert_eq!(lines.len(), 1 + sent as usize, "{}", csv.body);
    assert!(lines[1..]
        .iter()
        .all(|l| l.contains(&id) && l.contains(",allowed,")));

    // Editing the role: Envoy answers 403 for a write within the sync bound.
    b.goto(&format!("{base}/dashboard/keys/{id}")).await;
    b.select("#role", "reader").await;
    b.follow(&format!(
        "form[action$='/dashboard/keys/{id}'] button[type=submit]"
    ))
    .await;
    assert!(b.text(".notice").await.starts_with("Saved."));
    until(
        Duration::from_secs(INTERVAL + 1 + 2),
        "the role enforced",
        async || status(&e, "POST", "/v1/orders/1", &key) == 403,
    )
    .await;
    assert_eq!(status(&e, "GET", "/v1/orders/1", &key), 200);
    // The key's page: its latest requests (the 403 first) and the address it was used from.
    until(
        Duration::from_secs(5),
        "the refused write on the key's page",
        async || {
            b.goto(&format!("{base}/dashboard/keys/{id}")).await;
            b.source().await.contains("<td>forbidden</td>")
                || b.source().await.contains("</span>forbidden</td>")
        },
    )
    .await;
    assert!(b
        .source()
        .await
        .contains("<td><a href=\"/dashboard/requests?key_id="));
    assert!(b.source().await.contains(">127.0.0.1</a>"));
    b.screenshot("key").await;

    // Rolling with no grace: a new key shown once, the old one refused.
    b.select("#grace", "0").await;
    b.follow("form[action$='/roll'] button").await;
    assert_eq!(b.text("h1").await, "The new key");
    let rolled = b.text("#new-key").await;
    let rolled_id = b.text("dl.facts dd code").await;
    until(
        Duration::from_secs(INTERVAL + 1 + 2),
        "the roll enforced",
        async || {
            status(&e, "GET", "/v1/orders/1", &key) == 401
                && status(&e, "GET", "/v1/orders/1", &rolled) == 200
        },
    )
    .await;

    // Revoking asks first; then Envoy refuses the key.
    b.goto(&format!("{base}/dashboard/keys/{rolled_id}")).await;
    b.follow("a.button.danger").await;
    assert_eq!(b.text("h1").await, "Revoke this key?");
    b.screenshot("revoke").await;
    b.follow("form[action$='/revoke'] button.danger").await;
    assert!(b.text(".notice").await.starts_with("Revoked."));
    until(
        Duration::from_secs(INTERVAL + 1 + 2),
        "the revocation enforced",
        async || status(&e, "GET", "/v1/orders/1", &rolled) == 401,
    )
    .await;

    // The keys list and the audit log, with the session as actor.
    b.goto(&format!("{base}/dashboard/keys?all=1")).await;
    b.screenshot("keys").await;
    b.goto(&format!("{base}/dashboard/audit")).await;
    let audit = b.source().await;
    for action in [
        "login",
        "key.created",
        "key.updated",
        "key.rolled",
        "key.revoked",
    ] {
        assert!(
            audit.contains(&format!("<td>{action}</td>")),
            "{action} in the audit page"
        );
    }
    assert!(
        audit.contains("admin os_"),
        "the operator's session is the actor"
    );
    assert!(!audit.contains(&key) && !audit.contains(&rolled));
    b.screenshot("audit").await;

    // A cross-site form (same site, another origin: the cookie goes along) changes nothing.
    let evil = attacker(format!("{base}/dashboard/keys/{acme_key}/revoke"));
    b.goto(&format!("http://127.0.0.1:{evil}/")).await;
    b.follow("#go").await;
    assert!(
        b.source().await.contains("refused"),
        "the forged form is refused"
    );
    let (_, k) = s.admin("GET", &format!("/v1/api-keys/{acme_key}"), None);
    assert_eq!(k["data"]["revoked"], json!(false));

    // Signing out ends the session at once.
    b.goto(&format!("{base}/dashboard/keys")).await;
    b.follow("form[action='/sign-out'] button").await;
    b.goto(&format!("{base}/dashboard/keys")).await;
    assert_eq!(b.text("h1").await, "Sign in");
    b.quit().await;

    // A customer: a portal session for org_globex, opened from its URL.
    let (st, p) = s.admin(
        "POST",
        "/v1/portal-sessions",
        Some(r#"{"tenant":"org_globex","ttl_seconds":300}"#),
    );
    assert_eq!(st, 201, "{p}");
    let url = p["data"]["url"].as_str().unwrap();
    let portal_url = format!("{base}{}", &url[url.find("/portal/open").unwrap()..]);
    let c = Browser::start("portal", 390).await; // a phone's width
    c.goto(&portal_url).await;
    assert_eq!(c.path().await, "/dashboard/keys");
    let page = c.source().await;
    assert!(page.contains("Globex billing") && !page.contains("Acme checkout"));
    assert_eq!(c.text(".badge").await, "org_globex");
    c.screenshot("portal-keys").await;
    // Another tenant's key: not found, whatever the URL says.
    c.goto(&format!("{base}/dashboard/keys/{acme_key}?tenant=org_acme"))
        .await;
    assert_eq!(c.text("h1").await, "Not found");
    c.goto(&format!("{base}/dashboard/usage?tenant=org_acme&r=30d"))
        .await;
    assert!(!c.source().await.contains(&acme_key));
    // The customer's Requests page: its tenant's only, whatever the URL asks.
    c.goto(&format!(
        "{base}/dashboard/requests?tenant=org_acme&key_id={id}"
    ))
    .await;
    assert_eq!(c.text(".empty h2").await, "No requests");
    c.goto(&format!("{base}/dashboard/requests")).await;
    assert!(!c.source().await.contains(&id));
    c.screenshot("portal-requests").await;
    // The code was single-use (opened again in a portal session: asked first, then refused).
    c.goto(&portal_url).await;
    assert_eq!(c.text("h1").await, "Open another portal?");
    c.follow("form[action='/portal/open'] button").await;
    assert_eq!(c.text("h1").await, "This link cannot be used");
    c.goto(&format!("{base}/dashboard/keys/{globex_key}")).await;
    assert!(c.source().await.contains("Globex billing"));
    c.quit().await;
}

/// A leaked key in the browser (SPEC §15): GitHub reports a live key and a test key of one
/// customer; the operator sees both badged in the list (the revoked one without asking for
/// revoked keys), the report's address, source and action on the key's page, and rolls it from
/// there; the webhook page lists the deliveries; the customer's portal shows the same, at a
/// phone's width, and no webhook page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaked_key_stands_out_for_the_operator_and_the_customer() {
    use common::partners::*;
    let dir = scratch_dir("dashboard-leaks");
    let cfg_path = dir.join("plugin.json");
    std::fs::write(&cfg_path, plugin_config().to_string()).unwrap();
    let github = Partner::new(11);
    let keys = Http::start(keys_answer(key_list(&[&github])));
    let receiver = Http::start(Box::new(|_, _| (204, String::new(), Duration::ZERO)));
    let db = format!("sqlite:{}", dir.join("keys.db").display());
    let s = Service::start_args(
        ServiceOpts {
            database: &db,
            config: &cfg_path,
            gateway: false,
            sync_token: true,
            port: None,
        },
        &[
            "--insecure-cookies",
            "--github-keys-url",
            &keys.url("/keys"),
            "--webhook-url",
            &receiver.url("/hooks"),
            "--webhook-secret",
            "whsec_browser_0123456789",
        ],
    );
    let base = s.url();
    let make = |prefix: &str, name: &str| {
        let body = json!({"prefix": prefix, "tenant": "org_acme", "name": name}).to_string();
        let (st, b) = s.admin("POST", "/v1/api-keys", Some(&body));
        assert_eq!(st, 201, "{b}");
        (
            b["data"]["id"].as_str().unwrap().to_string(),
            b["data"]["key"].as_str().unwrap().to_string(),
        )
    };
    let (live_id, live) = make("shop_live_", "Acme checkout");
    let (test_id, test) = make("shop_test_", "Acme CI");
    let report = json!([
        {"token": live, "type": "keygate_shop_live", "url": "https://github.com/acme/shop/blob/4f2a/settings.py#L12", "source": "content"},
        {"token": test, "type": "keygate_shop_test", "url": "javascript:alert(1)", "source": "commit"}
    ])
    .to_string();
    let (st, _, text) = call_raw(
        &base,
        "POST",
        "/v1/leaks/github",
        Some(&report),
        &[
            ("Github-Public-Key-Identifier", github.id.clone()),
            (
                "Github-Public-Key-Signature",
                github.sign(report.as_bytes()),
            ),
        ],
    );
    assert_eq!(st, 200, "{text}");

    let b = Browser::start("leaks-operator", 1280).await;
    b.goto(&format!("{base}/")).await;
    b.fill("#token", ADMIN_TOKEN).await;
    b.follow("form[action='/sign-in'] button").await;
    assert_eq!(b.path().await, "/dashboard/keys");
    let list = b.source().await;
    assert!(
        list.contains("Acme checkout") && list.contains("Acme CI"),
        "the revoked leaked key is listed"
    );
    assert_eq!(
        list.matches(r#"<span class="state state-leaked">leaked</span>"#)
            .count(),
        2
    );
    b.screenshot("keys-leaked").await;

    b.goto(&format!("{base}/dashboard/keys/{live_id}")).await;
    assert!(b
        .text(".leak h2")
        .await
        .contains("This key was found in public"));
    let leak = b.text(".leak").await;
    assert!(
        leak.contains("Reported by GitHub secret scanning"),
        "{leak}"
    );
    assert!(leak.contains("found in content"), "{leak}");
    assert!(leak.contains("Action taken: revoked at once."), "{leak}");
    assert!(b.source().await.contains(
        r#"<a class="url" href="https://github.com/acme/shop/blob/4f2a/settings.py#L12" rel="noopener noreferrer nofollow">"#
    ));
    b.screenshot("key-leaked").await;
    // The test key: its policy is notify, and a report's address that is not http(s) is text.
    b.goto(&format!("{base}/dashboard/keys/{test_id}")).await;
    let leak = b.text(".leak").await;
    assert!(leak.contains("the key still works"), "{leak}");
    assert!(!b.source().await.contains("href=\"javascript:"));
    assert!(
        b.exists("#leak-grace").await,
        "a live key's roll asks for a grace period"
    );
    // Rolled from the leak card: the replacement is shown once.
    b.goto(&format!("{base}/dashboard/keys/{live_id}")).await;
    b.follow(".leak button[type=submit]").await;
    assert_eq!(b.text("h1").await, "The new key");
    assert!(b.text("#new-key").await.starts_with("shop_live_"));

    // The webhook page: every event delivered.
    until(Duration::from_secs(10), "deliveries listed", async || {
        b.goto(&format!("{base}/dashboard/webhooks")).await;
        let page = b.source().await;
        // created ×2, leaked ×2, revoked ×1, rolled ×1
        page.matches("state-delivered").count() == 6
    })
    .await;
    let page = b.source().await;
    assert!(page.contains("<code>key.leaked</code>") && page.contains("<code>key.rolled</code>"));
    b.screenshot("webhooks").await;
    b.goto(&format!("{base}/dashboard/audit")).await;
    assert!(b.source().await.contains("(github: revoked)"));
    b.quit().await;

    // The customer's portal, at a phone's width.
    let (st, p) = s.admin(
        "POST",
        "/v1/portal-sessions",
        Some(r#"{"tenant":"org_acme","ttl_seconds":300}"#),
    );
    assert_eq!(st, 201, "{p}");
    let url = p["data"]["url"].as_str().unwrap();
    let c = Browser::start("leaks-portal", 390).await;
    c.goto(&format!(
        "{base}{}",
        &url[url.find("/portal/open").unwrap()..]
    ))
    .await;
    assert_eq!(c.path().await, "/dashboard/keys");
    assert!(c
        .source()
        .await
        .contains(r#"<span class="state state-leaked">leaked</span>"#));
    c.goto(&format!("{base}/dashboard/keys/{test_id}")).await;
    assert!(c
        .text(".leak")
        .await
        .contains("Reported by GitHub secret scanning"));
    c.screenshot("portal-key-leaked").await;
    c.goto(&format!("{base}/dashboard/webhooks")).await;
    assert_eq!(c.text("h1").await, "Not found");
    assert!(
        !c.source().await.contains("/dashboard/webhooks\""),
        "no webhook link in the portal"
    );
    c.quit().await;
}

async fn attr(b: &Browser, css: &str, name: &str) -> String {
    let e = b.client.find(fantoccini::Locator::Css(css)).await.unwrap();
    e.attr(name).await.unwrap().unwrap_or_default()
}

/// The visible text of every element `css` finds ("" for one not shown at this width).
async fn texts(b: &Browser, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in b
        .client
        .find_all(fantoccini::Locator::Css(css))
        .await
        .unwrap()
    {
        out.push(e.text().await.unwrap());
    }
    out
}

async fn prop(b: &Browser, css: &str, name: &str) -> String {
    let e = b.client.find(fantoccini::Locator::Css(css)).await.unwrap();
    e.prop(name).await.unwrap().unwrap_or_default()
}

/// Credits on the pages (SPEC §14): a key's balance as Envoy spends it (the usage reports'
/// credits) on the operator's key page and in the list, the top-up form's round trip (add, then
/// set: the numbers on the page change, each change in the audit page as `key.credits`), bad
/// amounts and a key revoked under an open page answered with the API's words on the page; then
/// the customer's portal, at a phone's width, shows its balances and no form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_are_shown_and_topped_up_in_the_browser() {
    let dir = scratch_dir("dashboard-credits-service");
    let cfg_path = dir.join("plugin.json");
    let cfg = plugin_config();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let db = format!("sqlite:{}", dir.join("keys.db").display());
    let s = Service::start_args(
        ServiceOpts {
            database: &db,
            config: &cfg_path,
            gateway: false,
            sync_token: true,
            port: None,
        },
        &["--insecure-cookies"],
    );
    let up = Upstream::start("api");
    let cfg_text = cfg.to_string();
    let mut o = EnvoyOpts::new("dashboard-credits", &cfg_text, up.port);
    o.key_service = Some(s.port);
    let e = Envoy::start(&o);
    let base = s.url();
    let make = |name: &str, credits: Value| {
        let mut body = json!({"prefix": "shop_live_", "tenant": "org_acme", "name": name});
        if !credits.is_null() {
            body["credits"] = credits;
        }
        let (st, b) = s.admin("POST", "/v1/api-keys", Some(&body.to_string()));
        assert_eq!(st, 201, "{b}");
        (
            b["data"]["id"].as_str().unwrap().to_string(),
            b["data"]["key"].as_str().unwrap().to_string(),
        )
    };
    let (search_id, search) = make(
        "Acme search",
        json!({"granted": 10000, "refill": {"interval": "month", "day": 1}}),
    );
    let (trial_id, _) = make("Acme trial", json!({"granted": 20}));
    let (ci_id, _) = make("Acme CI", Value::Null);
    let (old_id, _) = make("Acme old", json!({"granted": 5}));

    // Three requests through Envoy: 9,997 left once the usage reports are in.
    until(Duration::from_secs(10), "the key admitted", async || {
        status(&e, "GET", "/v1/search", &search) == 200
    })
    .await;
    for _ in 0..2 {
        assert_eq!(status(&e, "GET", "/v1/search", &search), 200);
    }
    let b = Browser::start("credits-operator", 1280).await;
    b.goto(&format!("{base}/")).await;
    b.fill("#token", ADMIN_TOKEN).await;
    b.follow("form[action='/sign-in'] button").await;
    let key_url = format!("{base}/dashboard/keys/{search_id}");
    until(
        Duration::from_secs(2 * INTERVAL + 1 + 5),
        "what Envoy spent on the key's page",
        async || {
            b.goto(&key_url).await;
            b.text("#credits-spent").await == "3"
        },
    )
    .await;
    assert_eq!(b.text("#credits-title").await, "Credits");
    assert_eq!(b.text("#credits-remaining").await, "9,997");
    assert_eq!(
        b.text("#credits-granted").await,
        "10,000 per month on day 1"
    );
    assert_eq!(
        b.text("#credits dl dt:nth-of-type(2)").await,
        "Spent this period"
    );
    let (_, k) = s.admin("GET", &format!("/v1/api-keys/{search_id}"), None);
    let reset = keygate::timestamp::format_rfc3339(k["data"]["credits"]["reset"].as_i64().unwrap());
    assert!(reset.ends_with("-01T00:00:00Z"), "{reset}");
    // The next refill: UTC in the page (kept on hover once the script shows the viewer's zone).
    assert_eq!(attr(&b, "#credits-refill time", "datetime").await, reset);
    assert_eq!(
        attr(&b, "#credits-refill time", "title").await,
        reset.replace('T', " ").replace('Z', " UTC")
    );
    assert!(b
        .source()
        .await
        .contains("<meter min=\"0\" max=\"10000\" low=\"1000\" optimum=\"10000\" value=\"9997\""));
    b.screenshot("key-credits").await;

    // Add, then set: the page's numbers change, after a redirect (a reload changes nothing).
    b.select("#credits-op", "add").await;
    b.fill("#credits-amount", "1,500").await;
    b.follow("form[action$='/credits'] button").await;
    assert_eq!(
        b.path().await,
        format!("/dashboard/keys/{search_id}?done=credits")
    );
    assert_eq!(
        b.text(".notice").await,
        "Credits changed. Every Envoy syncing from this service has the new balance within seconds."
    );
    assert_eq!(b.text("#credits-remaining").await, "11,497");
    b.goto(&format!("{key_url}?done=credits")).await;
    assert_eq!(
        b.text("#credits-remaining").await,
        "11,497",
        "not added twice"
    );
    b.select("#credits-op", "set").await;
    b.fill("#credits-amount", "250").await;
    b.follow("form[action$='/credits'] button").await;
    let set_at = Instant::now();
    assert_eq!(b.text("#credits-remaining").await, "250");
    assert_eq!(b.text("#credits-spent").await, "0", "a set counts anew");
    let (_, k) = s.admin("GET", &format!("/v1/api-keys/{search_id}"), None);
    assert_eq!(
        (
            k["data"]["credits"]["remaining"].clone(),
            k["data"]["credits"]["spent"].clone()
        ),
        (json!(250), json!(0))
    );
    // Bad amounts: the API's words on the page, what was typed kept, nothing changed.
    b.client
        .execute(
            "document.getElementById('credits-amount').removeAttribute('pattern'); return null",
            vec![],
        )
        .await
        .unwrap();
    for (op, typed, message) in [
        (
            "add",
            "ten",
            "amount: expected a whole number ≥ 0, found a string",
        ),
        (
            "subtract",
            "-5",
            "amount: expected a whole number ≥ 0, found a number",
        ),
        (
            "set",
            "9007199254740992",
            "amount: must be at most 9007199254740991",
        ),
    ] {
        b.select("#credits-op", op).await;
        b.fill("#credits-amount", typed).await;
        b.follow("form[action$='/credits'] button").await;
        assert_eq!(b.text(".error").await, message, "{typed}");
        assert_eq!(prop(&b, "#credits-amount", "value").await, typed);
        assert!(
            b.exists(&format!("#credits-op option[value={op}][selected]"))
                .await
        );
        b.client
            .execute(
                "document.getElementById('credits-amount').removeAttribute('pattern'); return null",
                vec![],
            )
            .await
            .unwrap();
    }
    b.goto(&key_url).await;
    assert_eq!(b.text("#credits-remaining").await, "250", "unchanged");

    // A key revoked while its page is open: the form is answered, not obeyed.
    b.goto(&format!("{base}/dashboard/keys/{old_id}")).await;
    let (st, r) = s.admin("DELETE", &format!("/v1/api-keys/{old_id}"), None);
    assert_eq!(st, 200, "{r}");
    b.fill("#credits-amount", "5").await;
    b.follow("form[action$='/credits'] button").await;
    assert_eq!(
        b.text(".error").await,
        "The API key is revoked; a revoked key is not changed"
    );
    assert!(
        !b.exists("form[action$='/credits']").await,
        "no form for a revoked key"
    );
    assert_eq!(b.text("#credits-remaining").await, "5");

    // A key without credits has no section; the list shows each balance in a column.
    b.goto(&format!("{base}/dashboard/keys/{ci_id}")).await;
    assert!(!b.exists("#credits").await);
    b.goto(&format!("{base}/dashboard/keys?tenant=org_acme"))
        .await;
    let list = b.source().await;
    assert!(list.contains("<th scope=\"col\" class=\"num wide\">Credits <span class=\"visually-hidden\">left of granted</span></th>"));
    assert!(list.contains("<td class=\"num wide credits-left\">20 / 20</td>"));
    assert!(
        list.contains("<td class=\"num wide credits-left\"><span class=\"muted\">—</span></td>")
    );
    // At a laptop's width the column, not the line under the name.
    let column = texts(&b, "td.credits-left").await;
    assert!(column.contains(&"20 / 20".to_string()), "{column:?}");
    assert!(texts(&b, "span.credits-left")
        .await
        .iter()
        .all(String::is_empty));
    b.screenshot("keys-credits").await;

    // Every change in the audit log, with the session as actor.
    b.goto(&format!("{base}/dashboard/audit?key={search_id}"))
        .await;
    let audit = b.source().await;
    for change in ["add 1,500", "set 250"] {
        assert!(
            audit.contains(&format!(
                "<td>key.credits <span class=\"muted\">({change})</span></td>"
            )),
            "{change} in the audit page"
        );
    }
    assert_eq!(
        audit.matches("<td>key.credits").count(),
        2,
        "refusals change nothing"
    );
    assert!(audit.contains("admin os_"));
    b.quit().await;

    // Envoy has the set within the sync bound: one request spends from 250.
    tokio::time::sleep(
        (set_at + Duration::from_secs(INTERVAL + 2)).saturating_duration_since(Instant::now()),
    )
    .await;
    let r = send(e.port, "GET", "/v1/search", &[("x-api-key", &search)]);
    assert_eq!(
        (r.status, r.header("x-credits-remaining")),
        (200, Some("249"))
    );

    // The customer: its balances at a phone's width, and no form.
    let (st, p) = s.admin(
        "POST",
        "/v1/portal-sessions",
        Some(r#"{"tenant":"org_acme","ttl_seconds":300}"#),
    );
    assert_eq!(st, 201, "{p}");
    let url = p["data"]["url"].as_str().unwrap();
    let c = Browser::start("credits-portal", 390).await;
    c.goto(&format!(
        "{base}{}",
        &url[url.find("/portal/open").unwrap()..]
    ))
    .await;
    assert_eq!(c.path().await, "/dashboard/keys");
    assert!(c
        .source()
        .await
        .contains("<td class=\"num wide credits-left\">20 / 20</td>"));
    // At a phone's width the balance is a line under the name; the column is left out.
    let under = texts(&c, "span.credits-left").await;
    assert!(under.contains(&"20 / 20 credits".to_string()), "{under:?}");
    assert!(texts(&c, "td.credits-left")
        .await
        .iter()
        .all(String::is_empty));
    c.screenshot("portal-keys-credits").await;
    c.goto(&format!("{base}/dashboard/keys/{trial_id}")).await;
    assert_eq!(c.text("#credits-remaining").await, "20");
    assert_eq!(c.text("#credits-granted").await, "20 in all");
    assert_eq!(c.text("#credits dl dt:nth-of-type(2)").await, "Spent");
    assert_eq!(c.text("#credits-refill").await, "no refill");
    // What Envoy spent since the set, once reported.
    until(
        Duration::from_secs(2 * INTERVAL + 1 + 5),
        "the request after the set on the customer's page",
        async || {
            c.goto(&format!("{base}/dashboard/keys/{search_id}")).await;
            c.text("#credits-spent").await == "1"
        },
    )
    .await;
    assert_eq!(c.text("#credits-remaining").await, "249");
    assert_eq!(
        c.text("#credits-granted").await,
        "10,000 per month on day 1"
    );
    assert!(
        !c.exists("form[action$='/credits']").await,
        "no form for a customer"
    );
    assert!(!c.exists("#credits-op").await);
    c.screenshot("portal-key-credits").await;
    c.quit().await;
}

/// A tenant's shared balance on the pages (SPEC §14): on the page of a key without credits of
/// its own, what the tenant's keys without credits spent through Envoy (a key with its own
/// balance not counted), the operator's tenant form's round trip (add, a bad amount, set: the
/// numbers change, Envoy spends from the set, the audit page says `tenant.credits`); then the
/// customer's portal, at a phone's width, shows the balance and no form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_balance_is_shown_and_topped_up_in_the_browser() {
    let dir = scratch_dir("dashboard-tenant-credits-service");
    let cfg_path = dir.join("plugin.json");
    let cfg = plugin_config();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let db = format!("sqlite:{}", dir.join("keys.db").display());
    let s = Service::start_args(
        ServiceOpts {
            database: &db,
            config: &cfg_path,
            gateway: false,
            sync_token: true,
            port: None,
        },
        &["--insecure-cookies"],
    );
    let up = Upstream::start("api");
    let cfg_text = cfg.to_string();
    let mut o = EnvoyOpts::new("dashboard-tenant-credits", &cfg_text, up.port);
    o.key_service = Some(s.port);
    let e = Envoy::start(&o);
    let base = s.url();
    let make = |name: &str, credits: Value| {
        let mut body = json!({"prefix": "shop_live_", "tenant": "org_initech", "name": name});
        if !credits.is_null() {
            body["credits"] = credits;
        }
        let (st, b) = s.admin("POST", "/v1/api-keys", Some(&body.to_string()));
        assert_eq!(st, 201, "{b}");
        (
            b["data"]["id"].as_str().unwrap().to_string(),
            b["data"]["key"].as_str().unwrap().to_string(),
        )
    };
    let (app_id, app) = make("Initech app", Value::Null);
    let (_, batch) = make("Initech batch", Value::Null);
    let (metered_id, metered) = make("Initech metered", json!({"granted": 50}));

    // Three requests with one key of the tenant, two with another: the tenant's 1,000 less 5.
    // The key with its own balance spends that, not the tenant's.
    until(Duration::from_secs(10), "the keys admitted", async || {
        status(&e, "GET", "/v1/search", &app) == 200
    })
    .await;
    let r = send(e.port, "GET", "/v1/search", &[("x-api-key", &app)]);
    assert_eq!(
        (r.status, r.header("x-credits-remaining")),
        (200, Some("998"))
    );
    assert_eq!(status(&e, "GET", "/v1/search", &app), 200);
    for _ in 0..2 {
        assert_eq!(status(&e, "GET", "/v1/search", &batch), 200);
    }
    assert_eq!(status(&e, "GET", "/v1/search", &metered), 200);
    let b = Browser::start("tenant-credits-operator", 1280).await;
    b.goto(&format!("{base}/")).await;
    b.fill("#token", ADMIN_TOKEN).await;
    b.follow("form[action='/sign-in'] button").await;
    let key_url = format!("{base}/dashboard/keys/{app_id}");
    until(
        Duration::from_secs(2 * INTERVAL + 1 + 5),
        "what the tenant's keys spent on the key's page",
        async || {
            b.goto(&key_url).await;
            b.text("#tenant-credits-spent").await == "5"
        },
    )
    .await;
    assert!(!b.exists("#credits").await, "no balance of its own");
    assert_eq!(b.text("#tenant-credits-title").await, "Tenant balance");
    assert_eq!(b.text("#tenant-credits-tenant").await, "org_initech");
    assert_eq!(b.text("#tenant-credits-remaining").await, "995");
    assert_eq!(b.text("#tenant-credits-granted").await, "1,000 per day");
    assert_eq!(b.text("#tenant-credits-top-up").await, "none");
    assert_eq!(
        b.text("#tenant-credits dl dt:nth-of-type(4)").await,
        "Spent this period"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let tomorrow = keygate::timestamp::format_rfc3339((now / 86_400 + 1) * 86_400);
    assert_eq!(
        attr(&b, "#tenant-credits-refill time", "datetime").await,
        tomorrow
    );
    assert!(b
        .text("#tenant-credits")
        .await
        .contains("as the proxies last reported it"));
    b.screenshot("key-tenant-credits").await;
    // A key with its own balance shows that, not the tenant's.
    b.goto(&format!("{base}/dashboard/keys/{metered_id}")).await;
    assert_eq!(b.text("#credits-spent").await, "1");
    assert!(!b.exists("#tenant-credits").await);

    // Add: the numbers change, after a redirect (a reload changes nothing).
    b.goto(&key_url).await;
    b.select("#tenant-credits-op", "add").await;
    b.fill("#tenant-credits-amount", "1,500").await;
    b.follow("#tenant-credits form button").await;
    assert_eq!(
        b.path().await,
        format!("/dashboard/keys/{app_id}?done=tenant-credits")
    );
    assert_eq!(
        b.text(".notice").await,
        "The tenant's balance changed. Every Envoy syncing from this service has it within seconds."
    );
    assert_eq!(b.text("#tenant-credits-top-up").await, "+1,500");
    assert_eq!(b.text("#tenant-credits-remaining").await, "2,495");
    b.goto(&format!("{key_url}?done=tenant-credits")).await;
    assert_eq!(
        b.text("#tenant-credits-remaining").await,
        "2,495",
        "not added twice"
    );
    // A bad amount: the API's words, what was typed kept, nothing changed.
    b.client
        .execute(
            "document.getElementById('tenant-credits-amount').removeAttribute('pattern'); return null",
            vec![],
        )
        .await
        .unwrap();
    b.select("#tenant-credits-op", "subtract").await;
    b.fill("#tenant-credits-amount", "ten").await;
    b.follow("#tenant-credits form button").await;
    assert_eq!(
        b.text(".error").await,
        "amount: expected a whole number ≥ 0, found a string"
    );
    assert_eq!(prop(&b, "#tenant-credits-amount", "value").await, "ten");
    assert!(
        b.exists("#tenant-credits-op option[value=subtract][selected]")
            .await
    );
    assert_eq!(b.text("#tenant-credits-remaining").await, "2,495");
    // Set: what remains is 300, less what was reported spent from the start of this hour.
    b.select("#tenant-credits-op", "set").await;
    b.fill("#tenant-credits-amount", "300").await;
    b.follow("#tenant-credits form button").await;
    let set_at = Instant::now();
    assert_eq!(b.text("#tenant-credits-top-up").await, "\u{2212}700");
    let spent: u64 = b.text("#tenant-credits-spent").await.parse().unwrap();
    let left: u64 = b.text("#tenant-credits-remaining").await.parse().unwrap();
    assert_eq!(left + spent, 300, "since the start of the set's hour");
    assert!(b
        .text("#tenant-credits")
        .await
        .contains("since the balance was last set"));

    // Both changes in the audit page, with the session as actor; the refusal changed nothing.
    b.goto(&format!("{base}/dashboard/audit?tenant=org_initech"))
        .await;
    let audit = b.source().await;
    for change in ["add 1,500", "set 300"] {
        assert!(
            audit.contains(&format!(
                "<td>tenant.credits <span class=\"muted\">({change})</span></td>"
            )),
            "{change} in the audit page"
        );
    }
    assert_eq!(audit.matches("<td>tenant.credits").count(), 2);
    // At a phone's width, for the layout.
    let p = Browser::start("tenant-credits-operator-phone", 390).await;
    p.goto(&format!("{base}/")).await;
    p.fill("#token", ADMIN_TOKEN).await;
    p.follow("form[action='/sign-in'] button").await;
    p.goto(&key_url).await;
    assert!(p.exists("#tenant-credits form").await);
    p.screenshot("key-tenant-credits-phone").await;
    p.quit().await;
    b.quit().await;

    // Envoy has the set within the sync bound: the next request spends from 300.
    tokio::time::sleep(
        (set_at + Duration::from_secs(INTERVAL + 2)).saturating_duration_since(Instant::now()),
    )
    .await;
    let r = send(e.port, "GET", "/v1/search", &[("x-api-key", &batch)]);
    assert_eq!(
        (r.status, r.header("x-credits-remaining")),
        (200, Some("299"))
    );

    // The customer: the balance its keys draw from, at a phone's width, and no form.
    let (st, p) = s.admin(
        "POST",
        "/v1/portal-sessions",
        Some(r#"{"tenant":"org_initech","ttl_seconds":300}"#),
    );
    assert_eq!(st, 201, "{p}");
    let url = p["data"]["url"].as_str().unwrap();
    let c = Browser::start("tenant-credits-portal", 390).await;
    c.goto(&format!(
        "{base}{}",
        &url[url.find("/portal/open").unwrap()..]
    ))
    .await;
    assert_eq!(c.path().await, "/dashboard/keys");
    until(
        Duration::from_secs(2 * INTERVAL + 1 + 5),
        "the request after the set on the customer's page",
        async || {
            c.goto(&key_url).await;
            c.text("#tenant-credits-spent").await == (spent + 1).to_string()
        },
    )
    .await;
    assert_eq!(c.text("#tenant-credits-tenant").await, "org_initech");
    assert_eq!(c.text("#tenant-credits-granted").await, "1,000 per day");
    assert_eq!(c.text("#tenant-credits-top-up").await, "\u{2212}700");
    assert_eq!(
        c.text("#tenant-credits-remaining").await,
        (299 - spent).to_string()
    );
    assert!(
        !c.exists("#tenant-credits form").await,
        "no form for a customer"
    );
    assert!(!c.exists("#tenant-credits-op").await);
    c.screenshot("portal-key-tenant-credits").await;
    c.quit().await;
}
