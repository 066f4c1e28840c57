//! Which accelerator QEMU gets: KVM only when the CPU advertises vmx/svm (here /dev/kvm may
//! exist while guests hang), TCG otherwise.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// From the text of /proc/cpuinfo.
    pub fn from_cpuinfo(cpuinfo: &str) -> Self {
        let virt = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        if virt {
            Self::Kvm
        } else {
            Self::Tcg
        }
    }

    pub fn detect() -> Self {
        if std::env::var("CERANA_QEMU_ACCEL").as_deref() == Ok("tcg") {
            return Self::Tcg;
        }
        Self::from_cpuinfo(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
    }

    pub fn qemu_args(self) -> Vec<String> {
        match self {
            Self::Kvm => vec!["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()],
            Self::Tcg => vec!["-accel".into(), "tcg".into(), "-cpu".into(), "max".into()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtualisation_flags_pick_kvm() {
        assert_eq!(Accel::from_cpuinfo("processor: 0\nflags\t: fpu vme sse2 vmx aes\n"), Accel::Kvm);
        assert_eq!(Accel::from_cpuinfo("flags\t: fpu svm\n"), Accel::Kvm);
        assert_eq!(Accel::from_cpuinfo("flags\t: fpu vme sse2 vmxnet\n"), Accel::Tcg);
        assert_eq!(Accel::from_cpuinfo(""), Accel::Tcg);
    }
}
