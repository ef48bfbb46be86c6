//! A real browser for the dashboard tests: Debian's Chromium, headless, driven through its
//! chromedriver (WebDriver) by fantoccini. Each [`Browser`] has its own profile (cookies) and
//! its own chromedriver, stopped on drop.

use super::{free_port, repo};
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Browser {
    pub client: Client,
    width: u32,
    driver: Child,
    _profile: PathBuf,
}

fn chromedriver() -> PathBuf {
    let p = PathBuf::from("/usr/bin/chromedriver");
    assert!(
        p.exists(),
        "{} is missing: run `make chromium` (make test does)",
        p.display()
    );
    p
}

impl Browser {
    /// A headless Chromium with a fresh profile, `width` pixels wide.
    pub async fn start(name: &str, width: u32) -> Browser {
        let port = free_port();
        let driver = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        let profile = repo()
            .join("target/itest")
            .join(format!("chrome-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        let mut caps = Capabilities::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--hide-scrollbars", "--force-device-scale-factor=1",
                         format!("--window-size={width},900"),
                         format!("--user-data-dir={}", profile.display())]
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(30),
                        "chromedriver did not start a session: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Browser {
            client,
            width,
            driver,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("goto");
    }

    pub async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.expect("text"),
            Err(e) => panic!(
                "{css}: {e}\nthe page ({}):\n{}",
                self.path().await,
                self.source().await
            ),
        }
    }

    pub async fn exists(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .expect("find_all")
            .is_empty()
    }

    pub async fn fill(&self, css: &str, value: &str) {
        let e = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        e.clear().await.expect("clear");
        e.send_keys(value).await.expect("send_keys");
    }

    pub async fn select(&self, css: &str, value: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .select_by_value(value)
            .await
            .expect("select");
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .expect("click");
    }

    /// Clicks something that loads a new page (a form's button, a link) and waits for that page.
    pub async fn follow(&self, css: &str) {
        self.client
            .execute("window.__keygateOldPage = true; return null", vec![])
            .await
            .expect("mark the page");
        self.click(css).await;
        let start = Instant::now();
        loop {
            let loaded = self
                .client
                .execute(
                    "return window.__keygateOldPage === undefined && document.readyState === 'complete'",
                    vec![],
                )
                .await
                .ok()
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            if loaded {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{css}: no new page within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn path(&self) -> String {
        let u = self.client.current_url().await.expect("url");
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        }
    }

    pub async fn source(&self) -> String {
        self.client.source().await.expect("source")
    }

    /// A screenshot of the whole page into `target/screenshots/<name>.png`, and into
    /// `$SCREENSHOTS_DIR` when set (`make screenshots` writes docs/dashboard.md's).
    pub async fn screenshot(&self, name: &str) {
        // The whole page: the window as tall as the document (measured at the usual height
        // first, so a tall page before does not leave this one padded).
        let _ = self.client.set_window_size(self.width, 900).await;
        let height = self
            .client
            .execute("return document.documentElement.scrollHeight", vec![])
            .await
            .ok()
            .and_then(|v| v.as_u64())
            .unwrap_or(900)
            .clamp(400, 4000) as u32;
        let _ = self.client.set_window_size(self.width, height + 120).await;
        let png = self.client.screenshot().await.expect("screenshot");
        let mut dirs = vec![repo().join("target/screenshots")];
        if let Ok(d) = std::env::var("SCREENSHOTS_DIR") {
            dirs.push(repo().join(d));
        }
        for d in dirs {
            std::fs::create_dir_all(&d).expect("screenshot dir");
            std::fs::write(d.join(format!("{name}.png")), &png).expect("screenshot");
        }
    }
}

impl Browser {
    /// Ends the WebDriver session (Chromium exits), then chromedriver.
    pub async fn quit(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // A Chromium left by a failed test: found by its own profile directory.
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(format!("user-data-dir={}", self._profile.display()))
            .status();
    }
}
