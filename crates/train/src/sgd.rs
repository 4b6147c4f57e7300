//! SGD with momentum, weight decay and optional Nesterov, with PyTorch's semantics
//! (`torch.optim.SGD`, dampening 0): `g ← ∇ + wd·p`, `b ← μ·b + g` (b = g at the first
//! step), `g ← g + μ·b` (Nesterov) or `g ← b`, `p ← p − lr·g`.
//!
//! Written here rather than taken from burn-optim so that its whole state — one momentum
//! buffer per parameter, in module order — can be checkpointed and restored exactly.

use burn::module::{ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::Gradients;

/// Hyper-parameters of a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

/// Momentum buffers, indexed by the parameter's position in module visiting order
/// (`None` for parameters without gradient, such as batch-norm running statistics).
#[derive(Debug, Default)]
pub struct SgdState {
    pub buffers: Vec<Option<Tensor<1>>>,
}

impl SgdState {
    /// Apply one step to every parameter of `module` that has a gradient in `grads`.
    pub fn step<M: Module>(
        &mut self,
        module: M,
        grads: &Gradients,
        lr: f64,
        config: SgdConfig,
    ) -> M {
        self.step_part(module, grads, lr, config, &mut 0)
    }

    /// [`step`](Self::step) for one part of a larger module stepped part by part (each at
    /// its own learning rate): its parameters are numbered from `*next` on, and `*next` is
    /// advanced past them, so the momentum buffers line up with a whole-module step.
    pub fn step_part<M: Module>(
        &mut self,
        module: M,
        grads: &Gradients,
        lr: f64,
        config: SgdConfig,
        next: &mut usize,
    ) -> M {
        let mut step = SgdStep {
            grads,
            lr,
            config,
            state: self,
            index: *next,
        };
        let module = module.map(&mut step);
        *next = step.index;
        module
    }
}

struct SgdStep<'a> {
    grads: &'a Gradients,
    lr: f64,
    config: SgdConfig,
    state: &'a mut SgdState,
    index: usize,
}

impl ModuleMapper for SgdStep<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let index = self.index;
        self.index += 1;
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = tensor.grad(self.grads) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let value = tensor.inner();
        let shape = value.shape();
        let n = shape.num_elements();
        let mut g = grad;
        if self.config.weight_decay > 0.0 {
            g = g + value.clone().mul_scalar(self.config.weight_decay);
        }
        if self.config.momentum > 0.0 {
            if self.state.buffers.len() <= index {
                self.state.buffers.resize(index + 1, None);
            }
            let buffer = match self.state.buffers[index].take() {
                Some(b) => b.reshape(shape.clone()).mul_scalar(self.config.momentum) + g.clone(),
                None => g.clone(),
            };
            g = if self.config.nesterov {
                g + buffer.clone().mul_scalar(self.config.momentum)
            } else {
                buffer.clone()
            };
            self.state.buffers[index] = Some(buffer.reshape([n]));
        }
        let mut updated = Tensor::from_inner(value - g.mul_scalar(self.lr));
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}
