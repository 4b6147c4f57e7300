use cudarc::driver::sys::CUDA_VERSION;

fn main() {
    // lossbench: without this line cargo reruns the script (and rebuilds this crate and all
    // of cubecl and burn above it) whenever any file of the package changes, LOSSBENCH.md
    // included.
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(cuda_12050)");
    println!("cargo::rustc-check-cfg=cfg(cuda_12080)");

    if CUDA_VERSION >= 12050 {
        println!("cargo:rustc-cfg=cuda_12050");
    }
    if CUDA_VERSION >= 12080 {
        println!("cargo:rustc-cfg=cuda_12080");
    }
}
