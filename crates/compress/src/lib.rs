//! tine's content codings: which media types are worth compressing, and the
//! brotli and gzip encoders a worker runs once per file, whose output the
//! file cache keeps so that every later request is served from it.
//!
//! Encoding happens on a worker's event loop, so its cost is bounded by the
//! caller (the largest file it will encode) and by the levels here, chosen
//! for speed over the last few percent: brotli 5 and gzip 6 take a 1 MiB
//! script in tens of milliseconds, once.

#![forbid(unsafe_code)]

use std::io::Write;
pub use tine_http::content_coding::Coding;

/// Compression levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Levels {
    /// Brotli quality, 0..=11.
    pub brotli: u32,
    /// Gzip level, 1..=9.
    pub gzip: u32,
}

impl Default for Levels {
    fn default() -> Self {
        Levels { brotli: 5, gzip: 6 }
    }
}

/// Brotli's window: 4 MiB, what its command-line tool and browsers expect.
const BROTLI_WINDOW_BITS: u32 = 22;

/// Encodes `input` with `coding`; identity returns it unchanged.
pub fn encode(input: &[u8], coding: Coding, levels: Levels) -> Vec<u8> {
    match coding {
        Coding::Brotli => {
            let mut out = Vec::with_capacity(input.len() / 3 + 64);
            {
                let quality = levels.brotli.min(11);
                let mut w = brotli::CompressorWriter::new(&mut out, 64 * 1024, quality, BROTLI_WINDOW_BITS);
                // Writing to a Vec cannot fail.
                let _ = w.write_all(input);
                let _ = w.flush();
            }
            out
        }
        Coding::Gzip => {
            let level = flate2::Compression::new(levels.gzip.clamp(1, 9));
            let mut w = flate2::write::GzEncoder::new(Vec::with_capacity(input.len() / 3 + 64), level);
            let _ = w.write_all(input);
            w.finish().unwrap_or_default()
        }
        Coding::Identity => input.to_vec(),
    }
}

/// Whether a response of `content_type` (parameters allowed) gains from
/// compression: text and the structured text formats the web serves, and
/// a few binary formats that are not compressed already. Images, audio,
/// video, archives and woff2 are.
pub fn compressible(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let Some((kind, subtype)) = essence.split_once('/') else { return false };
    match kind {
        "text" => true,
        "application" => {
            subtype.ends_with("+json")
                || subtype.ends_with("+xml")
                || matches!(
                    subtype,
                    "javascript"
                        | "x-javascript"
                        | "ecmascript"
                        | "json"
                        | "ld+json"
                        | "manifest+json"
                        | "xml"
                        | "wasm"
                        | "x-sh"
                        | "x-tar"
                        | "vnd.ms-fontobject"
                        | "x-font-ttf"
                        | "x-font-opentype"
                        | "graphql"
                        | "toml"
                        | "yaml"
                        | "x-yaml"
                )
        }
        "image" => matches!(subtype, "svg+xml" | "x-icon" | "vnd.microsoft.icon" | "bmp"),
        "font" => matches!(subtype, "ttf" | "otf" | "collection"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample() -> Vec<u8> {
        (0..20_000).flat_map(|i| format!("function f{i}(a) {{ return a * {i}; }}\n").into_bytes()).collect()
    }

    #[test]
    fn brotli_output_decodes_to_the_input() {
        let input = sample();
        let out = encode(&input, Coding::Brotli, Levels::default());
        assert!(out.len() < input.len() / 4, "{} of {}", out.len(), input.len());
        let mut back = Vec::new();
        brotli::Decompressor::new(&out[..], 4096).read_to_end(&mut back).unwrap();
        assert_eq!(back, input);
    }

    #[test]
    fn gzip_output_decodes_to_the_input() {
        let input = sample();
        let out = encode(&input, Coding::Gzip, Levels::default());
        assert!(out.len() < input.len() / 4);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&out[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, input);
    }

    #[test]
    fn empty_input_still_makes_a_valid_stream() {
        for coding in [Coding::Brotli, Coding::Gzip] {
            assert!(!encode(b"", coding, Levels::default()).is_empty());
        }
    }

    #[test]
    fn what_is_worth_compressing() {
        for yes in [
            "text/html",
            "text/css; charset=utf-8",
            "application/javascript",
            "text/javascript",
            "application/json",
            "application/vnd.api+json",
            "image/svg+xml",
            "application/wasm",
            "font/ttf",
        ] {
            assert!(compressible(yes), "{yes}");
        }
        for no in
            ["image/png", "image/jpeg", "font/woff2", "application/gzip", "application/zip", "video/mp4", "x"]
        {
            assert!(!compressible(no), "{no}");
        }
    }
}
