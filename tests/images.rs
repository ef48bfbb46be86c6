//! The images `make images` leaves in target/images (SPEC §12), held to what their users do
//! with them: Istio's Wasm image fetcher reads the filter's image (its rules, written out
//! below as Istio's `pkg/wasm/imagefetcher.go` applies them); a registry stores it and gives it
//! back by digest (Debian's `docker-registry`, `skopeo`); podman runs the services' image as
//! `keygate --version`, `keygate serve` and `keygate ratelimit` against Redis. Builds are
//! reproducible: the same inputs, the same digests.
mod common;
use common::fleet::{grpc_health, Redis};
use common::service::sha_hex;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";

fn images() -> PathBuf {
    let dir = repo().join("target/images");
    assert!(
        dir.join("keygate/index.json").exists() && dir.join("keygate-filter/index.json").exists(),
        "{} has no images: run `make images` first",
        dir.display()
    );
    dir
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An OCI image layout: its one manifest (and that manifest's digest) and blobs by digest.
struct Layout(PathBuf);

impl Layout {
    fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        std::fs::read(self.0.join("blobs/sha256").join(hex)).expect("blob")
    }
    fn json(&self, digest: &str) -> Value {
        serde_json::from_slice(&self.blob(digest)).expect("JSON blob")
    }
    fn manifest(&self) -> (String, Value) {
        let index: Value =
            serde_json::from_slice(&std::fs::read(self.0.join("index.json")).unwrap()).unwrap();
        let d = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], VERSION,
            "tagged with the version"
        );
        let m = self.json(&d);
        (d, m)
    }
}

/// `plugin.wasm` from a gzip-compressed tar, as Istio's `extractWasmPluginBinary` finds it.
fn plugin_wasm(tar_gz: &[u8]) -> Result<Vec<u8>, String> {
    let dir = scratch_dir("images-untar");
    std::fs::write(dir.join("layer.tar.gz"), tar_gz).unwrap();
    let out = Command::new("tar")
        .args(["-xzOf", "layer.tar.gz", "plugin.wasm"])
        .current_dir(&dir)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err("plugin.wasm not found in the archive".into())
    }
}

/// What Istio's Wasm image fetcher does with a manifest: a Docker image's last layer, else the
/// compat variant (last layer `tar+gzip` holding `plugin.wasm`), else the Wasm artifact
/// (exactly two layers, one of them the Wasm content). The Wasm binary, or every reason.
fn istio_reads(manifest: &Value, blob: impl Fn(&str) -> Vec<u8>) -> Result<Vec<u8>, String> {
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    let media = |l: &Value| l["mediaType"].as_str().unwrap_or_default().to_string();
    if manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json" {
        let last = layers
            .last()
            .ok_or("number of layers must be greater than zero")?;
        if media(last) != DOCKER_LAYER {
            return Err(format!("invalid media type {}", media(last)));
        }
        return plugin_wasm(&blob(last["digest"].as_str().unwrap_or_default()));
    }
    let compat = match layers.last() {
        None => Err("number of layers must be greater than zero".to_string()),
        Some(l) if media(l) != OCI_LAYER => Err(format!("invalid media type {}", media(l))),
        Some(l) => plugin_wasm(&blob(l["digest"].as_str().unwrap_or_default())),
    };
    let compat_error = match compat {
        Ok(wasm) => return Ok(wasm),
        Err(e) => e,
    };
    let artifact = if layers.len() != 2 {
        Err(format!(
            "number of layers must be 2 but got {}",
            layers.len()
        ))
    } else {
        match layers.iter().find(|l| media(l) == WASM_LAYER) {
            Some(l) => Ok(blob(l["digest"].as_str().unwrap_or_default())),
            None => Err(format!("could not find the layer of type {WASM_LAYER}")),
        }
    };
    artifact.map_err(|e| format!("compat variant: {compat_error}; oci variant: {e}"))
}

#[test]
fn the_filter_image_is_one_istio_reads_and_holds_the_built_filter() {
    let wasm = std::fs::read(wasm_path()).unwrap();
    let layout = Layout(images().join("keygate-filter"));
    let (_, m) = layout.manifest();
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(m["annotations"]["module.wasm.image/variant"], "compat");
    assert_eq!(m["layers"].as_array().map(Vec::len), Some(1));
    assert_eq!(m["layers"][0]["mediaType"], OCI_LAYER);
    let read = istio_reads(&m, |d| layout.blob(d)).expect("Istio reads the image");
    assert!(read == wasm, "plugin.wasm is not the built keygate.wasm");

    // The one-layer artifact `oras push … plugin.wasm:application/vnd.module.wasm.content.layer.v1+wasm`
    // makes (the recipe the docs used to give): Istio refuses it.
    let one_layer = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.module.wasm.config.v1+json", "digest": "sha256:0", "size": 2},
        "layers": [{"mediaType": WASM_LAYER, "digest": "sha256:1", "size": wasm.len()}],
    });
    let refused = istio_reads(&one_layer, |_| wasm.clone()).unwrap_err();
    assert!(
        refused.contains("invalid media type application/vnd.module.wasm.content.layer.v1+wasm")
            && refused.contains("number of layers must be 2 but got 1"),
        "{refused}"
    );

    // Beside it, the .wasm and its SHA-256 for `url: https://…` with `sha256:`.
    let dir = images();
    assert!(std::fs::read(dir.join("keygate.wasm")).unwrap() == wasm);
    assert_eq!(
        std::fs::read_to_string(dir.join("keygate.wasm.sha256")).unwrap(),
        format!("{}  keygate.wasm\n", sha_hex_bytes(&wasm))
    );
}

fn sha_hex_bytes(b: &[u8]) -> String {
    keygate::keys::digest_hex(b)
}

#[test]
fn the_services_image_is_small_non_root_labelled_and_shell_free() {
    let layout = Layout(images().join("keygate"));
    let (_, m) = layout.manifest();
    let config = layout.json(m["config"]["digest"].as_str().unwrap());
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532");
    assert_eq!(c["Entrypoint"], json!(["/usr/local/bin/keygate"]));
    let labels = &c["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], VERSION);
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .unwrap_or_default();
    assert!(is_version_line(&format!(
        "keygate {VERSION} (revision {revision})"
    )));
    assert!(labels["org.opencontainers.image.source"].is_string());
    let compressed: u64 = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    assert!(compressed <= 25 * 1024 * 1024, "{compressed} bytes");

    // Its files: the binary, the C library it links, CA certificates, the user; no shell.
    let dir = scratch_dir("images-services");
    let layer = m["layers"][0]["digest"].as_str().unwrap();
    std::fs::write(dir.join("layer.tar.gz"), layout.blob(layer)).unwrap();
    let listing = run(Command::new("tar")
        .args(["-tzf", "layer.tar.gz"])
        .current_dir(&dir))
    .stdout;
    let files: Vec<String> = String::from_utf8_lossy(&listing)
        .lines()
        .map(str::to_string)
        .collect();
    for want in [
        "usr/local/bin/keygate",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/passwd",
        "lib64/ld-linux-x86-64.so.2",
        "lib/x86_64-linux-gnu/libc.so.6",
    ] {
        assert!(files.iter().any(|f| f == want), "no {want} in {files:?}");
    }
    assert!(
        !files
            .iter()
            .any(|f| f.starts_with("bin/") || f.ends_with("/sh")),
        "{files:?}"
    );
}

#[test]
fn images_are_reproducible() {
    let build = |out: &Path| {
        run(Command::new("python3")
            .arg(repo().join("deploy/images/build.py"))
            .arg("--wasm")
            .arg(wasm_path())
            .arg("--keygate")
            .arg(keygate_bin())
            .arg("--out")
            .arg(out)
            .args(["--version", VERSION, "--revision", "r", "--source", "s"])
            .args(["--epoch", "1700000000"]));
        ["keygate", "keygate-filter"].map(|i| Layout(out.join(i)).manifest().0)
    };
    let a = build(&scratch_dir("images-a"));
    let b = build(&scratch_dir("images-b"));
    assert_eq!(a, b);
}

/// Debian's `docker-registry` on a loopback port, in a temporary directory.
struct Registry {
    port: u16,
    child: std::process::Child,
}

impl Registry {
    fn start() -> Registry {
        let dir = scratch_dir("images-registry");
        let port = free_port();
        let config = format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\nlog:\n  level: warn\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry (Debian's package; `make containers` installs it)");
        let up = wait_until(20, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "the registry did not come up");
        Registry { port, child }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_filter_image_goes_through_a_registry_and_comes_back_by_digest() {
    let registry = Registry::start();
    let layout = images().join("keygate-filter");
    let (local_digest, _) = Layout(layout.clone()).manifest();
    let remote = format!("docker://127.0.0.1:{}/keygate-filter", registry.port);
    run(Command::new("skopeo").args([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:{VERSION}", layout.display()),
        &format!("{remote}:{VERSION}"),
    ]));
    let inspected: Value = serde_json::from_slice(
        &run(Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            &format!("{remote}:{VERSION}"),
        ]))
        .stdout,
    )
    .unwrap();
    assert_eq!(
        inspected["Digest"],
        local_digest.as_str(),
        "the registry keeps the digest"
    );

    // Pulled back by digest (as a WasmPlugin pins it), it is still the filter.
    let back = scratch_dir("images-pulled");
    run(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        &format!("{remote}@{local_digest}"),
        &format!("oci:{}:pulled", back.display()),
    ]));
    let pulled = Layout(back);
    let index: Value =
        serde_json::from_slice(&std::fs::read(pulled.0.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(digest, local_digest);
    let m = pulled.json(&digest);
    let wasm = istio_reads(&m, |d| pulled.blob(d)).expect("Istio reads the pulled image");
    assert!(wasm == std::fs::read(wasm_path()).unwrap());
}

/// podman with its storage in a temporary directory, set up as ENVOY-FACTS says podman runs on
/// these machines (runc, cgroupfs, no default ulimits); the image pulled from its layout.
struct Podman {
    dir: PathBuf,
    /// podman's run root: short, whatever the checkout's path (podman refuses one over 50 bytes).
    run_root: PathBuf,
    image: String,
    containers: Vec<String>,
}

impl Podman {
    fn new() -> Podman {
        let dir = scratch_dir("images-podman");
        std::fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = \"cgroupfs\"\n",
        )
        .unwrap();
        let mut p = Podman {
            dir,
            run_root: short_scratch_dir("run"),
            image: String::new(),
            containers: vec![],
        };
        let layout = images().join("keygate");
        let out = p.run(&["pull", "-q", &format!("oci:{}:{VERSION}", layout.display())]);
        p.image = String::from_utf8_lossy(&out.stdout).trim().to_string();
        p
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(&self.run_root)
            .args([
                "--storage-driver",
                "vfs",
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
            ])
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        run(&mut self.command(args))
    }

    /// A detached container on the host's network (the services listen on loopback ports).
    fn start(&mut self, name: &str, extra: &[&str], args: &[&str]) {
        let mut all = vec![
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            "--read-only",
        ];
        all.extend_from_slice(extra);
        all.push(&self.image);
        all.extend_from_slice(args);
        self.run(&all);
        self.containers.push(name.to_string());
    }

    fn logs(&self, name: &str) -> String {
        let out = self.command(&["logs", name]).output().unwrap();
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = self.command(&["rm", "-f", "-t", "2", c]).output();
        }
        let _ = self.command(&["rmi", "-a", "-f"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.run_root);
    }
}

#[test]
fn podman_runs_the_services_image_as_the_cli_the_key_service_and_the_rate_limit_service() {
    let mut podman = Podman::new();
    let image = podman.image.clone();

    // The CLI: the version and the revision it was built from.
    let out = podman.run(&["run", "--rm", &image, "--version"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(is_version_line(text.trim_end_matches('\n')), "{text:?}");
    // No shell to run.
    let no_shell = podman
        .command(&[
            "run",
            "--rm",
            "--entrypoint",
            "/bin/sh",
            &image,
            "-c",
            "true",
        ])
        .output()
        .unwrap();
    assert!(!no_shell.status.success(), "the image has a shell");

    // keygate serve: a configuration mounted read-only, SQLite in a volume; ready (/readyz).
    let cfg = scratch_dir("images-serve-config");
    std::fs::write(
        cfg.join("keygate.json"),
        json!({"prefixes": [{"prefix": "sk_live_", "environment": "LIVE"}], "keys": []})
            .to_string(),
    )
    .unwrap();
    // The volume belongs to the image's user (65532), as a Kubernetes fsGroup makes it.
    let data = scratch_dir("images-serve-data");
    std::os::unix::fs::chown(&data, Some(65532), Some(65532)).unwrap();
    let port = free_port();
    podman.start(
        "keygate-serve",
        &[
            "-v",
            &format!("{}:/config:ro", cfg.display()),
            "-v",
            &format!("{}:/var/lib/keygate", data.display()),
            "-e",
            &format!(
                "KEYGATE_ADMIN_TOKEN_SHA256={}",
                sha_hex("image-admin-token")
            ),
        ],
        &[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database",
            "sqlite:/var/lib/keygate/keys.db",
            "--config",
            "/config/keygate.json",
        ],
    );
    let healthy = wait_until(30, || answers(port, "/readyz"));
    assert!(
        healthy,
        "keygate serve did not answer:\n{}",
        podman.logs("keygate-serve")
    );

    // keygate ratelimit against Redis: its health follows Redis, so SERVING means it counts there.
    let redis = Redis::start("images-redis");
    let grpc = free_port();
    let metrics = free_port();
    podman.start(
        "keygate-ratelimit",
        &[],
        &[
            "ratelimit",
            "--listen",
            &format!("127.0.0.1:{grpc}"),
            "--redis",
            &format!("redis://127.0.0.1:{}", redis.port),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
        ],
    );
    let answering = wait_until(30, || answers(metrics, "/metrics"));
    assert!(
        answering,
        "keygate ratelimit did not answer:\n{}",
        podman.logs("keygate-ratelimit")
    );
    let serving = wait_until(30, || grpc_health(grpc) == Some(1));
    assert!(
        serving,
        "keygate ratelimit is not SERVING:\n{}",
        podman.logs("keygate-ratelimit")
    );
}

/// A 200 from a loopback port (nothing listening yet: false).
fn answers(port: u16, path: &str) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        && send(port, "GET", path, &[]).status == 200
}
