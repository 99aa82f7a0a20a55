//! `--include HOST_PATH[:GUEST_PATH]`: host files and directories in the
//! guest's root filesystem, as a newc archive appended to the initramfs.
//!
//! A file keeps its mode; a directory comes whole, modes and symbolic links
//! kept; a dynamic executable (anywhere in what is included) brings the
//! shared libraries and loader it loads on this host, at the paths the
//! loader finds them ([`initramfs::Packer`]). Everything is
//! checked before boot: a missing path, a guest path that is not absolute
//! or climbs with `..`, two includes at the same or nested guest paths, and
//! perfvisor's own `/perfvisor` are each a one-line error.

use std::path::{Path, PathBuf};

use initramfs::{PackStats, Packer};

use crate::error::CliError;

/// Where perfvisor's own guest files go (the guest command); includes may
/// not land there.
pub(crate) const RESERVED: &str = "/perfvisor";

/// One `--include`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IncludeSpec {
    /// The host file or directory.
    pub(crate) host: PathBuf,
    /// Its absolute, normalized path in the guest (`/` for the root).
    pub(crate) guest: String,
}

/// Parses `HOST_PATH[:GUEST_PATH]`. The guest path is what follows the
/// last `:` when that starts with `/` (so a host path may hold colons);
/// without one, the file goes to `/` plus its name.
pub(crate) fn parse_include(s: &str) -> Result<IncludeSpec, String> {
    let (host, guest) = match s.rsplit_once(':') {
        Some((h, g)) if g.starts_with('/') => (h, Some(g)),
        _ => (s, None),
    };
    if host.is_empty() {
        return Err("an empty host path: use HOST_PATH[:GUEST_PATH]".into());
    }
    let host = PathBuf::from(host);
    let guest = match guest {
        Some(g) => normalize_guest(g)?,
        None => {
            let name = host
                .file_name()
                .ok_or_else(|| {
                    format!(
                        "{} has no file name to put in the guest's /: give one, as {}:/GUEST_PATH",
                        host.display(),
                        host.display()
                    )
                })?
                .to_string_lossy();
            format!("/{name}")
        }
    };
    Ok(IncludeSpec { host, guest })
}

/// `/a//b/./c/` -> `/a/b/c`; `..` is refused (the archive could not hold it).
fn normalize_guest(g: &str) -> Result<String, String> {
    let mut parts = Vec::new();
    for c in g.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(format!("guest path {g:?} contains '..': give it without")),
            c => parts.push(c),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Whether guest path `inner` is `outer` or below it.
fn within(inner: &str, outer: &str) -> bool {
    outer == "/"
        || inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Everything that can be told before boot: each host path exists, no
/// include goes to perfvisor's own directory, and no two share or nest
/// their guest paths.
pub(crate) fn check(specs: &[IncludeSpec]) -> Result<(), CliError> {
    for (i, s) in specs.iter().enumerate() {
        if let Err(source) = std::fs::metadata(&s.host) {
            return Err(if source.kind() == std::io::ErrorKind::NotFound {
                CliError::IncludeMissing(s.host.clone())
            } else {
                CliError::Unreadable {
                    path: s.host.clone(),
                    source,
                }
            });
        }
        if within(&s.guest, RESERVED) || (s.guest == "/" && s.host.join(&RESERVED[1..]).exists()) {
            return Err(CliError::IncludeReserved(s.host.clone(), s.guest.clone()));
        }
        for t in &specs[..i] {
            if within(&s.guest, &t.guest) || within(&t.guest, &s.guest) {
                return Err(CliError::IncludeClash {
                    first: t.host.clone(),
                    first_guest: t.guest.clone(),
                    second: s.host.clone(),
                    second_guest: s.guest.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Writes the archive of `specs` to `out`, at most `limit` bytes (the
/// guest's RAM: more could not load).
pub(crate) fn write_archive(
    specs: &[IncludeSpec],
    out: &Path,
    limit: u64,
) -> Result<PackStats, CliError> {
    check(specs)?;
    let file = std::fs::File::create(out).map_err(|source| CliError::Unreadable {
        path: out.to_path_buf(),
        source,
    })?;
    let mut packer = Packer::new(std::io::BufWriter::new(file), limit);
    for s in specs {
        packer.add(&s.host, &s.guest, true)?;
    }
    let stats = packer.stats();
    packer.finish()?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(host: &str, guest: &str) -> IncludeSpec {
        IncludeSpec {
            host: host.into(),
            guest: guest.into(),
        }
    }

    #[test]
    fn parses_host_and_guest_paths() {
        assert_eq!(parse_include("./prog"), Ok(spec("./prog", "/prog")));
        assert_eq!(
            parse_include("build/out:/opt//x/./"),
            Ok(spec("build/out", "/opt/x"))
        );
        // A colon not followed by an absolute path belongs to the host path.
        assert_eq!(parse_include("a:b"), Ok(spec("a:b", "/a:b")));
        assert_eq!(parse_include("d/a:b:/g"), Ok(spec("d/a:b", "/g")));
        assert_eq!(parse_include("dir:/"), Ok(spec("dir", "/")));
        assert!(parse_include("x:/a/../etc").is_err());
        assert!(parse_include(":/x").is_err());
        assert!(parse_include("").is_err());
        assert!(parse_include("/").is_err());
    }

    #[test]
    fn clashes_and_reserved_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, "a").unwrap();
        std::fs::create_dir(&b).unwrap();
        let s = |p: &Path, g: &str| spec(p.to_str().unwrap(), g);
        assert!(check(&[s(&a, "/x/a"), s(&b, "/x/b")]).is_ok());
        assert!(matches!(
            check(&[s(&a, "/x"), s(&b, "/x")]),
            Err(CliError::IncludeClash { .. })
        ));
        assert!(matches!(
            check(&[s(&b, "/opt"), s(&a, "/opt/a")]),
            Err(CliError::IncludeClash { .. })
        ));
        assert!(matches!(
            check(&[s(&a, "/opt/a"), s(&b, "/")]),
            Err(CliError::IncludeClash { .. })
        ));
        // A sibling whose name starts the same is not inside.
        assert!(check(&[s(&a, "/opt"), s(&b, "/optx")]).is_ok());
        assert!(matches!(
            check(&[s(&a, "/perfvisor/command")]),
            Err(CliError::IncludeReserved(..))
        ));
        assert!(matches!(
            check(&[s(&dir.path().join("nope"), "/n")]),
            Err(CliError::IncludeMissing(_))
        ));
    }
}
