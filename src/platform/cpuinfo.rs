//! Host platform detection: port of containerd/platforms defaults_unix.go
//! (`DefaultSpec`) and cpuinfo_linux.go (arm variant from /proc/cpuinfo).

use super::Platform;
use std::sync::OnceLock;

/// The Go `runtime.GOOS` spelling of the host os.
pub(super) fn host_os() -> String {
    match std::env::consts::OS {
        "macos" => "darwin".to_string(),
        other => other.to_ascii_lowercase(),
    }
}

/// The Go `runtime.GOARCH` spelling of a Rust `target_arch`.
fn go_arch(rust_arch: &str, little_endian: bool) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" if little_endian => "ppc64le",
        "powerpc64" => "ppc64",
        "powerpc" => "ppc",
        "mips" if little_endian => "mipsle",
        "mips" => "mips",
        "mips64" if little_endian => "mips64le",
        "mips64" => "mips64",
        "loongarch64" => "loong64",
        "wasm32" => "wasm",
        other => other,
    }
}

fn host_arch() -> String {
    go_arch(std::env::consts::ARCH, cfg!(target_endian = "little")).to_string()
}

/// Upstream `getCPUInfo`: value of the first `pattern: value` line
/// (key compared case-insensitively).
fn cpu_info_field(cpuinfo: &str, pattern: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let mut list = line.split(':');
        let key = list.next()?;
        let value = list.next()?;
        key.trim()
            .eq_ignore_ascii_case(pattern)
            .then(|| value.trim().to_string())
    })
}

/// Upstream `getCPUVariantFromArch` (uname machine → raw variant).
fn variant_from_machine(arch: &str) -> Option<String> {
    let arch = arch.to_ascii_lowercase();
    if arch == "aarch64" {
        return Some("8".into());
    }
    if arch.starts_with("armv") && arch.len() >= 5 {
        return Some(
            match &arch[3..5] {
                "v8" => "8",
                "v7" => "7",
                "v6" => "6",
                "v5" => "5",
                "v4" => "4",
                "v3" => "3",
                _ => "unknown",
            }
            .into(),
        );
    }
    None
}

/// Upstream `getCPUVariant`, from the text of /proc/cpuinfo and the uname
/// machine (used when cpuinfo has no "CPU architecture" line). `None` where
/// upstream returns an error.
pub(super) fn cpu_variant(
    cpuinfo: Option<&str>,
    machine: Option<&str>,
    goarch: &str,
) -> Option<String> {
    let mut variant = match cpuinfo.and_then(|c| cpu_info_field(c, "Cpu architecture")) {
        Some(v) => v,
        None => variant_from_machine(machine?)?,
    };
    if goarch == "arm" && variant == "7" {
        if let Some(model) = cpuinfo.and_then(|c| cpu_info_field(c, "model name")) {
            if model.to_ascii_lowercase().starts_with("armv6-compatible") {
                variant = "6".into();
            }
        }
    }
    Some(
        match variant.to_ascii_lowercase().as_str() {
            "8" | "aarch64" => "v8",
            "7" | "7m" | "?(12)" | "?(13)" | "?(14)" | "?(15)" | "?(16)" | "?(17)" => "v7",
            "6" | "6tej" => "v6",
            "5" | "5t" | "5te" | "5tej" => "v5",
            "4" | "4t" => "v4",
            "3" => "v3",
            _ => "unknown",
        }
        .to_string(),
    )
}

/// Host platform from its parts (pure, for tests). For arm the variant comes
/// from cpuinfo, falling back to v7 when it cannot be determined; arm64 is
/// always reported as plain arm64 (upstream's "v8", normalised).
fn build_host(os: String, arch: String, cpuinfo: Option<&str>, machine: Option<&str>) -> Platform {
    let variant = match arch.as_str() {
        "arm" => Some(
            cpu_variant(cpuinfo, machine, "arm")
                .filter(|v| v != "unknown")
                .unwrap_or_else(|| "v7".to_string()),
        ),
        _ => None,
    };
    Platform {
        os,
        architecture: arch,
        variant,
        os_version: None,
    }
    .normalize()
}

/// The (cached) normalised platform of the running machine.
pub(super) fn host_platform() -> &'static Platform {
    static HOST: OnceLock<Platform> = OnceLock::new();
    HOST.get_or_init(|| {
        let arch = host_arch();
        let (cpuinfo, machine) = if arch == "arm" {
            (
                std::fs::read_to_string("/proc/cpuinfo").ok(),
                std::fs::read_to_string("/proc/sys/kernel/arch").ok(),
            )
        } else {
            (None, None)
        };
        build_host(
            host_os(),
            arch,
            cpuinfo.as_deref(),
            machine.as_deref().map(str::trim),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RPI_ZERO: &str = "processor\t: 0\nmodel name\t: ARMv6-compatible processor rev 7 (v6l)\n\
        BogoMIPS\t: 697.95\nFeatures\t: half thumb fastmult vfp edsp java tls\nCPU implementer\t: 0x41\n\
        CPU architecture: 7\nCPU variant\t: 0x0\n";
    const RPI3_32: &str =
        "processor\t: 0\nmodel name\t: ARMv7 Processor rev 4 (v7l)\nBogoMIPS\t: 38.40\n\
        CPU implementer\t: 0x41\nCPU architecture: 7\nCPU variant\t: 0x0\n";
    const ARM64: &str =
        "processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU architecture: 8\n";

    #[test]
    fn variants_from_cpuinfo() {
        assert_eq!(
            cpu_variant(Some(RPI_ZERO), None, "arm").as_deref(),
            Some("v6")
        );
        assert_eq!(
            cpu_variant(Some(RPI_ZERO), None, "arm64").as_deref(),
            Some("v7")
        );
        assert_eq!(
            cpu_variant(Some(RPI3_32), None, "arm").as_deref(),
            Some("v7")
        );
        assert_eq!(
            cpu_variant(Some(ARM64), None, "arm64").as_deref(),
            Some("v8")
        );
        assert_eq!(
            cpu_variant(Some("CPU architecture: 5TEJ\n"), None, "arm").as_deref(),
            Some("v5")
        );
        assert_eq!(
            cpu_variant(Some("cpu ARCHITECTURE : 7M\n"), None, "arm").as_deref(),
            Some("v7")
        );
        assert_eq!(
            cpu_variant(Some("CPU architecture: ?(12)\n"), None, "arm").as_deref(),
            Some("v7")
        );
        assert_eq!(
            cpu_variant(Some("CPU architecture: weird\n"), None, "arm").as_deref(),
            Some("unknown")
        );
        // falls back to uname machine
        assert_eq!(
            cpu_variant(Some("processor: 0\n"), Some("armv6l"), "arm").as_deref(),
            Some("v6")
        );
        assert_eq!(
            cpu_variant(None, Some("aarch64"), "arm64").as_deref(),
            Some("v8")
        );
        assert_eq!(
            cpu_variant(None, Some("armv7l"), "arm").as_deref(),
            Some("v7")
        );
        assert_eq!(cpu_variant(None, Some("arm"), "arm"), None);
        assert_eq!(cpu_variant(None, None, "arm"), None);
    }

    #[test]
    fn host_construction() {
        let h = build_host("linux".into(), "arm".into(), Some(RPI_ZERO), None);
        assert_eq!(h, Platform::new("linux", "arm", Some("v6")));
        let h = build_host("linux".into(), "arm".into(), None, None);
        assert_eq!(h, Platform::new("linux", "arm", Some("v7")));
        let h = build_host(
            "linux".into(),
            "arm".into(),
            Some("CPU architecture: junk\n"),
            None,
        );
        assert_eq!(h, Platform::new("linux", "arm", Some("v7")));
        let h = build_host("linux".into(), "arm64".into(), Some(ARM64), None);
        assert_eq!(h, Platform::new("linux", "arm64", None));
        let h = build_host("linux".into(), "amd64".into(), None, None);
        assert_eq!(h, Platform::new("linux", "amd64", None));
    }

    #[test]
    fn go_arch_names() {
        assert_eq!(go_arch("x86_64", true), "amd64");
        assert_eq!(go_arch("x86", true), "386");
        assert_eq!(go_arch("aarch64", true), "arm64");
        assert_eq!(go_arch("powerpc64", true), "ppc64le");
        assert_eq!(go_arch("powerpc64", false), "ppc64");
        assert_eq!(go_arch("s390x", false), "s390x");
        assert_eq!(go_arch("riscv64", true), "riscv64");
        assert_eq!(go_arch("loongarch64", true), "loong64");
    }

    #[test]
    fn host_is_normalised() {
        let h = Platform::host();
        assert_eq!(h.normalize(), h);
        assert!(!h.os.is_empty() && !h.architecture.is_empty());
        if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
            assert_eq!(h.to_string(), "linux/amd64");
        }
    }
}
