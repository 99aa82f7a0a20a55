//! Where perfvisor finds the data it boots: the default guest image
//! (scripts/build-guest-image.sh) and the L1 sandbox artefacts
//! (scripts/fetch-sandbox.sh). One search order for the CLI, the sandbox
//! crate, the examples and the tests (docs/install.md):
//!
//! 1. the environment variable (`PERFVISOR_GUEST_IMAGE`,
//!    `PERFVISOR_SANDBOX_DIR`): when it is set, only there;
//! 2. the data directory next to the installed binary,
//!    `<bin>/../share/perfvisor/<name>` (what scripts/install.sh fills);
//! 3. the build tree: `build/<name>` in the nearest directory above the
//!    binary that has one (`target/release/perfvisor` in a checkout finds
//!    `<checkout>/build/<name>`);
//! 4. the user's cache, `${PERFVISOR_CACHE:-$HOME/.cache/perfvisor}/current/<name>`,
//!    where the build scripts of any checkout publish the last image they
//!    built (so `cargo install --path .` works once they have run).
//!
//! The command-line flags (`--kernel`, `--initrd`) come before all of
//! these and are the caller's business. Nothing is compiled in: a copied
//! or installed binary looks where it is, not where it was built.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// How many directories above the binary the build-tree search climbs
/// (`<checkout>/target/<triple>/release/deps/<test>` is five).
const MAX_CLIMB: usize = 6;

/// One kind of artefact directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The default guest image: `vmlinux`, `initramfs.cpio`, ...
    GuestImage,
    /// The L1 sandbox: its kernel, modules and busybox.
    Sandbox,
}

impl Kind {
    /// The directory's name under `share/perfvisor/` and `build/`.
    pub fn dir_name(self) -> &'static str {
        match self {
            Kind::GuestImage => "guest-image",
            Kind::Sandbox => "sandbox",
        }
    }

    /// The environment variable that names the directory.
    pub fn env_var(self) -> &'static str {
        match self {
            Kind::GuestImage => "PERFVISOR_GUEST_IMAGE",
            Kind::Sandbox => "PERFVISOR_SANDBOX_DIR",
        }
    }

    /// The script that makes it in a checkout.
    pub fn script(self) -> &'static str {
        match self {
            Kind::GuestImage => "scripts/build-guest-image.sh",
            Kind::Sandbox => "scripts/fetch-sandbox.sh",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::GuestImage => "guest image",
            Kind::Sandbox => "L1 sandbox artefacts",
        })
    }
}

/// Which step of the search found a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The environment variable.
    Env,
    /// `<bin>/../share/perfvisor/<name>`.
    DataDir,
    /// `build/<name>` above the binary.
    BuildTree,
    /// `<cache root>/current/<name>`, published by the build scripts.
    UserCache,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Env => "from the environment",
            Source::DataDir => "installed data directory",
            Source::BuildTree => "build tree",
            Source::UserCache => "user cache",
        })
    }
}

/// A directory the search found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub dir: PathBuf,
    pub source: Source,
}

/// The search found nothing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{var}={dir} is not a directory: point {var} at the {kind} directory, or unset it to search the default places")]
    EnvNotADir {
        kind: Kind,
        var: &'static str,
        dir: PathBuf,
    },
    #[error("no {kind} found (looked in {}): in a checkout run {}, or install one with scripts/install.sh, or set {}", searched_list(.searched), .kind.script(), .kind.env_var())]
    NotFound { kind: Kind, searched: Vec<PathBuf> },
    #[error("cannot tell where the perfvisor binary is ({0}); set {1}")]
    NoExe(std::io::Error, &'static str),
}

fn searched_list(p: &[PathBuf]) -> String {
    p.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The environment variable that moves the cache root (the same one the
/// build scripts read, scripts/lib.sh).
pub const CACHE_ENV: &str = "PERFVISOR_CACHE";

/// The cache root the build scripts use: `$PERFVISOR_CACHE`, else
/// `$HOME/.cache/perfvisor`; `None` when neither is set.
pub fn cache_root() -> Option<PathBuf> {
    match std::env::var_os(CACHE_ENV) {
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".cache/perfvisor")),
    }
}

/// Find `kind` for the running binary and environment.
pub fn find(kind: Kind) -> Result<Found, Error> {
    let env = std::env::var_os(kind.env_var());
    if env.is_none() {
        let exe = std::env::current_exe().map_err(|e| Error::NoExe(e, kind.env_var()))?;
        return find_from(kind, None, &exe, cache_root().as_deref(), Path::is_dir);
    }
    find_from(kind, env, Path::new("/"), None, Path::is_dir)
}

/// The places [`find`] looks, in order, for a binary at `exe` (the data
/// directory, then each `build/<name>` up the tree, then the user cache
/// under `cache_root`).
pub fn candidates(kind: Kind, exe: &Path, cache_root: Option<&Path>) -> Vec<(PathBuf, Source)> {
    let mut out = Vec::new();
    if let Some(bin_dir) = exe.parent() {
        binary_relative(kind, bin_dir, &mut out);
    }
    if let Some(root) = cache_root {
        out.push((
            root.join("current").join(kind.dir_name()),
            Source::UserCache,
        ));
    }
    out
}

fn binary_relative(kind: Kind, bin_dir: &Path, out: &mut Vec<(PathBuf, Source)>) {
    if let Some(prefix) = bin_dir.parent() {
        out.push((
            prefix.join("share/perfvisor").join(kind.dir_name()),
            Source::DataDir,
        ));
    }
    out.extend(
        bin_dir
            .ancestors()
            .take(MAX_CLIMB)
            .map(|d| (d.join("build").join(kind.dir_name()), Source::BuildTree)),
    );
}

/// [`find`] with its inputs given: the environment variable's value,
/// the binary's path, the cache root and the test for a directory.
pub fn find_from(
    kind: Kind,
    env: Option<OsString>,
    exe: &Path,
    cache_root: Option<&Path>,
    is_dir: impl Fn(&Path) -> bool,
) -> Result<Found, Error> {
    if let Some(v) = env {
        let dir = PathBuf::from(v);
        return if is_dir(&dir) {
            Ok(Found {
                dir,
                source: Source::Env,
            })
        } else {
            Err(Error::EnvNotADir {
                kind,
                var: kind.env_var(),
                dir,
            })
        };
    }
    let places = candidates(kind, exe, cache_root);
    match places.iter().find(|(p, _)| is_dir(p)) {
        Some((dir, source)) => Ok(Found {
            dir: dir.clone(),
            source: *source,
        }),
        None => Err(Error::NotFound {
            kind,
            searched: places.into_iter().map(|(p, _)| p).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn dirs(list: &[&str]) -> impl Fn(&Path) -> bool {
        let set: HashSet<PathBuf> = list.iter().map(PathBuf::from).collect();
        move |p| set.contains(p)
    }

    #[test]
    fn the_environment_wins_and_is_not_second_guessed() {
        let f = find_from(
            Kind::GuestImage,
            Some("/img".into()),
            Path::new("/src/target/release/perfvisor"),
            None,
            dirs(&["/img", "/src/build/guest-image"]),
        )
        .unwrap();
        assert_eq!(f.dir, PathBuf::from("/img"));
        assert_eq!(f.source, Source::Env);
        let e = find_from(
            Kind::GuestImage,
            Some("/nope".into()),
            Path::new("/src/target/release/perfvisor"),
            None,
            dirs(&["/src/build/guest-image"]),
        )
        .unwrap_err();
        assert!(matches!(e, Error::EnvNotADir { .. }), "{e}");
        assert!(e.to_string().contains("PERFVISOR_GUEST_IMAGE=/nope"));
    }

    #[test]
    fn an_installed_binary_uses_its_data_directory() {
        let f = find_from(
            Kind::Sandbox,
            None,
            Path::new("/opt/pv/bin/perfvisor"),
            None,
            dirs(&[
                "/opt/pv/share/perfvisor/sandbox",
                "/opt/pv/bin/build/sandbox",
            ]),
        )
        .unwrap();
        assert_eq!(f.dir, PathBuf::from("/opt/pv/share/perfvisor/sandbox"));
        assert_eq!(f.source, Source::DataDir);
    }

    #[test]
    fn a_binary_in_a_checkout_finds_the_build_tree() {
        for exe in [
            "/src/target/release/perfvisor",
            "/src/target/release/deps/pvpmu-0123abcd",
            "/src/target/x86_64-unknown-linux-gnu/release/deps/t",
        ] {
            let f = find_from(
                Kind::GuestImage,
                None,
                Path::new(exe),
                None,
                dirs(&["/src/build/guest-image"]),
            )
            .unwrap();
            assert_eq!(f.dir, PathBuf::from("/src/build/guest-image"), "{exe}");
            assert_eq!(f.source, Source::BuildTree);
        }
    }

    #[test]
    fn nothing_found_lists_every_place_and_what_to_do() {
        let e = find_from(
            Kind::GuestImage,
            None,
            Path::new("/usr/local/bin/perfvisor"),
            None,
            dirs(&[]),
        )
        .unwrap_err();
        let msg = e.to_string();
        for p in [
            "/usr/local/share/perfvisor/guest-image",
            "/usr/local/bin/build/guest-image",
            "/usr/local/build/guest-image",
            "/build/guest-image",
        ] {
            assert!(msg.contains(p), "{p} missing from: {msg}");
        }
        assert!(msg.contains("scripts/build-guest-image.sh"));
        assert!(msg.contains("scripts/install.sh"));
        assert!(msg.contains("PERFVISOR_GUEST_IMAGE"));
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn the_user_cache_comes_after_the_binary_relative_places() {
        let cache = Some(Path::new("/home/u/.cache/perfvisor"));
        // A plain `cargo install` binary: nothing next to it, the cache has one.
        let f = find_from(
            Kind::GuestImage,
            None,
            Path::new("/home/u/.cargo/bin/perfvisor"),
            cache,
            dirs(&["/home/u/.cache/perfvisor/current/guest-image"]),
        )
        .unwrap();
        assert_eq!(
            f.dir,
            PathBuf::from("/home/u/.cache/perfvisor/current/guest-image")
        );
        assert_eq!(f.source, Source::UserCache);
        // A checkout's own build tree wins over what another checkout published.
        let f = find_from(
            Kind::GuestImage,
            None,
            Path::new("/src/target/release/perfvisor"),
            cache,
            dirs(&[
                "/home/u/.cache/perfvisor/current/guest-image",
                "/src/build/guest-image",
            ]),
        )
        .unwrap();
        assert_eq!(f.source, Source::BuildTree);
        // And the cache is listed when nothing is found.
        let e = find_from(
            Kind::Sandbox,
            None,
            Path::new("/usr/bin/perfvisor"),
            cache,
            dirs(&[]),
        )
        .unwrap_err();
        assert!(e
            .to_string()
            .contains("/home/u/.cache/perfvisor/current/sandbox"));
    }
}
