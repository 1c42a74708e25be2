//! Loading from a weight file while its bytes land: tensors are read only once the feed says
//! their bytes are verified, come out identical to a load from the complete file, and a failed
//! or broken feed ends the load with its reason.

use super::*;
use std::io::Write;

/// A safetensors file of three tensors (in `dir/model.safetensors`), and its bytes.
fn weights(dir: &Path) -> (PathBuf, Vec<u8>) {
    let device = Device::Cpu;
    let mut tensors = HashMap::new();
    tensors.insert(
        "a".to_string(),
        Tensor::arange(0f32, 6.0, &device).unwrap().reshape((2, 3)).unwrap(),
    );
    tensors.insert("b".to_string(), Tensor::arange(0f32, 4096.0, &device).unwrap());
    tensors.insert(
        "c".to_string(),
        Tensor::arange(0f32, 8.0, &device).unwrap().to_dtype(DType::BF16).unwrap(),
    );
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn tensors_are_read_as_their_bytes_land_and_match_the_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = weights(dir.path());
    let complete = unsafe { VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &Device::Cpu) }.unwrap();
    // The pull writes into a partial file; the complete one is not there yet.
    std::fs::remove_file(&path).unwrap();
    let partial = dir.path().join("model.safetensors.colo-partial");
    let mut out = std::fs::File::create(&partial).unwrap();
    out.set_len(bytes.len() as u64).unwrap();

    let landing = Landing::new();
    let size = bytes.len();
    landing
        .apply(&format!("landing\tmodel.safetensors\t{size}\t{}", partial.display()))
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (landing, dir, path) = (landing.clone(), dir.path().to_path_buf(), path.clone());
        std::thread::spawn(move || {
            let vb = var_builder(&dir, &[path], DType::F32, &Device::Cpu, Some(&landing)).unwrap();
            for name in ["a", "b", "c"] {
                tx.send((name, vb.get_unchecked(name).map(|t| values(&t)))).unwrap();
            }
        });
    }
    // Nothing can be read before the header has landed.
    assert!(rx.recv_timeout(std::time::Duration::from_millis(200)).is_err());
    // The bytes land in three steps; each step lets the tensors it completes through.
    let steps = [size / 3, 2 * size / 3, size];
    let mut written = 0;
    let mut got = HashMap::new();
    for step in steps {
        out.write_all_at(&bytes[written..step], written as u64).unwrap();
        written = step;
        landing.apply(&format!("bytes\tmodel.safetensors\t{step}")).unwrap();
        while let Ok((name, result)) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            got.insert(name, (result.unwrap(), step));
        }
    }
    out.flush().unwrap();
    assert_eq!(got.len(), 3, "every tensor was read");
    for name in ["a", "b", "c"] {
        assert_eq!(got[name].0, values(&complete.get_unchecked(name).unwrap()), "tensor {name}");
    }
    // "b" (16 KiB) ends past the first third of the file: it came with a later step.
    assert!(got["b"].1 > steps[0], "b was read before its bytes landed");
}

#[test]
fn a_failed_pull_or_an_ended_feed_stops_the_load_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = weights(dir.path());
    let partial = dir.path().join("model.safetensors.colo-partial");
    std::fs::rename(&path, &partial).unwrap();
    let announce = format!("landing\tmodel.safetensors\t{}\t{}", bytes.len(), partial.display());

    // The header is there, the data is not, and the pull fails.
    let landing = Landing::new();
    landing.apply(&announce).unwrap();
    landing.apply("bytes\tmodel.safetensors\t4000").unwrap();
    let vb = var_builder(dir.path(), std::slice::from_ref(&path), DType::F32, &Device::Cpu, Some(&landing)).unwrap();
    landing.apply("failed\tthe store answered 503").unwrap();
    let err = vb.get_unchecked("b").unwrap_err().to_string();
    assert!(err.contains("the pull failed: the store answered 503"), "{err}");

    // The feed ends (the agent died) before the bytes landed: an error, not a hang.
    let landing = Landing::new();
    let feed = format!("{announce}\nlisted\nbytes\tmodel.safetensors\t4000\n");
    landing.follow(std::io::Cursor::new(feed.into_bytes()));
    let vb = var_builder(dir.path(), std::slice::from_ref(&path), DType::F32, &Device::Cpu, Some(&landing)).unwrap();
    let err = vb.get_unchecked("b").unwrap_err().to_string();
    assert!(err.contains("feed ended with 4000 of model.safetensors"), "{err}");

    // Lines that are not messages of the feed are refused, saying which.
    let landing = Landing::new();
    for (line, says) in [
        ("landing\tx\tmany\t/tmp/x", "size \"many\" is not a byte count"),
        ("bytes\tunknown.safetensors\t10", "was never announced"),
        ("hello", "is not landing, listed, bytes, done or failed"),
    ] {
        let err = landing.apply(line).unwrap_err();
        assert!(err.contains(says), "{line}: {err}");
    }

    // After `done`, every tensor reads from the complete file.
    let landing = Landing::new();
    landing.apply(&announce).unwrap();
    std::fs::rename(&partial, &path).unwrap();
    landing.apply("done").unwrap();
    let vb = var_builder(dir.path(), std::slice::from_ref(&path), DType::F32, &Device::Cpu, Some(&landing)).unwrap();
    assert_eq!(values(&vb.get_unchecked("a").unwrap()), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
}
