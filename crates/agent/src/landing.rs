//! Starting colo's engine while its model is still being pulled: the engine is spawned once
//! the small files it reads whole (config, tokenizer, template) are in the cache, and told on
//! its stdin how far each weight file is verified, so it loads each tensor as its bytes land
//! (the feed's format is in colo-engine's `landing` module).

use colo_model::Manifest;
use colo_store::Pull;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How often the feed tells the engine what has landed since.
const FEED_EVERY: Duration = Duration::from_millis(20);

/// A weight file the engine loads as it lands.
#[derive(Clone, Debug)]
pub(crate) struct WeightFile {
    /// Its path in the model, as the manifest names it.
    pub path: String,
    pub size: u64,
}

/// The model's safetensors files, or `None` when it has none (or a name the feed cannot
/// carry): then the engine starts after the whole pull.
pub(crate) fn weight_files(manifest: &Manifest) -> Option<Vec<WeightFile>> {
    let files: Vec<WeightFile> = manifest
        .files
        .iter()
        .filter(|f| f.path.ends_with(".safetensors"))
        .map(|f| WeightFile {
            path: f.path.clone(),
            size: f.size,
        })
        .collect();
    let carried = files.iter().all(|f| !f.path.contains(['\t', '\n', '\r']));
    (!files.is_empty() && carried).then_some(files)
}

/// Waits until every file that is not a weight file is complete under its own name, or the
/// pull fails.
pub(crate) async fn wait_for_small_files(pull: &Pull, manifest: &Manifest) -> Result<(), colo_store::StoreError> {
    for file in manifest.files.iter().filter(|f| !f.path.ends_with(".safetensors")) {
        // Verified first, then renamed to its own name: wait for both.
        drop(pull.open_prefix(&file.path, file.size).await?);
        let path = pull.dir().join(&file.path);
        while !path.exists() {
            tokio::select! {
                finished = pull.finish() => {
                    finished?;
                    break;
                }
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    }
    Ok(())
}

/// Tells the engine on `stdin` which weight files are landing, then how far each is verified
/// as it grows, then `done` (or `failed` and the reason) when the pull ends. Stops early if
/// the engine goes away.
pub(crate) async fn feed(mut stdin: tokio::process::ChildStdin, pull: Pull, files: Vec<WeightFile>) {
    let mut head = String::new();
    for file in &files {
        let partial = pull.partial_path(&file.path);
        head.push_str(&format!("landing\t{}\t{}\t{}\n", file.path, file.size, partial.display()));
    }
    head.push_str("listed\n");
    if stdin.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let progress: Vec<_> = files.iter().map(|f| pull.file_progress(&f.path)).collect();
    let mut told = vec![0u64; files.len()];
    let finish = pull.finish();
    tokio::pin!(finish);
    let mut tick = tokio::time::interval(FEED_EVERY);
    let last = loop {
        let ended = tokio::select! {
            result = &mut finish => Some(result),
            _ = tick.tick() => None,
        };
        let mut lines = String::new();
        for ((file, rx), told) in files.iter().zip(&progress).zip(&mut told) {
            let verified = rx.as_ref().map_or(0, |rx| *rx.borrow());
            if verified > *told {
                *told = verified;
                lines.push_str(&format!("bytes\t{}\t{verified}\n", file.path));
            }
        }
        if stdin.write_all(lines.as_bytes()).await.is_err() {
            return;
        }
        if let Some(result) = ended {
            break match result {
                Ok(_) => "done\n".to_string(),
                Err(e) => format!("failed\t{}\n", e.to_string().replace(['\n', '\r'], " ")),
            };
        }
    };
    // Closing stdin after `done` or `failed` tells the engine nothing more: both are final.
    let _ = stdin.write_all(last.as_bytes()).await;
    let _ = stdin.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use colo_model::FileEntry;

    fn manifest(paths: &[&str]) -> Manifest {
        Manifest {
            format: 1,
            name: "m".into(),
            revision: "r".into(),
            chunk_size: 4 << 20,
            files: paths
                .iter()
                .map(|p| FileEntry {
                    path: p.to_string(),
                    size: 10,
                    chunks: vec![],
                    safetensors: None,
                    gguf: None,
                })
                .collect(),
            pushed_at_ms: 0,
        }
    }

    #[test]
    fn only_safetensors_files_land_and_only_names_the_feed_can_carry() {
        let files = weight_files(&manifest(&["config.json", "model-1.safetensors", "sub/model-2.safetensors"])).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["model-1.safetensors", "sub/model-2.safetensors"]);
        // No weights to land (a GGUF model), or a name with a tab: the engine starts after the pull.
        assert!(weight_files(&manifest(&["config.json", "model.gguf"])).is_none());
        assert!(weight_files(&manifest(&["a\tb.safetensors"])).is_none());
    }
}
