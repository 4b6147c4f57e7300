//! The network of a run: the CIFAR ResNet backbone, the optional embedding neck and the loss
//! head, initialised from the seed and stepped by SGD together.

use anyhow::Result;
use burn::prelude::*;
use lossbench_experiment::Experiment;
use lossbench_head::{DEFAULT_INIT_STD, HeadDims, ResolvedParams};
use lossbench_model::{Arch, Neck, ResNet, ResNetConfig};
use lossbench_registry::{AnyHead, init_head_std};

use crate::sgd::{SgdConfig, SgdState};

/// Backbone, optional embedding neck and loss head, trained together.
#[derive(Module, Debug)]
pub struct Net {
    pub backbone: ResNet,
    /// `[model] embedding`: BN → linear → BN between the pooled features and the head.
    pub neck: Option<Neck>,
    pub head: AnyHead,
}

/// The backbone configuration of an experiment.
pub fn backbone_config(experiment: &Experiment) -> Result<ResNetConfig> {
    let arch = match experiment.model.arch.as_str() {
        "resnet18" => Arch::ResNet18,
        "resnet34" => Arch::ResNet34,
        "resnet50" => Arch::ResNet50,
        "resnet101" => Arch::ResNet101,
        other => anyhow::bail!("model.arch = {other:?} is invalid"),
    };
    let config = ResNetConfig::new(arch).with_width(experiment.model.width);
    config.validate()?;
    Ok(config)
}

impl Net {
    /// The initial network of a run: the backbone from the seed alone (identical for every
    /// loss), the head from the seed and its own parameters.
    pub fn init(
        experiment: &Experiment,
        loss: &str,
        params: &ResolvedParams,
        num_classes: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let config = backbone_config(experiment)?;
        let backbone = config.init(seed, device)?;
        let neck = experiment
            .model
            .embedding
            .map(|e| Neck::init(config.feature_dim(), e.dim, seed, device));
        let dims = HeadDims {
            num_classes,
            feature_dim: experiment
                .model
                .embedding
                .map_or(config.feature_dim(), |e| e.dim),
        };
        let std = experiment
            .model
            .head_init
            .map_or(DEFAULT_INIT_STD, |h| h.std);
        let head = init_head_std(loss, params, dims, seed, std, device)?;
        Ok(Self {
            backbone,
            neck,
            head,
        })
    }

    /// One SGD step; the head's parameters at `lr × head_lr_scale`.
    #[must_use]
    pub fn sgd_step(
        self,
        sgd: &mut SgdState,
        grads: &burn::tensor::Gradients,
        lr: f64,
        head_lr_scale: f64,
        config: SgdConfig,
    ) -> Self {
        // The fields in declaration order, as `Module::map` visits them.
        let mut next = 0;
        let backbone = sgd.step_part(self.backbone, grads, lr, config, &mut next);
        let neck = self
            .neck
            .map(|n| sgd.step_part(n, grads, lr, config, &mut next));
        let head = sgd.step_part(self.head, grads, lr * head_lr_scale, config, &mut next);
        Self {
            backbone,
            neck,
            head,
        }
    }

    /// The embedding the head sees: `[batch, dim]`.
    pub fn features(&self, images: Tensor<4>) -> Tensor<2> {
        let pooled = self.backbone.forward_features(images);
        match &self.neck {
            Some(neck) => neck.forward(pooled),
            None => pooled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lossbench_head::Labels;

    fn experiment(model: &str) -> Experiment {
        let text = format!(
            r#"name = "x"
seeds = [0]
[data]
set = "cifar100"
dir = "d"
[model]
arch = "resnet18"
width = 0.0625
{model}
[training]
epochs = 1
batch_size = 4
lr = 0.1
schedule = {{ kind = "constant" }}
[[losses]]
name = "normface"
"#
        );
        Experiment::parse(&text, std::path::Path::new("x.toml")).expect("valid")
    }

    fn net(model: &str, device: &Device) -> Net {
        let e = experiment(model);
        let params =
            lossbench_registry::resolve_params("normface", &serde_json::Map::new()).expect("ok");
        Net::init(&e, "normface", &params, 5, 3, device).expect("net")
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().expect("f32")
    }

    fn std_of(v: &[f32]) -> f64 {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        (v.iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt()
    }

    fn images(device: &Device) -> Tensor<4> {
        let v: Vec<f32> = (0..6 * 3 * 32 * 32)
            .map(|i| ((i * 7919 % 255) as f32 / 127.0) - 1.0)
            .collect();
        Tensor::from_data(TensorData::new(v, [6, 3, 32, 32]), device)
    }

    #[test]
    fn head_init_sets_the_scale_of_the_class_weights() {
        let device = Device::flex();
        // 5 classes × 32 features: the sample std is within ~15 % of the true one.
        let default = std_of(&values(net("", &device).head.weight()));
        assert!((default / 0.01 - 1.0).abs() < 0.15, "{default}");
        let wide = std_of(&values(
            net("head_init = { std = 1.0 }", &device).head.weight(),
        ));
        assert!((wide - 1.0).abs() < 0.15, "{wide}");
        // The same draws scaled: the backbone and the direction of each class are unchanged.
        let a = values(net("", &device).head.weight());
        let b = values(net("head_init = { std = 1.0 }", &device).head.weight());
        for (x, y) in a.iter().zip(&b) {
            assert!((x * 100.0 - y).abs() <= 1e-5 * y.abs().max(1.0), "{x} {y}");
        }
    }

    #[test]
    fn the_neck_gives_the_head_a_centred_linear_embedding() {
        let device = Device::flex().autodiff();
        let plain = net("", &device);
        let pooled = values(plain.features(images(&device)));
        assert!(
            pooled.iter().all(|&v| v >= 0.0),
            "pooled features are post-ReLU"
        );
        let necked = net("embedding = { dim = 16 }", &device);
        assert_eq!(necked.head.weight().dims(), [5, 16]);
        let embedding = necked.features(images(&device));
        assert_eq!(embedding.dims(), [6, 16]);
        // Training-mode batch norm: every column has mean 0 over the batch.
        let means = values(embedding.clone().mean_dim(0));
        assert!(means.iter().all(|m| m.abs() < 1e-4), "{means:?}");
        assert!(values(embedding).iter().any(|&v| v < 0.0));
    }

    #[test]
    fn the_head_learns_at_its_own_rate() {
        let device = Device::flex().autodiff();
        let config = SgdConfig {
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        };
        let step = |scale: f64| {
            let net = net("embedding = { dim = 8 }", &device);
            let labels = Labels::new(&[0, 1, 2, 3, 4, 0], 5, &device).expect("labels");
            let loss = net.head.loss(net.features(images(&device)), &labels, 0);
            let grads = loss.backward();
            let before = (values(net.head.weight()), first_backbone_weight(&net));
            let after = net.sgd_step(&mut SgdState::default(), &grads, 0.1, scale, config);
            let head: Vec<f32> = values(after.head.weight())
                .iter()
                .zip(&before.0)
                .map(|(a, b)| a - b)
                .collect();
            let body: Vec<f32> = first_backbone_weight(&after)
                .iter()
                .zip(&before.1)
                .map(|(a, b)| a - b)
                .collect();
            (head, body)
        };
        let (head1, body1) = step(1.0);
        let (head10, body10) = step(10.0);
        assert_eq!(
            body1, body10,
            "the backbone's step does not depend on the head's rate"
        );
        assert!(head1.iter().any(|d| d.abs() > 1e-6));
        for (a, b) in head1.iter().zip(&head10) {
            assert!((a * 10.0 - b).abs() <= 1e-4 * b.abs().max(1e-3), "{a} {b}");
        }
    }

    fn first_backbone_weight(net: &Net) -> Vec<f32> {
        use burn::module::{ModuleVisitor, Param};
        struct First(Option<Vec<f32>>);
        impl ModuleVisitor for First {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                if self.0.is_none() {
                    self.0 = Some(values(p.val().inner()));
                }
            }
        }
        let mut first = First(None);
        net.backbone.visit(&mut first);
        first.0.expect("a parameter")
    }
}
