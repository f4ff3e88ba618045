//! Turns a request target into a path relative to the document root, refusing
//! everything that could name a file outside it. This is the first of two walls:
//! the worker also opens files with RESOLVE_BENEATH, so a symlink cannot escape.

use crate::HttpError;

/// A normalised request path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetPath {
    /// Percent-decoded segments joined by `/`, with no leading slash, no empty,
    /// `.` or `..` segment and no NUL byte; ends in `/` when the target's path
    /// did (so opening it fails with ENOTDIR unless it is a directory). Empty
    /// for the root itself.
    pub relative: Vec<u8>,
    /// The target's path ended in `/` (a directory was asked for).
    pub trailing_slash: bool,
    /// Reused for decoding, so that normalising allocates nothing once warm.
    scratch: Vec<u8>,
}

/// Extracts and normalises the path of an origin-form (`/a/b?q`) or absolute-form
/// (`http://host/a/b`) target, reusing `out`'s allocation.
pub fn normalise(target: &[u8], out: &mut TargetPath) -> Result<(), HttpError> {
    let path = path_of(target)?;
    let path = &path[..path.iter().position(|&b| b == b'?' || b == b'#').unwrap_or(path.len())];
    out.relative.clear();
    out.trailing_slash = path.ends_with(b"/");
    for raw in path.split(|&b| b == b'/') {
        out.scratch.clear();
        percent_decode(raw, &mut out.scratch)?;
        // A decoded slash would smuggle a separator past this split.
        if out.scratch.contains(&b'/') {
            return Err(HttpError::BadRequest("encoded slash in path"));
        }
        match out.scratch.as_slice() {
            b"" | b"." => continue,
            b".." => return Err(HttpError::BadRequest("dot-dot segment in path")),
            seg => {
                if !out.relative.is_empty() {
                    out.relative.push(b'/');
                }
                out.relative.extend_from_slice(seg);
            }
        }
    }
    if out.trailing_slash && !out.relative.is_empty() {
        out.relative.push(b'/');
    }
    Ok(())
}

fn path_of(target: &[u8]) -> Result<&[u8], HttpError> {
    if target.first() == Some(&b'/') {
        return Ok(target);
    }
    for scheme in [&b"http://"[..], b"https://"] {
        if target.len() >= scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &target[scheme.len()..];
            return Ok(rest.iter().position(|&b| b == b'/').map_or(b"/", |i| &rest[i..]));
        }
    }
    Err(HttpError::BadRequest("request target is not a path"))
}

fn percent_decode(raw: &[u8], out: &mut Vec<u8>) -> Result<(), HttpError> {
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let hex = raw.get(i + 1..i + 3).ok_or(HttpError::BadRequest("truncated percent-escape"))?;
            let v = (hex_val(hex[0])? << 4) | hex_val(hex[1])?;
            if v == 0 {
                return Err(HttpError::BadRequest("NUL byte in path"));
            }
            out.push(v);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(())
}

fn hex_val(b: u8) -> Result<u8, HttpError> {
    match b {
        b'0'..=b'9' => Ok(b - b'0'),
        b'a'..=b'f' => Ok(b - b'a' + 10),
        b'A'..=b'F' => Ok(b - b'A' + 10),
        _ => Err(HttpError::BadRequest("bad percent-escape")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(t: &str) -> Result<(String, bool), HttpError> {
        let mut out = TargetPath::default();
        normalise(t.as_bytes(), &mut out)?;
        Ok((String::from_utf8(out.relative).unwrap(), out.trailing_slash))
    }

    #[test]
    fn plain_paths() {
        assert_eq!(norm("/"), Ok(("".into(), true)));
        assert_eq!(norm("/a/b.txt?x=1"), Ok(("a/b.txt".into(), false)));
        assert_eq!(norm("//a/./b/"), Ok(("a/b/".into(), true)));
        assert_eq!(norm("/hello%20world"), Ok(("hello world".into(), false)));
        assert_eq!(norm("http://example.com/x"), Ok(("x".into(), false)));
        assert_eq!(norm("http://example.com"), Ok(("".into(), true)));
    }

    #[test]
    fn traversal_and_smuggling_are_refused() {
        for bad in [
            "/../etc/passwd",
            "/a/../../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E%2Fetc%2Fpasswd",
            "/a%2f..%2f..%2fetc",
            "/.%2e/x",
            "/a%00.txt",
            "/%zz",
            "/%4",
            "etc/passwd",
            "*",
        ] {
            assert!(norm(bad).is_err(), "{bad} was accepted as {:?}", norm(bad));
        }
    }

    proptest! {
        #[test]
        fn never_yields_a_path_that_climbs_or_is_absolute(t in "/[a-z./%0-9A-F]{0,40}") {
            let mut out = TargetPath::default();
            if normalise(t.as_bytes(), &mut out).is_ok() {
                let rel = out.relative;
                prop_assert!(rel.first() != Some(&b'/'));
                prop_assert!(!rel.contains(&0));
                let body = rel.strip_suffix(b"/").unwrap_or(&rel);
                if !body.is_empty() {
                    prop_assert!(!body.split(|&b| b == b'/').any(|s| s == b".." || s == b"." || s.is_empty()));
                }
            }
        }
    }
}
