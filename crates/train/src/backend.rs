//! Choosing where tensors live: `auto`, `cuda`, `wgpu` or `flex`, which device of
//! it, in which float precision; and listing what this machine has (`lossbench devices`).

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use burn::prelude::*;
use burn::tensor::{DeviceType, FloatDType};

/// A backend requested on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// CUDA when the driver loads and has a device, else a real GPU through wgpu, else flex.
    #[default]
    Auto,
    /// NVIDIA GPUs through the CUDA driver and NVRTC (loaded at run time).
    Cuda,
    /// wgpu (Vulkan on Linux): a GPU, or a software adapter such as lavapipe.
    Wgpu,
    /// burn's pure-Rust CPU backend.
    Flex,
}

/// Every name `--backend` accepts, for clap and for error messages.
pub const BACKEND_NAMES: [&str; 4] = ["auto", "cuda", "wgpu", "flex"];

impl FromStr for BackendChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Self::Auto,
            "cuda" => Self::Cuda,
            "wgpu" => Self::Wgpu,
            "flex" => Self::Flex,
            // Built no more: burn deprecated it, flex is ~30× faster, and it was a fifth of the
            // build (702 of 6,557 crate-seconds).
            "ndarray" => bail!(
                "the ndarray backend is no longer built (burn deprecated it; flex is the CPU backend, about 30× faster): choose {}",
                BACKEND_NAMES.join(", ")
            ),
            other => bail!(
                "unknown backend `{other}` (choose {})",
                BACKEND_NAMES.join(", ")
            ),
        })
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Cuda => "cuda",
            Self::Wgpu => "wgpu",
            Self::Flex => "flex",
        })
    }
}

/// The float type of a run's tensors (`[training] precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "f32" => Self::F32,
            "bf16" => Self::Bf16,
            "f16" => Self::F16,
            other => bail!("training.precision = {other:?} is invalid (choose f32, bf16 or f16)"),
        })
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        })
    }
}

impl Precision {
    fn dtype(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::Bf16 => FloatDType::BF16,
            Self::F16 => FloatDType::F16,
        }
    }
}

/// A requested backend or device that this machine does not have. The CLI exits with code 2
/// on it (a usage problem, not a failed run).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// A resolved backend: the device and how to describe it in `run.json`.
#[derive(Debug, Clone)]
pub struct Backend {
    pub name: &'static str,
    pub device_name: String,
    pub device: Device,
    /// Which device of the backend (`--device`).
    pub index: usize,
    /// The host's CPU or a GPU (real or software).
    pub kind: DeviceKind,
}

/// Where a backend computes. Each property that depends on it has its own method on
/// [`Backend`], so a reader sees which one a decision rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// flex: the host's CPU, synchronous (and bit-exact from run to run).
    Cpu,
    /// cuda or wgpu: a queue that runs ahead of the host, reductions in a scheduling order.
    Gpu,
}

/// Training steps between two read-backs of the loss and accuracy on a GPU: each read
/// drains the device's queue, so reading every step would keep the GPU waiting for the host.
const GPU_READ_BACK_EVERY: usize = 25;

impl Backend {
    /// The device with automatic differentiation, on which a run trains.
    #[must_use]
    pub fn training_device(&self) -> Device {
        self.device.clone().autodiff()
    }

    /// Read the training loss and accuracy back every this many steps: every step on a CPU,
    /// where reading costs nothing; every [`GPU_READ_BACK_EVERY`] on a GPU.
    #[must_use]
    pub fn read_back_every(&self) -> usize {
        match self.kind {
            DeviceKind::Cpu => 1,
            DeviceKind::Gpu => GPU_READ_BACK_EVERY,
        }
    }

    /// On a CPU backend, the x86-64 level its kernels run at here ([`crate::cpu`]): a run
    /// resumed at another level would mix two summation orders.
    #[must_use]
    pub fn cpu_kernels(&self) -> Option<&'static str> {
        (self.kind == DeviceKind::Cpu).then(crate::cpu::kernel_level)
    }

    /// Whether the first steps are slower than the rest (a GPU compiles and tunes its
    /// kernels then, and runs ahead of the host): a benchmark warms up longer.
    #[must_use]
    pub fn warms_up(&self) -> bool {
        self.kind == DeviceKind::Gpu
    }
}

/// Run `f`, turning a panic inside it (wgpu without an adapter, a driver library that
/// cannot be loaded) into its message.
fn quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(f);
    std::panic::set_hook(hook);
    outcome.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
            .unwrap_or_else(|| "panicked".to_string())
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    })
}

/// One device this machine offers.
#[derive(Debug, Clone)]
pub struct Found {
    pub backend: &'static str,
    pub index: usize,
    pub name: String,
    /// A real card (not a CPU or a software rasterizer such as lavapipe).
    pub gpu: bool,
    pub device: Device,
}

/// Why this binary has no CUDA backend, if it was built without it.
#[cfg(not(feature = "cuda"))]
const NO_CUDA: &str = "this lossbench was built without CUDA (its `cuda` feature); rebuild with `--features lossbench-cli/cuda`";

/// NVRTC compiles every CUDA kernel when it is first used; cudarc loads it lazily and panics
/// then, mid-run. Compiling an empty kernel up front turns that into one error naming it.
#[cfg(feature = "cuda")]
fn nvrtc_works() -> Result<(), String> {
    let compiled =
        quietly(|| cudarc::nvrtc::compile_ptx("extern \"C\" __global__ void lossbench_probe() {}"));
    match compiled {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!(
            "{GPU_WITHOUT_NVRTC} cannot compile a CUDA kernel: {e}"
        )),
        Err(_) => Err(NO_NVRTC.to_string()),
    }
}

/// How the refusal below starts (what `auto` tells apart from "no CUDA device").
const GPU_WITHOUT_NVRTC: &str = "the NVIDIA driver sees a GPU, but NVRTC";

/// What a machine with the NVIDIA driver but no NVRTC is told.
#[cfg(feature = "cuda")]
const NO_NVRTC: &str = "the NVIDIA driver sees a GPU, but NVRTC (libnvrtc.so.12, which compiles the CUDA kernels at run time) cannot be loaded: install the CUDA toolkit's NVRTC or `pip install nvidia-cuda-nvrtc-cu12` and put the folder holding libnvrtc.so.12 on LD_LIBRARY_PATH";

/// The devices the backend enumerates (`cuda` or `wgpu`), opened to read their identity.
fn enumerate(backend: &'static str) -> Result<Vec<Device>, String> {
    let kind = match backend {
        #[cfg(feature = "cuda")]
        "cuda" => DeviceType::Cuda,
        #[cfg(not(feature = "cuda"))]
        "cuda" => return Err(NO_CUDA.to_string()),
        _ => DeviceType::Wgpu,
    };
    quietly(|| Device::enumerate(kind).to_vec())
}

/// The devices of one GPU backend, or why it has none.
fn gpu_devices(backend: &'static str) -> Result<Vec<Found>, String> {
    let devices = enumerate(backend)?;
    let devices = quietly(|| {
        devices
            .iter()
            .map(|d| {
                let identity = d.identity();
                (
                    d.clone(),
                    identity.as_ref().map(|i| i.name.clone()),
                    identity.is_some_and(|i| i.physical.is_some()),
                )
            })
            .collect::<Vec<_>>()
    })?;
    #[cfg(feature = "cuda")]
    if backend == "cuda" && !devices.is_empty() {
        nvrtc_works()?;
    }
    if devices.is_empty() {
        return Err(if backend == "cuda" {
            "no CUDA device: the NVIDIA driver (libcuda.so) is not installed here or sees no GPU"
                .into()
        } else {
            "no wgpu adapter (on Linux without a GPU, install Mesa's Vulkan driver: apt-get install mesa-vulkan-drivers)".into()
        });
    }
    Ok(devices
        .into_iter()
        .enumerate()
        .map(|(index, (device, name, physical))| Found {
            backend,
            index,
            name: name.unwrap_or_else(|| format!("{backend} device {index}")),
            // CUDA devices are always cards; a wgpu adapter without a physical card behind
            // it is a software one.
            gpu: backend == "cuda" || physical,
            device,
        })
        .collect())
}

/// What `lossbench devices` prints: every device per backend, or why a backend has none.
#[derive(Debug)]
pub struct Listing {
    pub found: Vec<Found>,
    pub unavailable: Vec<(&'static str, String)>,
}

/// List every backend's devices. Opens each GPU device once.
#[must_use]
pub fn list_devices() -> Listing {
    let mut listing = Listing {
        found: Vec::new(),
        unavailable: Vec::new(),
    };
    for backend in ["cuda", "wgpu"] {
        match gpu_devices(backend) {
            Ok(found) => listing.found.extend(found),
            Err(why) => listing.unavailable.push((backend, why)),
        }
    }
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    listing.found.push(Found {
        backend: "flex",
        index: 0,
        name: format!("CPU, {threads} threads"),
        gpu: false,
        device: Device::flex(),
    });
    listing
}

impl fmt::Display for Listing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<8} {:>6}  {:<9} name", "backend", "device", "kind")?;
        for d in &self.found {
            let kind = match (d.gpu, d.backend) {
                (true, _) => "GPU",
                (false, "flex") => "CPU",
                (false, _) => "software",
            };
            writeln!(f, "{:<8} {:>6}  {:<9} {}", d.backend, d.index, kind, d.name)?;
        }
        for (backend, why) in &self.unavailable {
            writeln!(f, "{backend:<8} {:>6}  {:<9} {why}", "-", "none")?;
        }
        Ok(())
    }
}

/// What wgpu's default adapter is, if one can be opened: its name and whether it is a real
/// card (a software rasterizer such as lavapipe is not). Opening a device can panic inside
/// wgpu when there is no adapter; that is caught and reported as `None`.
#[must_use]
pub fn probe_wgpu() -> Option<(String, bool)> {
    gpu_devices("wgpu")
        .ok()
        .and_then(|d| d.into_iter().next())
        .map(|d| (d.name, d.gpu))
}

fn pick(found: Vec<Found>, index: usize, backend: &str) -> Result<Found> {
    let count = found.len();
    found.into_iter().nth(index).ok_or_else(|| {
        Unavailable(format!(
            "--device {index}: {backend} has {count} device{} (0{})",
            if count == 1 { "" } else { "s" },
            if count > 1 {
                format!("–{}", count - 1)
            } else {
                String::new()
            }
        ))
        .into()
    })
}

impl BackendChoice {
    /// Resolve to device `index` of this backend (`auto`: of the backend it picks), its
    /// float type set to `precision`. A backend or device this machine lacks, or a precision
    /// the device cannot compute in, is an [`Unavailable`] error.
    pub fn resolve(self, index: usize, precision: Precision) -> Result<Backend> {
        let cpu = |name: &'static str, device: Device| -> Result<Backend> {
            if index != 0 {
                return Err(
                    Unavailable(format!("--device {index}: {name} has one device (0)")).into(),
                );
            }
            Ok(Backend {
                name,
                device_name: format!("CPU ({name})"),
                device,
                index: 0,
                kind: DeviceKind::Cpu,
            })
        };
        let gpu = |found: Found| Backend {
            name: found.backend,
            device_name: found.name,
            device: found.device,
            index: found.index,
            kind: DeviceKind::Gpu,
        };
        let backend = match self {
            Self::Flex => {
                crate::cpu::check_kernels_switch().map_err(anyhow::Error::msg)?;
                cpu("flex", Device::flex())?
            }
            Self::Cuda | Self::Wgpu => {
                let name = if self == Self::Cuda { "cuda" } else { "wgpu" };
                let found = gpu_devices(name)
                    .map_err(|why| Unavailable(format!("--backend {name}: {why}")))?;
                gpu(pick(found, index, name)?)
            }
            Self::Auto => match gpu_devices("cuda") {
                Ok(found) => gpu(pick(found, index, "cuda")?),
                // An NVIDIA GPU that cannot compile kernels is a setup to fix, not a reason to
                // train on the CPU for days without a word.
                Err(why) if why.starts_with(GPU_WITHOUT_NVRTC) => {
                    return Err(Unavailable(format!(
                        "--backend auto: {why} (or choose --backend wgpu or flex)"
                    ))
                    .into());
                }
                Err(_) => {
                    let cards: Vec<Found> = gpu_devices("wgpu")
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|d| d.gpu)
                        .collect();
                    if cards.is_empty() {
                        cpu("flex", Device::flex())?
                    } else {
                        gpu(pick(cards, index, "wgpu")?)
                    }
                }
            },
        };
        set_precision(backend, precision)
    }
}

/// Make `precision` the device's default float type (before any tensor exists on it).
fn set_precision(mut backend: Backend, precision: Precision) -> Result<Backend> {
    let dtype = precision.dtype();
    if precision == Precision::F32 {
        return Ok(backend);
    }
    if !backend.device.supports_dtype(dtype) {
        return Err(Unavailable(format!(
            "training.precision = \"{precision}\": {} ({}) cannot compute in {precision}; use f32 or another backend",
            backend.name, backend.device_name
        ))
        .into());
    }
    backend.device.configure(dtype).map_err(|e| {
        anyhow::anyhow!(
            "training.precision = \"{precision}\": cannot set it on {}: {e:?}",
            backend.name
        )
    })?;
    backend.device_name = format!("{}, {precision}", backend.device_name);
    Ok(backend)
}

/// Where cubecl keeps its autotune results between processes: `$LOSSBENCH_KERNEL_CACHE`,
/// else `$XDG_CACHE_HOME/lossbench/cubecl`, else `~/.cache/lossbench/cubecl`. One folder for
/// every run, so a resumed run or the next seed does not tune the same kernels again.
#[must_use]
pub fn kernel_cache_dir() -> std::path::PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(dir) = var("LOSSBENCH_KERNEL_CACHE") {
        return dir.into();
    }
    var("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| var("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("lossbench")
        .join("cubecl")
}

/// Configure the GPU runtimes once, before any device is opened: cubecl's settings from a
/// `cubecl.toml` and `CUBECL_*` variables as usual, with the autotune cache in
/// [`kernel_cache_dir`] unless a `cubecl.toml` names another folder (used once burn's
/// `autotune` feature is on; it is off for now, see the README).
pub fn configure_gpu_runtime() {
    use burn::cubecl::config::cache::CacheConfig;
    use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    if matches!(config.environment.path, CacheConfig::Target) {
        config.environment.path = CacheConfig::Directory(kernel_cache_dir());
    }
    // Already set (a second call, or a device opened earlier): keep what is in force.
    let _ = CubeClRuntimeConfig::try_set(config);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "cuda")]
    #[test]
    fn a_missing_nvrtc_is_one_message_not_a_panic() {
        // `auto` tells this refusal apart from "no CUDA device" by its start.
        assert!(NO_NVRTC.starts_with(GPU_WITHOUT_NVRTC));
        // cudarc panics when it cannot load libnvrtc; here that becomes the message (on a
        // machine with NVRTC the empty kernel compiles).
        match nvrtc_works() {
            Ok(()) => {}
            Err(why) => assert!(why.starts_with(GPU_WITHOUT_NVRTC), "{why}"),
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_errors() {
        for name in BACKEND_NAMES {
            assert_eq!(
                name.parse::<BackendChoice>().expect("valid").to_string(),
                name
            );
        }
        let err = "tpu".parse::<BackendChoice>().expect_err("invalid");
        assert!(
            err.to_string().contains("choose auto, cuda, wgpu, flex"),
            "{err}"
        );
        let err = "ndarray".parse::<BackendChoice>().expect_err("not built");
        assert!(
            err.to_string().contains("no longer built") && err.to_string().contains("flex"),
            "{err}"
        );
        for p in ["f32", "bf16", "f16"] {
            assert_eq!(p.parse::<Precision>().expect("valid").to_string(), p);
        }
        assert!("fp8".parse::<Precision>().is_err());
    }

    #[test]
    fn a_cpu_backend_has_only_device_zero() {
        let err = BackendChoice::Flex
            .resolve(1, Precision::F32)
            .expect_err("flex has one device");
        assert!(err.downcast_ref::<Unavailable>().is_some(), "{err}");
        assert_eq!(err.to_string(), "--device 1: flex has one device (0)");
    }

    #[test]
    fn listing_always_has_the_cpu_backends() {
        let listing = list_devices();
        assert!(listing.found.iter().any(|d| d.backend == "flex"));
        // CUDA is either found or explained; never silently missing.
        assert!(
            listing.found.iter().any(|d| d.backend == "cuda")
                || listing.unavailable.iter().any(|(b, _)| *b == "cuda")
        );
        let text = listing.to_string();
        assert!(text.starts_with("backend"), "{text}");
    }
}
