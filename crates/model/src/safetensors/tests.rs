//! Table-driven checks of header validation: each malformed case and the error it earns.

use super::*;

/// Builds a safetensors file from a JSON header and `data_len` zero bytes of data.
fn file(header: &str, data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.resize(out.len() + data_len, 0);
    out
}

fn check(bytes: &[u8]) -> Result<HeaderSummary, SafetensorsError> {
    let len = header_len(bytes, bytes.len() as u64)?;
    parse_header(&bytes[8..8 + len as usize], bytes.len() as u64)
}

#[test]
fn valid_file_is_summarised() {
    let header = r#"{"__metadata__":{"format":"pt"},
        "a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},
        "b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]}}"#;
    let summary = check(&file(header, 32)).unwrap();
    assert_eq!(summary.tensors, 2);
    assert_eq!(summary.parameters, 10);
    assert_eq!(summary.bytes_by_dtype[&Dtype::F32], 24);
    assert_eq!(summary.bytes_by_dtype[&Dtype::BF16], 8);
}

#[test]
fn spans_give_each_tensor_its_range_only_for_a_valid_header() {
    let header = r#"{"__metadata__":{"format":"pt"},
        "a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},
        "b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]}}"#;
    let bytes = file(header, 32);
    let spans = tensor_spans(&bytes[8..8 + header.len()], bytes.len() as u64).unwrap();
    assert_eq!(spans.len(), 2);
    assert_eq!(
        spans["b"],
        TensorSpan {
            dtype: Dtype::BF16,
            shape: vec![4],
            begin: 24,
            end: 32
        }
    );
    // A header whose ranges leave a gap is refused here as by parse_header.
    let gap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    let bytes = file(gap, 12);
    assert!(matches!(
        tensor_spans(&bytes[8..8 + gap.len()], bytes.len() as u64),
        Err(SafetensorsError::Gap { .. })
    ));
}

#[test]
fn malformed_headers_are_refused_with_the_reason() {
    let t = |name: &str, dtype: &str, shape: &str, b: u64, e: u64| {
        format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{b},{e}]}}"#)
    };
    type Case = (&'static str, Vec<u8>, fn(&SafetensorsError) -> bool);
    let cases: Vec<Case> = vec![
        ("too short", vec![1, 2, 3], |e| matches!(e, SafetensorsError::TooShort { .. })),
        (
            "header past end",
            {
                let mut f = file("{}", 0);
                f[..8].copy_from_slice(&1000u64.to_le_bytes());
                f
            },
            |e| matches!(e, SafetensorsError::HeaderPastEnd { header_len: 1000, .. }),
        ),
        (
            "header over 100 MB",
            {
                let mut f = file("{}", 0);
                f[..8].copy_from_slice(&200_000_000u64.to_le_bytes());
                f
            },
            |e| matches!(e, SafetensorsError::HeaderTooLong { .. }),
        ),
        ("invalid json", file("{not json", 0), |e| {
            matches!(e, SafetensorsError::InvalidJson { .. })
        }),
        ("tensor not an object", file(r#"{"a":3}"#, 0), |e| {
            matches!(e, SafetensorsError::InvalidJson { .. })
        }),
        ("unknown dtype", file(&format!("{{{}}}", t("a", "F12", "[1]", 0, 4)), 4), |e| {
            matches!(e, SafetensorsError::UnknownDtype { .. })
        }),
        (
            "overlap",
            file(&format!("{{{},{}}}", t("a", "F32", "[2]", 0, 8), t("b", "F32", "[2]", 4, 12)), 12),
            |e| matches!(e, SafetensorsError::Overlap { .. }),
        ),
        (
            "gap",
            file(&format!("{{{},{}}}", t("a", "F32", "[1]", 0, 4), t("b", "F32", "[1]", 8, 12)), 12),
            |e| matches!(e, SafetensorsError::Gap { begin: 4, end: 8, .. }),
        ),
        ("past the file", file(&format!("{{{}}}", t("a", "F32", "[4]", 0, 16)), 8), |e| {
            matches!(e, SafetensorsError::PastEnd { .. })
        }),
        ("trailing bytes", file(&format!("{{{}}}", t("a", "F32", "[1]", 0, 4)), 8), |e| {
            matches!(e, SafetensorsError::TrailingBytes { .. })
        }),
        ("shape disagrees", file(&format!("{{{}}}", t("a", "F32", "[3]", 0, 8)), 8), |e| {
            matches!(e, SafetensorsError::SizeMismatch { .. })
        }),
        ("reversed offsets", file(&format!("{{{}}}", t("a", "F32", "[0]", 8, 4)), 8), |e| {
            matches!(e, SafetensorsError::ReversedOffsets { .. })
        }),
        (
            "shape overflows",
            file(&format!("{{{}}}", t("a", "F32", "[4294967296,4294967296]", 0, 8)), 8),
            |e| matches!(e, SafetensorsError::SizeMismatch { .. }),
        ),
    ];
    for (what, bytes, expected) in cases {
        match check(&bytes) {
            Ok(summary) => panic!("{what}: accepted as {summary:?}"),
            Err(err) => assert!(expected(&err), "{what}: wrong error {err:?}"),
        }
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes never panic the parser; they are accepted or refused.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = check(&bytes);
        }

        /// Arbitrary header text behind a correct length never panics either.
        #[test]
        fn arbitrary_headers_never_panic(header in ".{0,200}", data_len in 0usize..64) {
            let _ = check(&file(&header, data_len));
        }
    }
}
