//! The CIFAR ResNet family used as the shared backbone: torchvision's ResNet v1.5
//! (stride on the 3×3 convolution of a bottleneck) adapted to 32×32 inputs as in the common
//! CIFAR recipes — a 3×3 stride-1 stem and no max-pool — ending in global average pooling.
//! There is no classifier: the loss head owns the class weights.
//!
//! Weights are drawn from lossbench's own counter-based stream (Kaiming normal, fan-out, as
//! torchvision), so a seed gives the same initial backbone on every backend.

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d, Relu,
};
use burn::prelude::*;
use lossbench_rng::{Purpose, Stream};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Basic blocks per stage of ResNet-18.
const RESNET18_BLOCKS: [usize; 4] = [2, 2, 2, 2];
/// Basic blocks per stage of ResNet-34.
const RESNET34_BLOCKS: [usize; 4] = [3, 4, 6, 3];
/// Bottleneck blocks per stage of ResNet-50.
const RESNET50_BLOCKS: [usize; 4] = [3, 4, 6, 3];
/// Bottleneck blocks per stage of ResNet-101.
const RESNET101_BLOCKS: [usize; 4] = [3, 4, 23, 3];
/// Output channels of a bottleneck relative to its inner width.
const BOTTLENECK_EXPANSION: usize = 4;
/// Inner channels of the four stages at width 1.
const STAGE_CHANNELS: [usize; 4] = [64, 128, 256, 512];

/// A member of the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arch {
    #[serde(rename = "resnet18")]
    ResNet18,
    #[serde(rename = "resnet34")]
    ResNet34,
    #[serde(rename = "resnet50")]
    ResNet50,
    #[serde(rename = "resnet101")]
    ResNet101,
}

impl Arch {
    fn blocks(self) -> ([usize; 4], bool) {
        match self {
            Self::ResNet18 => (RESNET18_BLOCKS, false),
            Self::ResNet34 => (RESNET34_BLOCKS, false),
            Self::ResNet50 => (RESNET50_BLOCKS, true),
            Self::ResNet101 => (RESNET101_BLOCKS, true),
        }
    }

    /// The name used in experiment files.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::ResNet18 => "resnet18",
            Self::ResNet34 => "resnet34",
            Self::ResNet50 => "resnet50",
            Self::ResNet101 => "resnet101",
        }
    }
}

/// Invalid backbone settings.
#[derive(Debug, Error, PartialEq)]
pub enum ModelError {
    #[error(
        "model.width = {0} is invalid: must be in (0, 4] and leave at least 1 channel in the stem"
    )]
    Width(f64),
}

/// One convolution of the backbone: `c_in → c_out`, a square `kernel` with padding
/// `kernel / 2`, on `input_side × input_side` planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvShape {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub input_side: usize,
}

impl ConvShape {
    #[must_use]
    pub fn padding(&self) -> usize {
        self.kernel / 2
    }

    #[must_use]
    pub fn output_side(&self) -> usize {
        (self.input_side + 2 * self.padding() - self.kernel) / self.stride + 1
    }

    /// Multiply-adds of the forward convolution of one image.
    #[must_use]
    pub fn macs(&self) -> u64 {
        (self.c_in * self.c_out * self.kernel * self.kernel * self.output_side().pow(2)) as u64
    }
}

/// One residual block: `in_channels → out` through `inner` channels, `stride` on the
/// convolution that carries it (the first 3×3).
struct BlockPlan {
    in_channels: usize,
    inner: usize,
    out: usize,
    stride: usize,
    bottleneck: bool,
}

impl BlockPlan {
    /// A 1×1 projection where the identity cannot be added (other side or channels).
    fn has_shortcut(&self) -> bool {
        self.stride != 1 || self.in_channels != self.out
    }
}

/// Backbone configuration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    pub arch: Arch,
    /// Channel multiplier (1 = the standard widths; 1/8 for fast tests).
    #[serde(default = "default_width")]
    pub width: f64,
}

fn default_width() -> f64 {
    1.0
}

impl ResNetConfig {
    /// A standard-width configuration.
    #[must_use]
    pub fn new(arch: Arch) -> Self {
        Self { arch, width: 1.0 }
    }

    /// The same architecture at another width.
    #[must_use]
    pub fn with_width(self, width: f64) -> Self {
        Self { width, ..self }
    }

    fn channels(&self, base: usize) -> usize {
        ((base as f64 * self.width).round() as usize).max(1)
    }

    /// Check the width.
    pub fn validate(&self) -> Result<(), ModelError> {
        if !(self.width > 0.0 && self.width <= 4.0) || (64.0 * self.width).round() < 1.0 {
            return Err(ModelError::Width(self.width));
        }
        Ok(())
    }

    /// Length of the embedding `forward_features` returns (2048 for ResNet-50).
    #[must_use]
    pub fn feature_dim(&self) -> usize {
        let (_, bottleneck) = self.arch.blocks();
        self.channels(STAGE_CHANNELS[3]) * if bottleneck { BOTTLENECK_EXPANSION } else { 1 }
    }

    /// Multiply-adds of one forward pass of the backbone's convolutions on one `side × side`
    /// image (stem, every block and shortcut; batch norm, ReLU and pooling are not counted:
    /// they are a few per cent). A training step costs about three times this per image
    /// (forward, input gradient, weight gradient).
    #[must_use]
    pub fn forward_macs(&self, side: usize) -> u64 {
        self.conv_shapes(side).iter().map(ConvShape::macs).sum()
    }

    /// Every convolution of the backbone on a `side × side` image, in the order of the
    /// forward pass (a block's shortcut after its main path): what the benchmarks and the
    /// kernel tests run.
    #[must_use]
    pub fn conv_shapes(&self, side: usize) -> Vec<ConvShape> {
        let conv = |c_in, c_out, kernel, stride, input_side| ConvShape {
            c_in,
            c_out,
            kernel,
            stride,
            input_side,
        };
        let mut shapes = vec![conv(3, self.channels(64), 3, 1, side)];
        let mut side = side;
        for b in self.block_plans() {
            let out_side = side.div_ceil(b.stride);
            if b.bottleneck {
                shapes.push(conv(b.in_channels, b.inner, 1, 1, side));
                shapes.push(conv(b.inner, b.inner, 3, b.stride, side));
                shapes.push(conv(b.inner, b.out, 1, 1, out_side));
            } else {
                shapes.push(conv(b.in_channels, b.inner, 3, b.stride, side));
                shapes.push(conv(b.inner, b.inner, 3, 1, out_side));
            }
            if b.has_shortcut() {
                shapes.push(conv(b.in_channels, b.out, 1, b.stride, side));
            }
            side = out_side;
        }
        shapes
    }

    /// The blocks, stage by stage: the first block of every stage but the first halves the
    /// side.
    fn block_plans(&self) -> Vec<BlockPlan> {
        let (counts, bottleneck) = self.arch.blocks();
        let mut plans = Vec::new();
        let mut in_channels = self.channels(64);
        for (stage, (&count, &base)) in counts.iter().zip(&STAGE_CHANNELS).enumerate() {
            let inner = self.channels(base);
            let out = if bottleneck {
                inner * BOTTLENECK_EXPANSION
            } else {
                inner
            };
            for i in 0..count {
                let stride = if i == 0 && stage > 0 { 2 } else { 1 };
                plans.push(BlockPlan {
                    in_channels,
                    inner,
                    out,
                    stride,
                    bottleneck,
                });
                in_channels = out;
            }
        }
        plans
    }

    /// Build the backbone with weights drawn from `seed`.
    pub fn init(&self, seed: u64, device: &Device) -> Result<ResNet, ModelError> {
        self.validate()?;
        let mut init = WeightInit {
            seed,
            next_layer: 0,
            device: device.clone(),
        };
        let stem = init.conv_bn(3, self.channels(64), 3, 1);
        let blocks = self
            .block_plans()
            .into_iter()
            .map(|b| {
                let shortcut = b.has_shortcut();
                if b.bottleneck {
                    Block::Bottleneck(Bottleneck {
                        reduce: init.conv_bn(b.in_channels, b.inner, 1, 1),
                        conv: init.conv_bn(b.inner, b.inner, 3, b.stride),
                        expand: init.conv_bn(b.inner, b.out, 1, 1),
                        shortcut: shortcut.then(|| init.conv_bn(b.in_channels, b.out, 1, b.stride)),
                        relu: Relu::new(),
                    })
                } else {
                    Block::Basic(BasicBlock {
                        conv1: init.conv_bn(b.in_channels, b.inner, 3, b.stride),
                        conv2: init.conv_bn(b.inner, b.inner, 3, 1),
                        shortcut: shortcut
                            .then(|| init.conv_bn(b.in_channels, b.inner, 1, b.stride)),
                        relu: Relu::new(),
                    })
                }
            })
            .collect();
        Ok(ResNet {
            stem,
            blocks,
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            relu: Relu::new(),
        })
    }
}

/// InsightFace's embedding neck: BN → linear → BN, no ReLU, so a loss head sees a linear,
/// centred embedding instead of post-ReLU (non-negative) pooled features.
#[derive(Module, Debug)]
pub struct Neck {
    input_bn: BatchNorm,
    linear: Linear,
    output_bn: BatchNorm,
}

impl Neck {
    /// `input → dim`; the linear layer's weight and bias uniform in ±1/√input as PyTorch's
    /// `nn.Linear`, drawn from the seed's own stream.
    #[must_use]
    pub fn init(input: usize, dim: usize, seed: u64, device: &Device) -> Self {
        let bound = 1.0 / (input as f64).sqrt();
        let mut stream = Stream::new(seed, Purpose::NeckInit, 0);
        let mut uniform = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| ((2.0 * stream.next_f64() - 1.0) * bound) as f32)
                .collect()
        };
        let mut linear = LinearConfig::new(input, dim)
            .with_initializer(Initializer::Zeros)
            .init(device);
        // burn stores the weight as [input, output].
        linear.weight =
            Param::from_data(TensorData::new(uniform(input * dim), [input, dim]), device);
        linear.bias = Some(Param::from_data(
            TensorData::new(uniform(dim), [dim]),
            device,
        ));
        Self {
            input_bn: BatchNormConfig::new(input).init(device),
            linear,
            output_bn: BatchNormConfig::new(dim).init(device),
        }
    }

    /// `[batch, input]` → `[batch, dim]`.
    pub fn forward(&self, features: Tensor<2>) -> Tensor<2> {
        self.output_bn
            .forward(self.linear.forward(self.input_bn.forward(features)))
    }
}

/// Draws each layer's weights from its own stream, keyed by the seed and layer order.
struct WeightInit {
    seed: u64,
    next_layer: u64,
    device: Device,
}

impl WeightInit {
    /// Convolution (no bias: a batch norm follows) with Kaiming-normal fan-out weights, and
    /// a batch norm with γ = 1, β = 0.
    fn conv_bn(&mut self, cin: usize, cout: usize, kernel: usize, stride: usize) -> ConvBn {
        let mut conv = Conv2dConfig::new([cin, cout], [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(
                kernel / 2,
                kernel / 2,
                kernel / 2,
                kernel / 2,
            ))
            .with_bias(false)
            .with_initializer(Initializer::Zeros)
            .init(&self.device);
        let std = (2.0 / (cout * kernel * kernel) as f64).sqrt();
        let values = Stream::new(self.seed, Purpose::BackboneInit, self.next_layer)
            .normal_vec(cout * cin * kernel * kernel, std);
        self.next_layer += 1;
        conv.weight = Param::from_data(
            TensorData::new(values, [cout, cin, kernel, kernel]),
            &self.device,
        );
        ConvBn {
            conv,
            bn: BatchNormConfig::new(cout).init(&self.device),
        }
    }
}

/// Convolution followed by batch normalisation.
#[derive(Module, Debug)]
pub struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBn {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.bn.forward(self.conv.forward(x))
    }
}

/// Two 3×3 convolutions (ResNet-18/34).
#[derive(Module, Debug)]
pub struct BasicBlock {
    conv1: ConvBn,
    conv2: ConvBn,
    shortcut: Option<ConvBn>,
    relu: Relu,
}

/// 1×1 reduce, 3×3 (carrying the stride, v1.5), 1×1 expand (ResNet-50/101).
#[derive(Module, Debug)]
pub struct Bottleneck {
    reduce: ConvBn,
    conv: ConvBn,
    expand: ConvBn,
    shortcut: Option<ConvBn>,
    relu: Relu,
}

/// A residual block of either kind.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // a few dozen blocks per model: boxing buys nothing
pub enum Block {
    Basic(BasicBlock),
    Bottleneck(Bottleneck),
}

impl Block {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Self::Basic(b) => {
                let identity = b
                    .shortcut
                    .as_ref()
                    .map_or_else(|| x.clone(), |s| s.forward(x.clone()));
                let y = b.relu.forward(b.conv1.forward(x));
                b.relu.forward(b.conv2.forward(y) + identity)
            }
            Self::Bottleneck(b) => {
                let identity = b
                    .shortcut
                    .as_ref()
                    .map_or_else(|| x.clone(), |s| s.forward(x.clone()));
                let y = b.relu.forward(b.reduce.forward(x));
                let y = b.relu.forward(b.conv.forward(y));
                b.relu.forward(b.expand.forward(y) + identity)
            }
        }
    }
}

/// A CIFAR ResNet without classifier.
#[derive(Module, Debug)]
pub struct ResNet {
    stem: ConvBn,
    blocks: Vec<Block>,
    pool: AdaptiveAvgPool2d,
    relu: Relu,
}

impl ResNet {
    /// The embedding of a batch of images: `[batch, 3, side, side]` → `[batch, feature_dim]`
    /// (any side ≥ 8; designed for CIFAR's 32).
    #[must_use]
    pub fn forward_features(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = self.relu.forward(self.stem.forward(images)); // [batch, 64w, side, side]
        for block in &self.blocks {
            x = block.forward(x);
        }
        let x = self.pool.forward(x); // [batch, C, 1, 1]
        let [batch, channels, _, _] = x.dims();
        x.reshape([batch, channels])
    }
}

/// Number of trainable parameters (convolution weights, batch-norm γ and β; the batch-norm
/// running statistics are buffers, as in PyTorch, and are not counted).
#[must_use]
pub fn trainable_params(model: &ResNet) -> usize {
    /// Counts float tensors except those inside a `running_*` field (batch-norm buffers).
    struct Count {
        path: Vec<String>,
        total: usize,
    }
    impl burn::module::ModuleVisitor for Count {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if !self.path.last().is_some_and(|n| n.starts_with("running_")) {
                self.total += param.shape().num_elements();
            }
        }
    }
    let mut count = Count {
        path: Vec::new(),
        total: 0,
    };
    model.visit(&mut count);
    count.total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_shapes_are_the_model_s_convolutions() {
        /// The shapes of the 4-D parameters (convolution weights), in visiting order.
        struct Kernels(Vec<[usize; 4]>);
        impl burn::module::ModuleVisitor for Kernels {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if D == 4 {
                    self.0.push(param.shape().dims());
                }
            }
        }
        let device = Device::flex();
        for (arch, count) in [
            (Arch::ResNet18, 1 + 8 * 2 + 3),
            (Arch::ResNet50, 1 + 16 * 3 + 4),
        ] {
            let config = ResNetConfig::new(arch).with_width(0.25);
            let mut kernels = Kernels(Vec::new());
            config.init(0, &device).expect("valid").visit(&mut kernels);
            let shapes = config.conv_shapes(32);
            assert_eq!(shapes.len(), count, "{arch:?}");
            let want: Vec<[usize; 4]> = shapes
                .iter()
                .map(|s| [s.c_out, s.c_in, s.kernel, s.kernel])
                .collect();
            assert_eq!(kernels.0, want, "{arch:?}");
            // The last stage runs on 4×4 planes, the stem on 32×32.
            assert_eq!((shapes[0].input_side, shapes[0].output_side()), (32, 32));
            assert_eq!(shapes.last().map(ConvShape::output_side), Some(4));
        }
    }

    #[test]
    fn forward_cost_matches_the_published_counts() {
        // kuangliu/pytorch-cifar's CIFAR ResNet-18 is quoted at 0.56 GMACs per 32×32 image,
        // its ResNet-50 at 1.30 GMACs (convolutions; the fc layer adds 0.005 M / 0.2 M).
        let r18 = ResNetConfig::new(Arch::ResNet18).forward_macs(32) as f64;
        assert!((r18 / 1e9 - 0.556).abs() < 0.005, "{r18}");
        let r50 = ResNetConfig::new(Arch::ResNet50).forward_macs(32) as f64;
        assert!((r50 / 1e9 - 1.30).abs() < 0.01, "{r50}");
        // By hand: the stem alone at width 1/64 (one channel): 3·1·9·32·32.
        let tiny = ResNetConfig::new(Arch::ResNet18).with_width(1.0 / 64.0);
        assert!(tiny.forward_macs(32) > 3 * 9 * 32 * 32);
        // Half the side, a quarter of the cost.
        let r18_16 = ResNetConfig::new(Arch::ResNet18).forward_macs(16) as f64;
        assert!((r18 / r18_16 - 4.0).abs() < 1e-9);
    }

    #[test]
    fn resnet50_matches_torchvision_parameter_count() {
        // torchvision resnet50: 25,557,032 parameters. Without fc (2048·1000 + 1000) and with
        // the 7×7 stem (64·3·49) replaced by a 3×3 one (64·3·9): 23,500,352.
        let device = Device::flex();
        let model = ResNetConfig::new(Arch::ResNet50)
            .init(0, &device)
            .expect("valid");
        assert_eq!(
            trainable_params(&model),
            25_557_032 - 2_049_000 - 9_408 + 1_728
        );
        assert_eq!(ResNetConfig::new(Arch::ResNet50).feature_dim(), 2048);
    }

    #[test]
    fn resnet18_matches_torchvision_parameter_count() {
        // torchvision resnet18: 11,689,512; minus fc (512·1000 + 1000), 7×7 → 3×3 stem.
        let model = ResNetConfig::new(Arch::ResNet18)
            .init(0, &Device::flex())
            .expect("valid");
        assert_eq!(
            trainable_params(&model),
            11_689_512 - 513_000 - 9_408 + 1_728
        );
    }

    #[test]
    fn small_width_forward_shapes() {
        let device = Device::flex();
        for arch in [Arch::ResNet18, Arch::ResNet50] {
            let config = ResNetConfig::new(arch).with_width(0.125);
            let model = config.init(1, &device).expect("valid");
            // Any side ≥ 8: global average pooling after the three stride-2 stages.
            for side in [32, 8, 20, 64] {
                let x = Tensor::<4>::zeros([2, 3, side, side], &device);
                assert_eq!(model.forward_features(x).dims(), [2, config.feature_dim()]);
            }
        }
        // The cost grows with the pixels: 64×64 costs four times 32×32.
        let r18 = ResNetConfig::new(Arch::ResNet18);
        assert_eq!(r18.forward_macs(64), 4 * r18.forward_macs(32));
    }

    #[test]
    fn same_seed_same_weights_other_seed_other_weights() {
        let device = Device::flex();
        let config = ResNetConfig::new(Arch::ResNet18).with_width(0.125);
        let weights = |seed| -> Vec<f32> {
            let m = config.init(seed, &device).expect("valid");
            m.stem
                .conv
                .weight
                .val()
                .into_data()
                .try_into_vec_as::<f32>()
                .expect("f32")
        };
        assert_eq!(weights(4), weights(4));
        assert_ne!(weights(4), weights(5));
    }

    #[test]
    fn invalid_width_is_an_error() {
        for w in [0.0, -1.0, 5.0, f64::NAN, 0.001] {
            let err = ResNetConfig::new(Arch::ResNet18)
                .with_width(w)
                .init(0, &Device::flex())
                .err();
            let msg = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.starts_with("model.width = "), "width {w}: {msg:?}");
        }
        assert!(
            ResNetConfig::new(Arch::ResNet18)
                .with_width(0.125)
                .validate()
                .is_ok()
        );
    }
}
