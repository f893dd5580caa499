//! Facts about the CPU that the kernels tune themselves by, each checked once.
//!
//! Prefetch hints are the one place the kernels differ by vendor: they were tuned on Zen
//! (AMD) VMs first, and where a Xeon measured better with another hint, the Intel path
//! takes it while Zen keeps what it was measured with. The arithmetic never differs, so
//! the bits of every result are the same on both.

/// Whether this is an Intel CPU (`cpuid` leaf 0 says `GenuineIntel`).
pub(crate) fn is_intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static INTEL: OnceLock<bool> = OnceLock::new();
        *INTEL.get_or_init(|| {
            // SAFETY: `cpuid` exists on every x86_64 CPU; leaf 0 is the vendor string.
            #[allow(unused_unsafe)]
            let id = unsafe { std::arch::x86_64::__cpuid(0) };
            (id.ebx, id.edx, id.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e)
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
