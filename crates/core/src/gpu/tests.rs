//! Checks of the built-in catalogue and of colo.toml overrides.

use super::*;

#[test]
fn builtin_table_has_every_kind_with_datasheet_values() {
    let cat = Catalogue::builtin();
    let cases = [
        // kind, memory_gb, bandwidth, bf16, link, fly after, ref
        ("a10", 24.0, 600.0, 125.0, Link::Pcie4, Some(1.50), Some(1.01)),
        ("l4", 24.0, 300.0, 121.0, Link::Pcie4, None, Some(0.80)),
        ("l40s", 48.0, 864.0, 362.0, Link::Pcie4, Some(1.25), Some(1.86)),
        ("a100-40gb-pcie", 40.0, 1555.0, 312.0, Link::Pcie4, Some(2.50), Some(2.74)),
        ("a100-80gb-sxm", 80.0, 2039.0, 312.0, Link::Nvlink3, Some(3.50), Some(3.43)),
        ("h100-80gb-sxm", 80.0, 3350.0, 989.0, Link::Nvlink4, None, Some(6.88)),
        ("h100-80gb-pcie", 80.0, 2000.0, 756.0, Link::Pcie5, None, Some(6.98)),
        ("h200-141gb-sxm", 141.0, 4800.0, 989.0, Link::Nvlink4, None, Some(10.60)),
    ];
    assert_eq!(cat.kinds.len(), cases.len());
    for (kind, mem, bw, bf16, link, fly, reference) in cases {
        let gpu = cat.get(kind).unwrap();
        assert_eq!(
            (gpu.memory_gb, gpu.bandwidth_gbs, gpu.bf16_tflops, gpu.link),
            (mem, bw, bf16, link),
            "{kind}"
        );
        assert_eq!(gpu.price(&PriceBook::Fly2024).map(Usd::as_f64), fly, "{kind}");
        assert_eq!(gpu.price(&PriceBook::Ref).map(Usd::as_f64), reference, "{kind}");
    }
    assert_eq!(
        cat.get("l40s").unwrap().price(&PriceBook::Fly2024Before).map(Usd::as_f64),
        Some(2.50)
    );
    // The driver's own figure wins over the estimate where it is known.
    assert_eq!(cat.get("h100-80gb-sxm").unwrap().usable_bytes(), 81559.0 * 1024.0 * 1024.0);
    let a100 = cat.get("a100-80gb-sxm").unwrap().usable_bytes() / GIB;
    assert!((79.5..79.8).contains(&a100), "estimated from the marketed size: {a100}");
}

#[test]
fn interconnect_by_table() {
    let cat = Catalogue::builtin();
    let cases = [
        ("h100-80gb-sxm", 1, None),
        ("h100-80gb-sxm", 8, Some(("nvlink", 450.0))),
        ("a100-40gb-pcie", 2, Some(("nvlink bridge", 300.0))),
        ("a100-40gb-pcie", 4, Some(("pcie", 25.0))),
        ("h100-80gb-pcie", 4, Some(("pcie", 50.0))),
        ("l40s", 2, Some(("pcie", 25.0))),
    ];
    for (kind, n, expected) in cases {
        let got = cat.get(kind).unwrap().interconnect(n).map(|i| (i.via, i.gbs_per_direction));
        assert_eq!(got, expected, "{kind} x{n}");
    }
}

#[test]
fn overrides_change_prices_and_add_kinds() {
    let toml_text = r#"
        [l40s]
        usd_per_hour = 0.99
        [cpu]
        memory_gb = 64
        bandwidth_gbs = 80
        bf16_tflops = 2
        link = "none"
        usd_per_hour = 0.10
    "#;
    let specs: BTreeMap<String, GpuSpec> = toml::from_str(toml_text).unwrap();
    let cat = Catalogue::builtin().with_overrides(&specs).unwrap();
    assert_eq!(cat.get("l40s").unwrap().price(&PriceBook::Own).map(Usd::as_f64), Some(0.99));
    assert_eq!(cat.get("l40s").unwrap().bandwidth_gbs, 864.0, "untouched fields stay");
    let cpu = cat.get("cpu").unwrap();
    assert!(cpu.is_cpu());
    assert_eq!(cpu.max_tensor_parallel(), 1);
}

#[test]
fn bad_overrides_name_every_field() {
    let cases: [(&str, &[&str]); 4] = [
        ("[l40s]\nmemroy_gb = 1", &["memroy_gb"]),
        (
            "[new]\nmemory_gb = 8",
            &["gpus.new.bandwidth_gbs", "gpus.new.bf16_tflops", "gpus.new.link"],
        ),
        (
            "[a10]\nbandwidth_gbs = -5\nlink = \"carrier-pigeon\"\nusd_per_hour = nan",
            &["gpus.a10.bandwidth_gbs", "gpus.a10.link", "gpus.a10.usd_per_hour"],
        ),
        ("[a10]\nusable_mib = 0", &["gpus.a10.usable_mib"]),
    ];
    for (text, fields) in cases {
        let message = match toml::from_str::<BTreeMap<String, GpuSpec>>(text) {
            Err(e) => e.to_string(),
            Ok(specs) => Catalogue::builtin().with_overrides(&specs).unwrap_err().to_string(),
        };
        for field in fields {
            assert!(message.contains(field), "{text:?}: {message} lacks {field}");
        }
    }
    assert!(matches!(Catalogue::builtin().get("tpu"), Err(CatalogueError::UnknownKind { .. })));
}

#[test]
fn malformed_csv_is_an_error_with_line_and_column() {
    let text = "kind,name,memory_gb,bandwidth_gbs,bf16_tflops,link\nx,X,lots,1,1,pcie4\n";
    let err = Catalogue::from_csv(text).unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("memory_gb"), "{err}");
}

#[test]
fn devices_are_matched_to_kinds_by_driver_name() {
    let catalogue = Catalogue::builtin();
    let cases: &[(&str, u64, Option<&str>)] = &[
        ("NVIDIA L40S", 46068, Some("l40s")),
        ("NVIDIA A10", 23028, Some("a10")),
        ("NVIDIA L4", 23034, Some("l4")),
        ("NVIDIA H100 80GB HBM3", 81559, Some("h100-80gb-sxm")),
        // As nvidia-smi names the card on the H200 machines this project is tried on.
        ("NVIDIA H200", 143771, Some("h200-141gb-sxm")),
        ("NVIDIA A100-SXM4-80GB", 81920, Some("a100-80gb-sxm")),
        ("NVIDIA A100-PCIE-40GB", 40960, Some("a100-40gb-pcie")),
        ("NVIDIA GeForce RTX 4090", 24564, None),
    ];
    for (name, mib, expected) in cases {
        let got = catalogue.kind_of_device(name, *mib).map(|k| k.kind.as_str());
        assert_eq!(got, *expected, "{name}");
    }
}
