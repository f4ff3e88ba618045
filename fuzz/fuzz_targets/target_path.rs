//! Request-target normalisation and the file path a static route opens.
//! The target reaches them as it does in tine, through the request parser
//! (which takes absolute-form targets apart too). Whatever the target:
//! - the route path starts with `/`, has no empty, `.` or `..` segment, and
//!   normalising it again changes nothing (one spelling per path);
//! - the file path is relative, has only normal components (no `..`, no
//!   root, no `.`), and no NUL: joined to a document root it stays inside.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use tine_fuzz::limits;
use tine_http::parse_request;
use tine_http::request::field_slots;
use tine_http::target::{normalise, TargetPath};

fuzz_target!(|target: &[u8]| {
    let mut head = b"GET ".to_vec();
    head.extend_from_slice(target);
    head.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut slots1 = field_slots();
    let Ok(Some(request)) = parse_request(&head, &mut slots1, &limits(false)) else { return };
    let mut path = TargetPath::default();
    if normalise(request.origin_target, &mut path).is_err() {
        return;
    }
    let route = path.route.clone();
    assert_eq!(route.first(), Some(&b'/'));
    let inner = route[1..].strip_suffix(b"/").unwrap_or(&route[1..]);
    if !inner.is_empty() {
        for segment in inner.split(|&b| b == b'/') {
            assert!(!matches!(segment, b"" | b"." | b".."), "segment {segment:?} in {route:?}");
        }
    }
    assert_eq!(path.trailing_slash, route.ends_with(b"/"));
    let mut again = TargetPath::default();
    normalise(&route, &mut again).expect("a normalised path normalises");
    assert_eq!(again.route, route, "normalising twice changed the path");

    if path.decode_file_path().is_err() {
        return;
    }
    let relative = &path.relative;
    assert!(!relative.contains(&0));
    let root = Path::new("/srv/www");
    let joined = root.join(OsStr::from_bytes(relative));
    assert!(joined.starts_with(root), "{joined:?}");
    for component in Path::new(OsStr::from_bytes(relative)).components() {
        assert!(matches!(component, Component::Normal(_)), "{component:?} in {relative:?}");
    }
});
