//! Regions as network namespaces: one namespace per region, each joined by a veth pair to a
//! bridge in this namespace, addresses in a private /24, `tc netem` delay on each region's
//! link where the kernel has netem (none when the delay asked is 0), and `tc tbf` rate caps
//! on both ends of a link on request (`cap`). The daemons of a region run inside its namespace
//! (`ip netns exec`), so traffic between regions crosses real links. Needs root, `ip` and
//! `tc`; `Netns::create` says why when it cannot, and everything it made is removed when the
//! guard drops (and namespaces left by a test run that was killed are removed by the next).

use super::cluster::Place;
use std::process::Command;

const PREFIX: &str = "colo-t";

/// The namespaces of one test run. Dropping it deletes them and the bridge.
pub struct Netns {
    /// The bridge's address: where nats-server, s3s-fs and control listen.
    pub bridge_ip: String,
    bridge: String,
    /// (region, namespace, address), in the order given.
    regions: Vec<(String, String, String)>,
    /// One-way delay netem adds to everything leaving a region, or why there is none.
    pub netem: Result<u64, String>,
}

/// Runs `ip`/`tc` with `args`; the error is its stderr.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{program} {}`: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Removes namespaces and bridges of earlier runs whose test process is gone (killed before
/// its guard could drop).
fn remove_leftovers() {
    let alive = |pid: &str| std::path::Path::new(&format!("/proc/{pid}")).exists();
    for line in output("ip", &["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        if !alive(rest.split('-').next().unwrap_or_default()) {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
    for line in output("ip", &["-o", "link", "show", "type", "bridge"]).lines() {
        let name = line.split(':').nth(1).unwrap_or_default().trim();
        if let Some(pid) = name.strip_prefix("ctb") {
            if !alive(pid) {
                let _ = run("ip", &["link", "del", name]);
            }
        }
    }
}

impl Netns {
    /// One namespace per region, joined through a bridge, with `one_way_delay_ms` of netem on
    /// the way out of each (so `2 * one_way_delay_ms` between two regions, one way to this
    /// namespace's daemons). Errs, saying why, when this process is not root, `ip` or `tc` is
    /// missing, or the kernel refuses namespaces; a kernel without netem still gets the
    /// namespaces, with `netem` saying why there is no delay.
    pub fn create(regions: &[&str], one_way_delay_ms: u64) -> Result<Netns, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        for tool in ["ip", "tc"] {
            run(tool, &["-V"]).map_err(|e| format!("{tool} (iproute2) is not usable: {e}"))?;
        }
        remove_leftovers();
        let pid = std::process::id();
        let taken = output("ip", &["-4", "-o", "addr"]);
        let third = (0..250)
            .map(|i| (pid as usize + i) % 250 + 1)
            .find(|x| !taken.contains(&format!("10.231.{x}.")))
            .ok_or("no free 10.231.x.0/24 subnet")?;
        let subnet = format!("10.231.{third}");
        let mut net = Netns {
            bridge_ip: format!("{subnet}.1"),
            bridge: format!("ctb{pid}"),
            regions: Vec::new(),
            netem: Err("not tried".into()),
        };
        // From here on, the guard removes whatever was made if a step fails.
        run("ip", &["link", "add", &net.bridge, "type", "bridge"])?;
        run("ip", &["addr", "add", &format!("{}/24", net.bridge_ip), "dev", &net.bridge])?;
        run("ip", &["link", "set", &net.bridge, "up"])?;
        let mut netem = Ok(one_way_delay_ms);
        for (i, region) in regions.iter().enumerate() {
            let ns = format!("{PREFIX}{pid}-{region}");
            let (outer, inner) = (format!("cth{pid}{i}"), format!("ctn{pid}{i}"));
            let ip = format!("{subnet}.{}", i + 2);
            run("ip", &["netns", "add", &ns])?;
            net.regions.push((region.to_string(), ns.clone(), ip.clone()));
            run("ip", &["link", "add", &outer, "type", "veth", "peer", "name", &inner])?;
            run("ip", &["link", "set", &outer, "master", &net.bridge, "up"])?;
            run("ip", &["link", "set", &inner, "netns", &ns])?;
            let in_ns = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &ns];
                all.extend_from_slice(args);
                run("ip", &all)
            };
            in_ns(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &inner])?;
            in_ns(&["ip", "link", "set", &inner, "up"])?;
            in_ns(&["ip", "link", "set", "lo", "up"])?;
            if netem.is_ok() && one_way_delay_ms > 0 {
                let delay = format!("{one_way_delay_ms}ms");
                netem = in_ns(&["tc", "qdisc", "add", "dev", &inner, "root", "netem", "delay", &delay]).map(|()| one_way_delay_ms);
            }
        }
        net.netem = netem;
        Ok(net)
    }

    /// Caps the link of `region` at `mbit` megabits a second in both directions, with a token
    /// bucket (`tc tbf`) on each end of its veth pair: what leaves the namespace and what enters
    /// it. Only on a link without netem (a namespace made with no delay).
    pub fn cap(&self, region: &str, mbit: u32) -> Result<(), String> {
        let i = self
            .regions
            .iter()
            .position(|(r, _, _)| r == region)
            .ok_or_else(|| format!("no namespace for region {region}"))?;
        let ns = &self.regions[i].1;
        let pid = std::process::id();
        let (outer, inner) = (format!("cth{pid}{i}"), format!("ctn{pid}{i}"));
        // The bucket holds 10 ms of traffic (and at least 64 KiB): enough that the kernel's
        // timer granularity does not cap below the rate, small enough to shape.
        let burst = (u64::from(mbit) * 1_000_000 / 8 / 100).max(64 * 1024).to_string();
        let rate = format!("{mbit}mbit");
        let tbf = ["root", "tbf", "rate", &rate, "burst", &burst, "latency", "100ms"];
        let mut inside = vec!["netns", "exec", ns.as_str(), "tc", "qdisc", "replace", "dev", &inner];
        inside.extend_from_slice(&tbf);
        run("ip", &inside)?;
        let mut outside = vec!["qdisc", "replace", "dev", &outer];
        outside.extend_from_slice(&tbf);
        run("tc", &outside)
    }

    /// Runs `program` with `args` inside `region`'s namespace.
    pub fn command(&self, region: &str, program: &str) -> Command {
        let (_, ns, _) = self
            .regions
            .iter()
            .find(|(r, _, _)| r == region)
            .unwrap_or_else(|| panic!("no namespace for region {region}"));
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, program]);
        command
    }

    /// A region's address.
    pub fn ip(&self, region: &str) -> String {
        self.place(region).ip
    }

    /// Where a region's daemons run.
    pub fn place(&self, region: &str) -> Place {
        let (_, ns, ip) = self
            .regions
            .iter()
            .find(|(r, _, _)| r == region)
            .unwrap_or_else(|| panic!("no namespace for region {region}"));
        Place {
            netns: Some(ns.clone()),
            ip: ip.clone(),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth inside it, and with it the peer on the bridge.
        for (_, ns, _) in &self.regions {
            if let Err(e) = run("ip", &["netns", "del", ns]) {
                eprintln!("removing namespace {ns}: {e}");
            }
        }
        if let Err(e) = run("ip", &["link", "del", &self.bridge]) {
            eprintln!("removing bridge {}: {e}", self.bridge);
        }
    }
}
