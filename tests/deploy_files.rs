//! The deployment files (Prometheus rules and their unit tests, PrometheusRule, Grafana dashboard,
//! systemd unit) pass `deploy/check.sh`, which installs `promtool` when it is missing.

use std::path::Path;
use std::process::Command;

#[test]
fn deploy_check_script_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let out = Command::new("bash")
        .arg(root.join("deploy/check.sh"))
        .current_dir(root)
        .output()
        .expect("run deploy/check.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "deploy/check.sh failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("deploy/check.sh: all checks passed"), "unexpected output:\n{stdout}");
}
