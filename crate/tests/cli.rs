//! The `sd` binary: its subcommands and the exit-code contract (0 on success, 2 and one line on bad input).

use std::process::Command;

fn sd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sd")).args(args).output().expect("sd runs")
}

#[test]
fn unknown_subcommand_is_exit_code_2() {
    let out = sd(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
}

#[test]
fn self_test_compares_wgpu_with_the_cpu() {
    let out = sd(&["self-test"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["passed"], true, "{report}");
    assert!(report["maxAbsDiff"].as_f64().unwrap() <= 1e-4);
}

#[test]
fn gpu_info_reports_adapter_and_limits() {
    let out = sd(&["gpu-info"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert!(!info["adapter"].as_str().unwrap().is_empty());
    assert!(info["limits"]["maxStorageBufferBindingSize"].as_u64().unwrap() >= 128 << 20);
}
