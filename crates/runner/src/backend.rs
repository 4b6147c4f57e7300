//! Choosing where tensors live: `auto`, `wgpu`, `flex` or `ndarray`.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use burn::prelude::*;

/// A backend requested on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// A real GPU through wgpu if there is one, else flex.
    #[default]
    Auto,
    /// wgpu on its default adapter (a GPU, or a software one such as lavapipe).
    Wgpu,
    /// burn's pure-Rust CPU backend.
    Flex,
    /// burn's deprecated ndarray CPU backend (about 30× slower than flex without BLAS).
    Ndarray,
}

impl FromStr for BackendChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Self::Auto,
            "wgpu" => Self::Wgpu,
            "flex" => Self::Flex,
            "ndarray" => Self::Ndarray,
            other => bail!("unknown backend `{other}` (choose auto, wgpu, flex or ndarray)"),
        })
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Wgpu => "wgpu",
            Self::Flex => "flex",
            Self::Ndarray => "ndarray",
        })
    }
}

/// A resolved backend: the device and how to describe it in `run.json`.
#[derive(Debug, Clone)]
pub struct Backend {
    pub name: &'static str,
    pub device_name: String,
    pub device: Device,
    /// Whether results are bit-exact across runs on this backend (see the README).
    pub deterministic: bool,
}

/// What wgpu's default adapter is, if one can be opened: its name and whether it is a real
/// card (a software rasterizer such as lavapipe is not). Opening a device can panic inside
/// wgpu when there is no adapter; that is caught and reported as `None`.
#[must_use]
pub fn probe_wgpu() -> Option<(String, bool)> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let found = std::panic::catch_unwind(|| {
        let device = Device::wgpu(Default::default());
        device
            .as_dispatch()
            .identity()
            .map(|id| (id.name.clone(), id.physical.is_some()))
    });
    std::panic::set_hook(hook);
    found.ok().flatten()
}

impl BackendChoice {
    /// Resolve to a device; `wgpu` without any adapter is an error.
    pub fn resolve(self) -> Result<Backend> {
        let flex = || Backend {
            name: "flex",
            device_name: "CPU (flex)".into(),
            device: Device::flex(),
            deterministic: true,
        };
        Ok(match self {
            Self::Flex => flex(),
            #[allow(deprecated)] // ndarray stays selectable for comparison
            Self::Ndarray => Backend {
                name: "ndarray",
                device_name: "CPU (ndarray)".into(),
                device: Device::ndarray(),
                deterministic: true,
            },
            Self::Wgpu => match probe_wgpu() {
                Some((name, _)) => Backend {
                    name: "wgpu",
                    device_name: name,
                    device: Device::wgpu(Default::default()),
                    deterministic: false,
                },
                None => bail!(
                    "--backend wgpu: no wgpu adapter found (on Linux without a GPU, install Mesa's Vulkan driver: apt-get install mesa-vulkan-drivers)"
                ),
            },
            Self::Auto => match probe_wgpu() {
                Some((name, true)) => Backend {
                    name: "wgpu",
                    device_name: name,
                    device: Device::wgpu(Default::default()),
                    deterministic: false,
                },
                _ => flex(),
            },
        })
    }
}
