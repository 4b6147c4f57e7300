//! The three convolutions of a training step, one by one, on every convolution shape of the
//! CIFAR ResNet-18 and ResNet-50 (batch 64, 32×32 images): the forward pass, the input
//! gradient and the weight gradient, each the operation burn's autodiff calls on flex.

use anyhow::Result;
use burn::tensor::TensorData;
use burn::tensor::ops::ConvOptions;
use burn_backend::ops::{FloatTensorOps, ModuleOps};
use burn_flex::{Flex, FlexDevice, FlexTensor};
use lossbench_model::{Arch, ConvShape, ResNetConfig};

use crate::{Measurement, time};

/// Images per measurement: the training steps' smaller batch.
pub(crate) const BATCH: usize = 64;

/// Every distinct convolution of the CIFAR ResNet-18 and ResNet-50 on 32×32 images, in
/// forward order (ResNet-18's first); `quick` keeps the first and the last of ResNet-18's.
pub(crate) fn resnet_shapes(quick: bool) -> Vec<ConvShape> {
    let mut shapes: Vec<ConvShape> = Vec::new();
    for arch in [Arch::ResNet18, Arch::ResNet50] {
        for s in ResNetConfig::new(arch).conv_shapes(32) {
            if !shapes.contains(&s) {
                shapes.push(s);
            }
        }
    }
    if quick {
        let resnet18 = ResNetConfig::new(Arch::ResNet18).conv_shapes(32);
        let last_3x3 = resnet18.iter().rev().find(|s| s.kernel == 3).copied();
        shapes.retain(|s| Some(*s) == last_3x3 || *s == resnet18[1]);
    }
    shapes
}

/// How a shape is named in the table and in the PyTorch side's output (bench.py builds the
/// same string from the same numbers).
pub(crate) fn label(s: &ConvShape) -> String {
    format!(
        "{k}x{k}/{stride}, batch {BATCH}, {c_in}->{c_out} channels, {side}x{side}",
        k = s.kernel,
        stride = s.stride,
        c_in = s.c_in,
        c_out = s.c_out,
        side = s.input_side
    )
}

/// The shapes as bench.py reads them: `c_in,c_out,kernel,stride,side` joined by `;`.
pub(crate) fn argument(shapes: &[ConvShape]) -> String {
    shapes
        .iter()
        .map(|s| {
            format!(
                "{},{},{},{},{}",
                s.c_in, s.c_out, s.kernel, s.stride, s.input_side
            )
        })
        .collect::<Vec<_>>()
        .join(";")
}

fn random(shape: [usize; 4], seed: u64) -> FlexTensor {
    let mut s = lossbench_rng::Stream::new(seed, lossbench_rng::Purpose::Synthetic, 7);
    let data = TensorData::new(s.normal_vec(shape.iter().product(), 1.0), shape);
    Flex::float_from_data(data, &FlexDevice)
}

/// Measures the three passes of every shape on flex.
pub(crate) fn convolutions(
    quick: bool,
    out: &mut Vec<Measurement>,
    log: &dyn Fn(&str),
) -> Result<()> {
    for s in resnet_shapes(quick) {
        let (side, out_side) = (s.input_side, s.output_side());
        let x = random([BATCH, s.c_in, side, side], 1);
        let w = random([s.c_out, s.c_in, s.kernel, s.kernel], 2);
        let g = random([BATCH, s.c_out, out_side, out_side], 3);
        let options = ConvOptions::new([s.stride; 2], [s.padding(); 2], [1, 1], 1);
        // 2 FLOPs per multiply-add; the same count for all three passes.
        let flops = 2.0 * (s.macs() * BATCH as u64) as f64;
        type Pass<'a> = Box<dyn Fn() -> FlexTensor + 'a>;
        let passes: [(&str, Pass); 3] = [
            (
                "forward",
                Box::new(|| Flex::conv2d(x.clone(), w.clone(), None, options.clone())),
            ),
            (
                "input grad",
                Box::new(|| {
                    Flex::conv2d_x_backward(x.clone(), w.clone(), g.clone(), options.clone())
                }),
            ),
            (
                "weight grad",
                Box::new(|| {
                    Flex::conv2d_weight_backward(x.clone(), w.clone(), g.clone(), options.clone())
                }),
            ),
        ];
        for (name, pass) in passes {
            let (seconds, repeats) = time(1, if quick { 2 } else { 5 }, || {
                std::hint::black_box(pass());
            });
            let m = Measurement {
                group: "conv".into(),
                name: name.into(),
                shape: label(&s),
                backend: "flex".into(),
                median_seconds: seconds,
                repeats,
                per_second: None,
                peak_rss_mib: None,
                flops: Some(flops),
            };
            log(&format!(
                "conv {:<12} {:<44} {:>8.2} ms {:>6.0} GFLOP/s",
                m.name,
                m.shape,
                1e3 * seconds,
                flops / seconds / 1e9
            ));
            out.push(m);
        }
    }
    Ok(())
}
