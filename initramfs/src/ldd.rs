//! The shared-library closure of a dynamic executable, as `ldd` reports it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Error;

/// What `ldd` said about one binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LddReport {
    /// Static binary: nothing to copy.
    Static,
    /// The libraries and the loader, absolute paths as resolved on this host, in
    /// ldd's order, without duplicates (the vDSO is left out).
    Dynamic(Vec<PathBuf>),
}

/// Parses `ldd` output (run with `LC_ALL=C`). Lines look like
/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`,
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`, `linux-vdso.so.1 (0x...)`,
/// `libfoo.so.1 => not found`, or `statically linked` / `not a dynamic executable`.
/// Returns the names of missing libraries as the error.
pub fn parse_ldd_output(text: &str) -> Result<LddReport, Vec<String>> {
    let mut libs: Vec<PathBuf> = Vec::new();
    let mut missing = Vec::new();
    let mut saw_static = false;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("statically linked") || line.contains("not a dynamic executable") {
            saw_static = true;
            continue;
        }
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    missing.push(name.trim().to_string());
                    continue;
                }
                // "/path (0xaddr)"; an empty right side (e.g. vdso on some libcs) has no file.
                rest.split_whitespace()
                    .next()
                    .filter(|p| p.starts_with('/'))
            }
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path {
            let p = PathBuf::from(p);
            if !libs.contains(&p) {
                libs.push(p);
            }
        }
    }
    if !missing.is_empty() {
        return Err(missing);
    }
    if saw_static && libs.is_empty() {
        return Ok(LddReport::Static);
    }
    Ok(LddReport::Dynamic(libs))
}

/// The shared libraries (and the dynamic loader) that `binary` loads, as absolute
/// host paths; empty for a static binary. Runs `ldd`. Copy each library to the same
/// path in a guest root (contents of the symlink's target) and the loader finds it
/// there without an ld.so.cache.
pub fn ldd_closure(binary: &Path) -> Result<Vec<PathBuf>, Error> {
    let err = |msg: String| Error::Libraries {
        path: binary.to_path_buf(),
        msg,
    };
    if !binary.is_file() {
        return Err(err("no such file".into()));
    }
    let out = Command::new("ldd")
        .arg(binary)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| err(format!("cannot run ldd ({e}); install libc-bin")))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match parse_ldd_output(&text) {
        Ok(LddReport::Static) => Ok(Vec::new()),
        Ok(LddReport::Dynamic(libs)) if out.status.success() => Ok(libs),
        Ok(LddReport::Dynamic(_)) => {
            Err(err(format!("ldd failed ({}): {}", out.status, text.trim())))
        }
        Err(missing) => Err(err(format!(
            "missing shared libraries: {}",
            missing.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_dynamic_rust_binary() {
        let text = "\tlinux-vdso.so.1 (0x00007ffc6a7f2000)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1b5a0c0000)\n\
            \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f1b59fe0000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1b59dff000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f1b5a129000)\n";
        assert_eq!(
            parse_ldd_output(text).unwrap(),
            LddReport::Dynamic(vec![
                "/lib/x86_64-linux-gnu/libgcc_s.so.1".into(),
                "/lib/x86_64-linux-gnu/libm.so.6".into(),
                "/lib/x86_64-linux-gnu/libc.so.6".into(),
                "/lib64/ld-linux-x86-64.so.2".into(),
            ])
        );
    }

    #[test]
    fn static_binaries_have_no_closure() {
        assert_eq!(
            parse_ldd_output("\tnot a dynamic executable\n").unwrap(),
            LddReport::Static
        );
        assert_eq!(
            parse_ldd_output("\tstatically linked\n").unwrap(),
            LddReport::Static
        );
    }

    #[test]
    fn reports_missing_libraries() {
        let text = "\tlibfoo.so.1 => not found\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n\tlibbar.so => not found\n";
        assert_eq!(
            parse_ldd_output(text).unwrap_err(),
            vec!["libfoo.so.1".to_string(), "libbar.so".to_string()]
        );
    }

    #[test]
    fn deduplicates_and_ignores_noise() {
        let text = "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n\
            \tlinux-gate.so.1 =>  (0x2)\n\
            \t/lib64/ld-linux-x86-64.so.2 => /lib64/ld-linux-x86-64.so.2 (0x3)\n";
        assert_eq!(
            parse_ldd_output(text).unwrap(),
            LddReport::Dynamic(vec![
                "/lib/x86_64-linux-gnu/libc.so.6".into(),
                "/lib64/ld-linux-x86-64.so.2".into()
            ])
        );
    }

    #[test]
    fn closure_of_a_real_binary() {
        // /bin/sh is dash or bash: dynamic on Debian, with libc and the loader.
        let libs = ldd_closure(Path::new("/bin/sh")).unwrap();
        assert!(
            libs.iter().any(|p| p.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        assert!(
            libs.iter()
                .any(|p| p.to_string_lossy().contains("ld-linux")),
            "{libs:?}"
        );
        assert!(matches!(
            ldd_closure(Path::new("/nonexistent/x")),
            Err(Error::Libraries { .. })
        ));
    }
}
