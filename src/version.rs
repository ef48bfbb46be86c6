//! What was built: the package version and the source revision it was built from. `make` sets
//! `KEYGATE_REVISION` (the commit, with `-dirty` when the tree had uncommitted changes); a build
//! without it says `unknown`. The filter logs both when it is configured; `keygate --version`
//! prints them; images carry them in their labels.

/// The package version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The source revision, or `unknown`.
pub const REVISION: &str = match option_env!("KEYGATE_REVISION") {
    Some(r) if !r.is_empty() => r,
    _ => "unknown",
};
