//! `colo bench cpu`: the CPU line every benchmark prints, and `COLO_DECODE` overriding the
//! decode layout's probe.
use std::process::Command;

fn cpu_line(decode: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_colo"));
    cmd.args(["bench", "cpu"]);
    match decode {
        Some(v) => cmd.env("COLO_DECODE", v),
        None => cmd.env_remove("COLO_DECODE"),
    };
    let out = cmd.output().expect("running colo bench cpu");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cpu_line_names_the_decode_layout_and_colo_decode_overrides_the_probe() {
    let (ok, line, err) = cpu_line(None);
    assert!(ok, "{err}");
    for field in ["cpu model=", "threads=", "simd=", "matmul=", "blas=", "decode=", "vector_ops="] {
        assert!(line.contains(field), "no {field} in {line}");
    }
    assert!(!line.contains("COLO_DECODE"), "{line}");
    let (ok, line, err) = cpu_line(Some("panels"));
    assert!(ok, "{err}");
    assert!(line.contains("decode=\"panels ") && line.contains("; COLO_DECODE)"), "{line}");
    let (ok, line, err) = cpu_line(Some("columns"));
    assert!(ok, "{err}");
    assert!(line.contains("decode=\"gemm (panels ") && line.contains("; COLO_DECODE)"), "{line}");
    // Another value (the old `rows` too) is ignored, with a warning naming the variable: the
    // probe chooses.
    let (ok, line, err) = cpu_line(Some("rows"));
    assert!(ok, "{err}");
    assert!(!line.contains("COLO_DECODE"), "{line}");
    assert!(err.contains("COLO_DECODE"), "no warning about COLO_DECODE=rows: {err}");
}
