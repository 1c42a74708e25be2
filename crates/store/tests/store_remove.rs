//! Removing models from the store: one revision (by its full name or a prefix that names only
//! it), or all; the latest moves to the newest left first; a prefix several revisions share is
//! refused, naming them.

mod common;

use colo_store::{no_progress, push_dir, PushOptions, Store, StoreError};

#[tokio::test]
async fn revisions_go_one_at_a_time_or_all_and_ambiguous_prefixes_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path().join("store").to_str().unwrap()).unwrap();
    let mut revisions = Vec::new();
    for seed in 1..=3 {
        let dir = root.path().join(format!("m{seed}"));
        common::write_sharded_model(&dir, 1, 1, seed);
        let report = push_dir(&store, &dir, "m", &PushOptions::default(), no_progress()).await.unwrap();
        revisions.push(report.manifest.revision);
    }
    assert_eq!(store.revisions("m").await.unwrap().len(), 3);

    // A prefix every revision shares (the empty one) names none alone.
    match store.remove("m", Some("")).await {
        Err(StoreError::AmbiguousRevision { matches, .. }) => assert_eq!(matches.len(), 3),
        other => panic!("expected an ambiguous revision, got {other:?}"),
    }

    // The latest goes: the newest left becomes the latest.
    let (gone, latest) = store.remove("m", Some(&revisions[2])).await.unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(latest.as_deref(), Some(revisions[1].as_str()));
    assert_eq!(store.manifest("m").await.unwrap().revision, revisions[1]);
    assert!(store.manifest_at("m", &revisions[2]).await.is_err());

    // All of it.
    let (gone, latest) = store.remove("m", None).await.unwrap();
    assert_eq!((gone.len(), latest), (2, None));
    assert!(store.models().await.unwrap().is_empty());
    assert!(matches!(store.remove("m", None).await, Err(StoreError::NotFound { .. })));
}
