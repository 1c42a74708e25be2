//! Table-driven checks of GGUF validation: a builder writes files the way llama.cpp's writers
//! do, then each lie is introduced and must earn its named error.

use super::*;

/// Writes a GGUF file: metadata entries as (key, type, raw value bytes), tensors as (name,
/// dims, type), with data laid out and padded to `alignment`.
struct Builder {
    version: u32,
    metadata: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, Option<u64>)>,
    alignment: u64,
    /// Bytes added after the data (or removed, when negative).
    tail: i64,
}

fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

impl Builder {
    fn new() -> Self {
        Builder {
            version: 3,
            metadata: vec![
                ("general.architecture".into(), 8, string("llama")),
                ("general.name".into(), 8, string("tiny")),
                ("llama.context_length".into(), 4, 2048u32.to_le_bytes().to_vec()),
                ("llama.block_count".into(), 4, 2u32.to_le_bytes().to_vec()),
                ("llama.embedding_length".into(), 4, 64u32.to_le_bytes().to_vec()),
                ("llama.attention.head_count".into(), 4, 4u32.to_le_bytes().to_vec()),
                ("tokenizer.ggml.tokens".into(), 9, {
                    let mut v = 8u32.to_le_bytes().to_vec();
                    v.extend_from_slice(&3u64.to_le_bytes());
                    for t in ["a", "b", "c"] {
                        v.extend_from_slice(&string(t));
                    }
                    v
                }),
            ],
            tensors: vec![
                ("token_embd.weight".into(), vec![64, 3], 1, None),
                ("blk.0.attn_q.weight".into(), vec![256, 4], 12, None),
                ("output_norm.weight".into(), vec![60], 0, None),
            ],
            alignment: 32,
            tail: 0,
        }
    }

    fn meta(mut self, key: &str, value_type: u32, value: Vec<u8>) -> Self {
        self.metadata.push((key.into(), value_type, value));
        self
    }

    fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value_type, value) in &self.metadata {
            out.extend_from_slice(&string(key));
            out.extend_from_slice(&value_type.to_le_bytes());
            out.extend_from_slice(value);
        }
        let mut offset = 0u64;
        let mut data_len = 0u64;
        for (name, dims, type_id, forced) in &self.tensors {
            out.extend_from_slice(&string(name));
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&type_id.to_le_bytes());
            out.extend_from_slice(&forced.unwrap_or(offset).to_le_bytes());
            let (block, bytes) = GgmlType::from_id(*type_id).map_or((1, 1), |t| t.block());
            let size = dims.iter().product::<u64>() / block * bytes;
            data_len = offset + size;
            offset = data_len.next_multiple_of(self.alignment);
        }
        let start = (out.len() as u64).next_multiple_of(self.alignment);
        let end = (start + offset.max(data_len)) as i64 + self.tail;
        out.resize(end.max(0) as usize, 0);
        out
    }
}

fn check(bytes: &[u8]) -> Result<Gguf, GgufError> {
    parse(bytes, bytes.len() as u64)
}

#[test]
fn a_valid_file_is_summarised() {
    let gguf = check(&Builder::new().build()).unwrap();
    let s = &gguf.summary;
    assert_eq!(s.version, 3);
    assert_eq!(s.tensors, 3);
    assert_eq!(s.parameters, 64 * 3 + 256 * 4 + 60);
    assert_eq!(s.embedding_parameters, 64 * 3);
    assert_eq!(s.bytes_by_type[&GgmlType::F16], 64 * 3 * 2);
    assert_eq!(s.bytes_by_type[&GgmlType::Q4_K], 4 * 144);
    assert_eq!(s.bytes_by_type[&GgmlType::F32], 60 * 4);
    assert_eq!(s.main_type(), Some(GgmlType::Q4_K));
    assert_eq!(s.architecture.as_deref(), Some("llama"));
    assert_eq!(s.name.as_deref(), Some("tiny"));
    assert_eq!(s.hyper("context_length"), Some(2048));
    assert_eq!(s.hyper("block_count"), Some(2));
    assert_eq!(s.vocab, Some(3));
    assert_eq!(s.data_offset % 32, 0);
    assert_eq!(
        gguf.metadata["tokenizer.ggml.tokens"],
        MetaValue::Array {
            element: "string".into(),
            len: 3
        }
    );
    // Version 2 reads the same way; the last tensor may go without its padding.
    let v2 = Builder {
        version: 2,
        ..Builder::new()
    };
    assert!(check(&v2.build()).is_ok());
    // The last tensor's 240 bytes are padded to 256.
    let unpadded = Builder {
        tail: -16,
        ..Builder::new()
    };
    assert!(check(&unpadded.build()).is_ok());
}

#[test]
fn a_short_prefix_asks_for_more_bytes() {
    let bytes = Builder::new().build();
    let err = parse(&bytes[..40], bytes.len() as u64).unwrap_err();
    let GgufError::NeedBytes { at_least, have: 40 } = err else {
        panic!("{err:?}")
    };
    assert!(at_least > 40);
    // Reading on with more of the file gets there.
    let mut have = 40;
    loop {
        match parse(&bytes[..have], bytes.len() as u64) {
            Ok(_) => break,
            Err(GgufError::NeedBytes { at_least, .. }) => have = (at_least as usize).max(have * 2).min(bytes.len()),
            Err(e) => panic!("{e:?}"),
        }
    }
}

#[test]
fn lies_are_refused_with_the_reason() {
    type Case = (&'static str, Vec<u8>, fn(&GgufError) -> bool);
    let with_tensors = |tensors: Vec<(&str, Vec<u64>, u32, Option<u64>)>| {
        let tensors = tensors.into_iter().map(|(n, d, t, o)| (n.to_string(), d, t, o)).collect();
        Builder { tensors, ..Builder::new() }.build()
    };
    let cases: Vec<Case> = vec![
        ("too short", b"GGUF".to_vec(), |e| matches!(e, GgufError::TooShort { .. })),
        (
            "bad magic",
            {
                let mut b = Builder::new().build();
                b[..4].copy_from_slice(b"GGML");
                b
            },
            |e| matches!(e, GgufError::BadMagic { found } if found == "GGML"),
        ),
        (
            "version 1",
            Builder {
                version: 1,
                ..Builder::new()
            }
            .build(),
            |e| matches!(e, GgufError::Version { version: 1 }),
        ),
        (
            "version 4",
            Builder {
                version: 4,
                ..Builder::new()
            }
            .build(),
            |e| matches!(e, GgufError::Version { version: 4 }),
        ),
        (
            "a tensor count nobody writes",
            {
                let mut b = Builder::new().build();
                b[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
                b
            },
            |e| matches!(e, GgufError::TooMany { what: "tensors", .. }),
        ),
        (
            "metadata past the file",
            {
                let mut b = Builder::new().build();
                b[16..24].copy_from_slice(&1000u64.to_le_bytes());
                b
            },
            |e| matches!(e, GgufError::PastFileEnd { .. }),
        ),
        (
            "unknown value type",
            Builder::new().meta("x.y", 13, vec![0]).build(),
            |e| matches!(e, GgufError::UnknownValueType { key, value_type: 13 } if key == "x.y"),
        ),
        (
            "array of arrays",
            Builder::new()
                .meta("x.nested", 9, {
                    let mut v = 9u32.to_le_bytes().to_vec();
                    v.extend_from_slice(&0u64.to_le_bytes());
                    v
                })
                .build(),
            |e| matches!(e, GgufError::NestedArray { key } if key == "x.nested"),
        ),
        ("bool of 2", Builder::new().meta("x.flag", 7, vec![2]).build(), |e| {
            matches!(e, GgufError::BadBool { byte: 2, .. })
        }),
        (
            "duplicate key",
            Builder::new().meta("general.name", 8, string("again")).build(),
            |e| matches!(e, GgufError::DuplicateKey { key } if key == "general.name"),
        ),
        (
            "string not utf-8",
            Builder::new()
                .meta("x.s", 8, {
                    let mut v = 2u64.to_le_bytes().to_vec();
                    v.extend_from_slice(&[0xff, 0xfe]);
                    v
                })
                .build(),
            |e| matches!(e, GgufError::NotUtf8 { .. }),
        ),
        (
            "array longer than the file",
            Builder::new()
                .meta("x.a", 9, {
                    let mut v = 0u32.to_le_bytes().to_vec();
                    v.extend_from_slice(&u64::MAX.to_le_bytes());
                    v
                })
                .build(),
            |e| matches!(e, GgufError::PastFileEnd { .. }),
        ),
        (
            "alignment not a power of two",
            Builder::new().meta("general.alignment", 4, 24u32.to_le_bytes().to_vec()).build(),
            |e| matches!(e, GgufError::BadAlignment { .. }),
        ),
        (
            "alignment of the wrong type",
            Builder::new().meta("general.alignment", 8, string("32")).build(),
            |e| matches!(e, GgufError::BadAlignment { .. }),
        ),
        (
            "duplicate tensor",
            with_tensors(vec![("a", vec![32], 0, None), ("a", vec![32], 0, None)]),
            |e| matches!(e, GgufError::DuplicateTensor { tensor } if tensor == "a"),
        ),
        ("five dimensions", with_tensors(vec![("a", vec![1, 1, 1, 1, 1], 0, None)]), |e| {
            matches!(e, GgufError::Dims { n_dims: 5, .. })
        }),
        ("no dimensions", with_tensors(vec![("a", vec![], 0, None)]), |e| {
            matches!(e, GgufError::Dims { n_dims: 0, .. })
        }),
        ("negative dimension", with_tensors(vec![("a", vec![u64::MAX], 0, None)]), |e| {
            matches!(e, GgufError::DimTooLarge { .. })
        }),
        ("unknown tensor type", with_tensors(vec![("a", vec![32], 4, None)]), |e| {
            matches!(e, GgufError::UnknownTensorType { type_id: 4, .. })
        }),
        ("rows not whole blocks", with_tensors(vec![("a", vec![100, 2], 12, None)]), |e| {
            matches!(e, GgufError::PartialBlock { row: 100, block: 256, .. })
        }),
        (
            "a size that overflows",
            with_tensors(vec![("a", vec![1 << 40, 1 << 40], 0, None)]),
            |e| matches!(e, GgufError::SizeOverflow { .. }),
        ),
        (
            "a tensor where the one before puts another",
            with_tensors(vec![("a", vec![32], 0, None), ("b", vec![32], 0, Some(64))]),
            |e| matches!(e, GgufError::Offset { tensor, offset: 64, expected: 128 } if tensor == "b"),
        ),
        ("a misaligned first tensor", with_tensors(vec![("a", vec![32], 0, Some(8))]), |e| {
            matches!(
                e,
                GgufError::Offset {
                    offset: 8,
                    expected: 0,
                    ..
                }
            )
        }),
        (
            "data cut short",
            Builder {
                tail: -100,
                ..Builder::new()
            }
            .build(),
            |e| matches!(e, GgufError::PastEnd { .. }),
        ),
        (
            "bytes after the data",
            Builder {
                tail: 64,
                ..Builder::new()
            }
            .build(),
            |e| matches!(e, GgufError::TrailingBytes { .. }),
        ),
    ];
    for (what, bytes, expected) in cases {
        match check(&bytes) {
            Err(e) if expected(&e) => {
                // Each error says what it is about in words.
                assert!(!e.to_string().is_empty());
            }
            other => panic!("{what}: got {other:?}"),
        }
    }
}

#[test]
fn type_table_is_consistent() {
    for t in GgmlType::all() {
        assert_eq!(GgmlType::from_id(t.id()), Some(t));
        let (elements, bytes) = t.block();
        assert!(elements >= 1 && bytes >= 1, "{t}");
    }
    assert_eq!(GgmlType::Q4_K.bits_per_element(), 4.5);
    assert_eq!(GgmlType::Q8_0.bits_per_element(), 8.5);
    assert_eq!(GgmlType::from_id(5), None);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3_000))]

        /// Arbitrary bytes after a valid start never panic the parser.
        #[test]
        fn any_bytes_are_an_answer_not_a_panic(tail in prop::collection::vec(any::<u8>(), 0..400), cut in 0usize..600) {
            let mut bytes = Builder::new().build();
            bytes.truncate(cut.min(bytes.len()));
            bytes.extend_from_slice(&tail);
            let _ = parse(&bytes, bytes.len() as u64);
            let _ = parse(&bytes, u64::MAX);
        }

        /// Flipping any one byte of a valid file gives a valid file or a named error.
        #[test]
        fn one_flipped_byte_is_caught_or_harmless(at in 0usize..400, value in any::<u8>()) {
            let mut bytes = Builder::new().build();
            let at = at % bytes.len();
            bytes[at] = value;
            let _ = check(&bytes);
        }
    }
}

#[test]
fn facts_come_from_the_metadata_and_the_tensors() {
    let gguf = check(&Builder::new().build()).unwrap();
    let facts = crate::ModelFacts::from_gguf(&gguf.summary).unwrap();
    assert_eq!(facts.model_type, "llama");
    assert_eq!(facts.arch, crate::Arch::Decoder);
    assert_eq!(facts.params, gguf.summary.parameters);
    assert_eq!(facts.embedding_params, 64 * 3);
    assert_eq!(facts.weights_bytes, gguf.summary.weights_bytes());
    assert_eq!(
        (facts.layers, facts.hidden, facts.heads, facts.kv_heads, facts.head_dim),
        (2, 64, 4, 4, 16)
    );
    assert_eq!((facts.max_position, facts.vocab), (2048, 3));
    assert_eq!(facts.gguf, Some(GgmlType::Q4_K));
    assert_eq!(facts.source, crate::FactsSource::Gguf);
    assert_eq!(crate::Quant::Gguf.weights_bytes(&facts), gguf.summary.weights_bytes() as f64);

    // Every missing hyperparameter is named at once.
    let mut bare = gguf.summary.clone();
    bare.hyper.clear();
    let err = crate::ModelFacts::from_gguf(&bare).unwrap_err().to_string();
    for key in [
        "llama.block_count",
        "llama.embedding_length",
        "llama.attention.head_count",
        "llama.context_length",
    ] {
        assert!(err.contains(key), "{err}");
    }
    bare.architecture = None;
    let err = crate::ModelFacts::from_gguf(&bare).unwrap_err().to_string();
    assert!(err.contains("general.architecture: missing"), "{err}");
}
