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
//!    `<checkout>/build/<name>`).
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
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Env => "from the environment",
            Source::DataDir => "installed data directory",
            Source::BuildTree => "build tree",
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

/// Find `kind` for the running binary and environment.
pub fn find(kind: Kind) -> Result<Found, Error> {
    let env = std::env::var_os(kind.env_var());
    if env.is_none() {
        let exe = std::env::current_exe().map_err(|e| Error::NoExe(e, kind.env_var()))?;
        return find_from(kind, None, &exe, Path::is_dir);
    }
    find_from(kind, env, Path::new("/"), Path::is_dir)
}

/// The places [`find`] looks, in order, for a binary at `exe` (the data
/// directory, then each `build/<name>` up the tree). Without `exe`'s
/// parent there are none.
pub fn candidates(kind: Kind, exe: &Path) -> Vec<(PathBuf, Source)> {
    let Some(bin_dir) = exe.parent() else {
        return Vec::new();
    };
    let mut out = Vec::new();
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
    out
}

/// [`find`] with its inputs given: the environment variable's value,
/// the binary's path and the test for a directory.
pub fn find_from(
    kind: Kind,
    env: Option<OsString>,
    exe: &Path,
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
    let places = candidates(kind, exe);
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
            dirs(&["/img", "/src/build/guest-image"]),
        )
        .unwrap();
        assert_eq!(f.dir, PathBuf::from("/img"));
        assert_eq!(f.source, Source::Env);
        let e = find_from(
            Kind::GuestImage,
            Some("/nope".into()),
            Path::new("/src/target/release/perfvisor"),
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
}
