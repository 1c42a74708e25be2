//! Weight layouts the decoder must load: f32, f16 and bf16 files, tied embeddings, and
//! checkpoints sharded with `model.safetensors.index.json`; all give the same greedy tokens
//! as the f32 original (f16/bf16 rounding aside, checked on the first tokens).

use colo_engine::llama::{Llama, StepInput};
use colo_model::synth::{synth_llama, SynthSpec};
use std::path::Path;

fn spec(dtype: &str, tie: bool) -> SynthSpec {
    SynthSpec {
        layers: 2,
        hidden: 64,
        heads: 4,
        kv_heads: 1,
        vocab: 400,
        intermediate: 0,
        context: 128,
        seed: 9,
        dtype: dtype.into(),
        tie_embeddings: tie,
    }
}

fn write(dir: &Path, spec: &SynthSpec) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in synth_llama(spec).unwrap() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn greedy(dir: &Path, n: usize) -> Vec<u32> {
    let model = Llama::load(dir).unwrap();
    let mut cache = model.new_cache(64);
    let mut next = vec![0, 10, 20, 30];
    let mut out = Vec::new();
    for _ in 0..n {
        let logits = model
            .step(&mut [StepInput {
                tokens: &next,
                cache: &mut cache,
            }])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let token = colo_engine::generate::argmax(&logits[0]);
        out.push(token);
        next = vec![token];
    }
    out
}

/// Splits model.safetensors into two shards plus an index, as large checkpoints come.
fn shard(dir: &Path) {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let names: Vec<&String> = header.keys().filter(|k| *k != "__metadata__").collect();
    let mut weight_map = serde_json::Map::new();
    for (part, chunk) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", part + 1);
        let mut sub = serde_json::Map::new();
        let mut out_data = Vec::new();
        for name in chunk {
            let t = &header[name.as_str()];
            let (b, e) = (
                t["data_offsets"][0].as_u64().unwrap() as usize,
                t["data_offsets"][1].as_u64().unwrap() as usize,
            );
            let start = out_data.len();
            out_data.extend_from_slice(&data[b..e]);
            sub.insert(
                name.to_string(),
                serde_json::json!({"dtype": t["dtype"], "shape": t["shape"], "data_offsets": [start, out_data.len()]}),
            );
            weight_map.insert(name.to_string(), serde_json::json!(file));
        }
        let head = serde_json::to_vec(&sub).unwrap();
        let mut file_bytes = (head.len() as u64).to_le_bytes().to_vec();
        file_bytes.extend_from_slice(&head);
        file_bytes.extend_from_slice(&out_data);
        std::fs::write(dir.join(&file), file_bytes).unwrap();
    }
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"weight_map": weight_map}).to_string(),
    )
    .unwrap();
}

#[test]
fn dtypes_ties_and_shards_load_alike() {
    let root = tempfile::tempdir().unwrap();
    let f32_dir = root.path().join("f32");
    write(&f32_dir, &spec("f32", false));
    let reference = greedy(&f32_dir, 8);

    let sharded = root.path().join("sharded");
    write(&sharded, &spec("f32", false));
    shard(&sharded);
    assert_eq!(greedy(&sharded, 8), reference, "sharded checkpoint");

    for dtype in ["f16", "bf16"] {
        let dir = root.path().join(dtype);
        write(&dir, &spec(dtype, false));
        assert_eq!(greedy(&dir, 2), reference[..2], "{dtype} weights");
    }
    let tied = root.path().join("tied");
    write(&tied, &spec("f32", true));
    assert_eq!(greedy(&tied, 8).len(), 8, "tied embeddings load and run");
}
