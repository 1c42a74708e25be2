#!/usr/bin/env python3
"""Writes the scenarios of docs/THESIS.md (sims/thesis/*.toml): a day of diurnal traffic to a
Llama-3.1-8B-class model from callers in all 35 regions of data/regions.csv, served in three
shapes. Run it again after changing the assumptions below; `scripts/thesis` then simulates
every scenario and writes the reports and plots."""

import pathlib

HERE = pathlib.Path(__file__).resolve().parent
CSV = HERE.parent.parent / "data" / "regions.csv"
CODES = [l.split(",")[0] for l in CSV.read_text().splitlines() if l and not l.startswith(("#", "code,"))]
assert len(CODES) == 35, CODES

# Callers: the same mean rate in every region; each region's curve peaks at 14:00 local time.
# A busy app (17.5 requests a second over the world) and a small one (one request every
# 286 s on average, about 300 a day).
BUSY = 0.5
SMALL = 0.0001
# Fly.io's outbound data prices by where a machine is (data/egress.csv).
APAC_SA = {"sin", "nrt", "syd", "hkg", "gru", "gig", "eze", "scl", "bog"}
AFRICA_INDIA = {"jnb", "bom"}
# Tigris's core regions plus the Fly regions it also serves with GPUs nearby: where the
# co-located shape puts GPUs, storage and an edge.
COLO_REGIONS = ["sjc", "ord", "iad", "ams", "fra", "lhr", "sin", "nrt", "syd", "gru"]

TOP = """seed = 1
duration_s = 90000          # a day, after an hour's warm-up
warmup_s = 3600
"""

COMMON = """
[arrivals]
curve = "diurnal"
peak_to_trough = 3
peak_hour = 14

[service]
distribution = "roofline"

[model]
name = "llama-3.1-8b"
quant = "bf16"

[tokens]
prompt_mean = 512
prompt_sigma = 0.8
output_mean = 256
output_sigma = 0.6
bytes_per_output_token = 200

[routing]
hard_limit = 16             # sequences per GPU: the batch
max_wait_ms = 600000
mode = "{mode}"              # pack: fill one GPU before the next, so spare ones fall idle and stop
"""


def fly_egress(code):
    if code in AFRICA_INDIA:
        return "fly-internet-africa-india"
    if code in APAC_SA:
        return "fly-internet-apac-sa"
    return "fly-internet-na-eu"


def regions(rate, machines_at, egress_of, cloud):
    out = []
    for code in CODES:
        lines = [f'[[region]]\nname = "{code}"\narrival_rate = {rate}']
        if code in machines_at:
            lines.append(f"scalable = {machines_at[code]}")
            lines.append(f'cloud = "{cloud}"')
            if egress_of(code):
                lines.append(f'egress = "{egress_of(code)}"')
        out.append("\n".join(lines))
    return "\n\n".join(out)


def write(name, header, gpu, body, mode="pack", prices="fly-2024"):
    path = HERE / f"{name}.toml"
    common = COMMON.replace("{mode}", mode)
    path.write_text(
        f"# {header}\n# Written by sims/thesis/make.py; see docs/THESIS.md.\n{TOP}"
        f'gpu = "{gpu}"\nprices = "{prices}"\n{common}\n{body}\n'
    )
    print(path)


def scaling(autostop, min_running):
    return f"""[scaling]
autostop_s = {autostop}
min_running = {min_running}
engine_load_s = 20
"""


COLO_STORAGE = """[storage]                   # a store in every GPU region (Tigris beside Fly), no egress
cloud = "fly"
origin_gbps = 8
peer_gbps = 10
cache_gbps = 16
"""

# The hyperscaler's autoscaled VMs start from fresh disks: every start pulls the weights
# across clouds. The GPU cloud's hosts keep them on local disks.
REMOTE_STORAGE = """[storage]
region = "iad"
cloud = "aws"
egress = "aws-s3"
origin_gbps = 2
cache_gbps = 16
"""


def colo(name, gpu, note, rate=BUSY, mode="pack"):
    # Fly's autostop acts after 5 to 10 minutes idle; scale to zero.
    body = scaling(300, 0) + "\n" + COLO_STORAGE + "\n" + regions(rate, {c: 3 for c in COLO_REGIONS}, fly_egress, "fly")
    header = f"Co-located: {gpu} ({note}), storage and an edge in 10 regions, scale to zero; {mode} routing."
    write(name, header, gpu, body, mode)


def hyperscaler(name, rate=BUSY, min_running=2, prices="fly-2024", autostop=600):
    body = (
        scaling(autostop, min_running)
        + "\n"
        + REMOTE_STORAGE.replace("cache_gbps = 16", "cache = false\ncache_gbps = 16")
        + "\n"
        + regions(rate, {"iad": 30}, lambda _: "gcp", "gcp")
    )
    header = (
        f"Hyperscaler: L40S ({prices} prices) in one region (iad) of one cloud, weights in another cloud's "
        "store (egress paid per pull), fresh hosts without a cache, answers at that cloud's internet egress."
    )
    write(name, header, "l40s", body, prices=prices)


def gpu_cloud(name, rate=BUSY):
    body = scaling(600, 2) + "\n" + REMOTE_STORAGE + "\n" + regions(rate, {"ord": 30}, lambda _: None, "gpu-cloud")
    header = (
        "GPU cloud: L40S in one region (ord), weights in a remote store (S3 in iad, egress paid once "
        "per host, which keeps them), no egress fee on answers."
    )
    write(name, header, "l40s", body)


colo("colo-l40s", "l40s", "$1.25 an hour")
colo("colo-l40s-spread", "l40s", "$1.25 an hour", mode="score")
colo("colo-a10", "a10", "$1.50 an hour")
colo("colo-a100", "a100-80gb-sxm", "$3.50 an hour")
hyperscaler("hyperscaler")
hyperscaler("hyperscaler-ref", prices="ref")
gpu_cloud("gpu-cloud")
# The small app: both shapes scale to zero.
colo("small-colo", "l40s", "$1.25 an hour", rate=SMALL)
hyperscaler("small-hyperscaler", rate=SMALL, min_running=0, autostop=300)
