//! The path of a request target, normalised once for everything that looks at
//! it: routing, the static redirect to a directory, and the file a static
//! route opens. Two spellings of one path (`/api//x`, `/api/./x`, `/%61pi/x`)
//! normalise to the same bytes, so no spelling reaches a route that another
//! spelling of the same path would not.
//!
//! The file path is the first of two walls around a document root: the worker
//! also opens files with RESOLVE_BENEATH, so a symlink cannot escape either.

use crate::HttpError;

/// A normalised request path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetPath {
    /// The path requests are routed on: starts with `/`; percent-escapes of
    /// unreserved characters decoded and the others kept (hex in upper case);
    /// `.` and empty segments dropped; ends in `/` when the target's path did
    /// (or ended in `.`). Still valid request-target text.
    pub route: Vec<u8>,
    /// The target asked for a directory (the route path ends in `/`).
    pub trailing_slash: bool,
    /// The route path percent-decoded entirely, relative to a document root
    /// (no leading slash); filled by [`TargetPath::decode_file_path`].
    pub relative: Vec<u8>,
}

/// Normalises the path of an origin-form target (`/a/b?q`; the request parser
/// gives an absolute-form one in this form too, `Request::origin_target`) into
/// `out`, reusing its allocations. Refused: a target that is not a path, a malformed escape, and any `..` segment, in
/// whatever spelling (`%2e%2e`): clients resolve them before sending, so one
/// that arrives is a probe, and refusing it leaves nothing for a back end to
/// resolve differently from the router.
pub fn normalise(target: &[u8], out: &mut TargetPath) -> Result<(), HttpError> {
    if target.first() != Some(&b'/') {
        return Err(HttpError::BadRequest("request target is not a path"));
    }
    let path = &target[..target.iter().position(|&b| b == b'?' || b == b'#').unwrap_or(target.len())];
    out.route.clear();
    out.relative.clear();
    out.route.push(b'/');
    let mut ends_as_directory = true;
    for raw in path.split(|&b| b == b'/').skip(1) {
        let start = out.route.len();
        decode_unreserved(raw, &mut out.route)?;
        ends_as_directory = true;
        match &out.route[start..] {
            b"" | b"." => out.route.truncate(start),
            b".." => return Err(HttpError::BadRequest("dot-dot segment in path")),
            _ => {
                out.route.push(b'/');
                ends_as_directory = false;
            }
        }
    }
    // Each kept segment was written with a slash after it; the last one keeps
    // it only when the path named a directory.
    if !ends_as_directory && out.route.len() > 1 {
        out.route.pop();
    }
    out.trailing_slash = out.route.ends_with(b"/");
    Ok(())
}

impl TargetPath {
    /// The part of a route path after the route's prefix is what names a file;
    /// this decodes the whole route path into `relative` for the file system.
    /// Refused: an encoded slash (it would add a separator the router never
    /// saw) and an encoded NUL.
    pub fn decode_file_path(&mut self) -> Result<(), HttpError> {
        self.relative.clear();
        let path = &self.route[1..];
        let mut i = 0;
        while i < path.len() {
            let b = path[i];
            if b == b'%' {
                let v = escape_value(&path[i..])?;
                if v == b'/' {
                    return Err(HttpError::BadRequest("encoded slash in path"));
                }
                if v == 0 {
                    return Err(HttpError::BadRequest("NUL byte in path"));
                }
                self.relative.push(v);
                i += 3;
            } else {
                self.relative.push(b);
                i += 1;
            }
        }
        Ok(())
    }
}

/// Appends `raw` with the escapes of unreserved characters (RFC 3986 section
/// 2.3) decoded and every other escape kept, its hex digits in upper case.
fn decode_unreserved(raw: &[u8], out: &mut Vec<u8>) -> Result<(), HttpError> {
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'%' {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let v = escape_value(&raw[i..])?;
        if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
            out.push(v);
        } else {
            out.extend_from_slice(&[b'%', raw[i + 1].to_ascii_uppercase(), raw[i + 2].to_ascii_uppercase()]);
        }
        i += 3;
    }
    Ok(())
}

/// The byte a `%XY` escape at the start of `s` stands for.
fn escape_value(s: &[u8]) -> Result<u8, HttpError> {
    let hex = s.get(1..3).ok_or(HttpError::BadRequest("truncated percent-escape"))?;
    Ok((hex_val(hex[0])? << 4) | hex_val(hex[1])?)
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

    fn route(t: &str) -> Result<String, HttpError> {
        let mut out = TargetPath::default();
        normalise(t.as_bytes(), &mut out)?;
        Ok(String::from_utf8(out.route).unwrap())
    }

    fn file(t: &str) -> Result<(String, bool), HttpError> {
        let mut out = TargetPath::default();
        normalise(t.as_bytes(), &mut out)?;
        out.decode_file_path()?;
        Ok((String::from_utf8(out.relative).unwrap(), out.trailing_slash))
    }

    #[test]
    fn spellings_of_one_path_route_the_same() {
        for spelling in [
            "/api/private/x",
            "/api//private/x",
            "/api/./private/x",
            "/api/%70rivate/x",
            "/api/private/x?q=/../",
            "//api/private/./x",
            "/%61pi/private/%78",
        ] {
            assert_eq!(route(spelling), Ok("/api/private/x".into()), "{spelling}");
        }
        assert_eq!(route("/"), Ok("/".into()));
        assert_eq!(route("//sub"), Ok("/sub".into()));
        assert_eq!(route("/a/b/"), Ok("/a/b/".into()));
        assert_eq!(route("/a/."), Ok("/a/".into()));
        assert_eq!(route("/a%2fb"), Ok("/a%2Fb".into()), "reserved escapes stay escaped");
        assert_eq!(route("/a%20b"), Ok("/a%20b".into()));
    }

    #[test]
    fn file_paths() {
        assert_eq!(file("/"), Ok(("".into(), true)));
        assert_eq!(file("/a/b.txt?x=1"), Ok(("a/b.txt".into(), false)));
        assert_eq!(file("//a/./b/"), Ok(("a/b/".into(), true)));
        assert_eq!(file("/hello%20world"), Ok(("hello world".into(), false)));
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
            "/a/b/..",
            "/a/../b",
            "/a%00.txt",
            "/%zz",
            "/%4",
            "etc/passwd",
            "*",
        ] {
            assert!(file(bad).is_err(), "{bad} was accepted as {:?}", file(bad));
        }
    }

    proptest! {
        #[test]
        fn never_yields_a_path_that_climbs_or_is_absolute(t in "/[a-z./%0-9A-F]{0,40}") {
            let mut out = TargetPath::default();
            if normalise(t.as_bytes(), &mut out).is_ok() {
                // Normalising is idempotent: the route path is its own normal form.
                let again = out.route.clone();
                let mut twice = TargetPath::default();
                prop_assert!(normalise(&again, &mut twice).is_ok());
                prop_assert_eq!(&twice.route, &again);
                if out.decode_file_path().is_ok() {
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
}
