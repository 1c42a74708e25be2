//! A real S3-compatible server (`s3s-fs`, its own process) for the store's tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "colo-test";
pub const SECRET_KEY: &str = "colo-test-secret";

pub fn s3s_fs_binary() -> PathBuf {
    if let Ok(path) = std::env::var("S3S_FS") {
        return path.into();
    }
    let home_bin = PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/s3s-fs");
    if home_bin.exists() {
        return home_bin;
    }
    "s3s-fs".into()
}

/// Starts `s3s-fs` over `root` on a free loopback port from a thread that lives as long as
/// the test process, and returns the port. The server is told to die with that thread
/// (`PR_SET_PDEATHSIG`), so it never outlives the tests even when they panic.
pub fn start_for_process(root: &Path) -> u16 {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let root = root.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(s3s_fs_binary());
        command
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                ACCESS_KEY,
                "--secret-key",
                SECRET_KEY,
            ])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl only asks the kernel to kill the server when this thread ends.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .expect("s3s-fs must be installed: cargo install s3s-fs@0.14.1 --locked --features binary (.ci/run does this)");
        tx.send(child.id()).unwrap();
        // This thread lives as long as the server (its death would kill the server), and reaps
        // it should it exit first.
        let _ = child.wait();
    });
    rx.recv().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s3s-fs did not listen within 10s");
        std::thread::sleep(Duration::from_millis(20));
    }
    port
}

/// Points the AWS variables at the server. Call before any store is opened in the process.
pub fn set_env(port: u16) {
    std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
    std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    std::env::set_var("AWS_REGION", "us-east-1");
}
