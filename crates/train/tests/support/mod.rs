//! Helpers shared by the kernel tests.

/// Runs test `test` of this test binary in a child process with `marker` set (so that the test
/// prints its `bits ` line instead of spawning children) and `env` (the kernel switch unset
/// unless `env` sets it); returns the 16 hex digits it printed.
pub fn child_bits(test: &str, marker: &str, env: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(marker, "1")
        .env_remove("LOSSBENCH_CPU_KERNELS")
        .envs(env.iter().copied());
    let out = cmd.output().expect("run the test binary");
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("bits ").map(str::to_owned))
        .filter(|bits| bits.len() == 16)
        .unwrap_or_else(|| panic!("no bits in the child's output: {stdout}"))
}
